"""What a caller's token may read from the servers, and operator requests it may make.

Holding the cluster key is not enough to read ACL state: a read of tokens, policies or roles
needs `acl:read` on the token that came with it, and a token's SecretID is shown only to a token
with `acl:write` or to that token itself (Consul redacts the same way). Catalog, KV and the other
reads are filtered by the agent that asked (its shared watches serve many tokens at once), so
the servers do not refuse them. Operator requests need Consul's `operator` (or `keyring`) rights.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import msgspec

from meshd import queries as q
from meshd.acl import Access, Authorizer, PermissionDeniedError
from meshd.acl.model import ACLToken
from meshd.acl.settings import ACLConfig
from meshd.server.acl_authz import TokenNotFoundError, server_authorizer
from meshd.server.authority import CommandForbiddenError
from meshd.server.operator import (
    AutopilotHealth,
    ForceLeave,
    KeyringList,
    OperatorRequest,
    TransferLeader,
    Usage,
)
from meshd.server.store import Store

R, W = Access.READ, Access.WRITE
HIDDEN = "<hidden>"


def _own_token(query: Any, token: str) -> bool:
    """`/v1/acl/token/self`: reading the token you hold needs nothing more than holding it."""
    secret = getattr(query, "SecretID", "")
    return bool(secret) and hmac.compare_digest(secret.encode(), token.encode())


def _acl_read(query: Any, authz: Authorizer, token: str) -> None:
    if not _own_token(query, token):
        authz.check("acl", "", R)


ReadCheck = Callable[[Any, Authorizer, str], None]

# reads the servers authorise themselves (None: open, the caller's token is not even looked
# up); any other ACL* query needs acl:read (`read_check`)
READ_PERMISSIONS: dict[type[Any], ReadCheck | None] = {
    q.ACLTokens: _acl_read,
    q.ACLPolicies: _acl_read,
    q.ACLRoles: _acl_read,
    q.ACLResolve: None,  # the agent's token cache: the secret asked about is the proof
}


def read_check(query: Any) -> ReadCheck | None:
    """The check for `query`, None for open reads and those the agent filters (catalog, KV)."""
    kind = type(query)
    if kind in READ_PERMISSIONS:
        return READ_PERMISSIONS[kind]
    return _acl_read if kind.__name__.startswith("ACL") else None


def redact(query: Any, value: Any, authz: Authorizer, token: str) -> Any:
    """Tokens' SecretIDs only for acl:write, or a token's own."""
    if not isinstance(query, q.ACLTokens) or authz.allowed("acl", "", W):
        return value
    rows: list[ACLToken] = value
    return [
        t
        if token and hmac.compare_digest(t.SecretID.encode(), token.encode())
        else msgspec.structs.replace(t, SecretID=HIDDEN)
        for t in rows
    ]


OPERATOR_PERMISSIONS: dict[type[Any], tuple[str, Access]] = {
    ForceLeave: ("operator", W),
    TransferLeader: ("operator", W),
    AutopilotHealth: ("operator", R),
    Usage: ("operator", R),
    KeyringList: ("keyring", R),
}


def caller(config: ACLConfig, store: Store, token: str | None) -> Authorizer | None:
    """The authorizer of an agent's token; None when ACLs are off or the caller is the server
    itself (`token` None), which needs no check."""
    if token is None or not config.enabled:
        return None
    try:
        with store.lock:
            return server_authorizer(config, store.acl, token)
    except TokenNotFoundError as e:
        raise CommandForbiddenError(str(e)) from None


def guard_read(config: ACLConfig, store: Store, query: Any, token: str | None) -> Authorizer | None:
    """Refuses (403) a read the token may not make; the authorizer, to redact the answer."""
    check = read_check(query)
    authz = caller(config, store, token) if check is not None else None
    if authz is None or check is None:
        return None
    try:
        check(query, authz, token or "")
    except PermissionDeniedError as e:
        raise CommandForbiddenError(str(e)) from None
    return authz


def guard_operator(
    config: ACLConfig, store: Store, token: str | None, req: OperatorRequest | str
) -> None:
    """An operator request (or `"operator"`: the CA configuration) needs operator rights; a
    request type without a row needs a management token (acl:write)."""
    authz = caller(config, store, token)
    if authz is None:
        return
    if isinstance(req, str):
        resource, access = req, W
    else:
        resource, access = OPERATOR_PERMISSIONS.get(type(req), ("acl", W))
    try:
        authz.check(resource, "", access)
    except PermissionDeniedError as e:
        raise CommandForbiddenError(str(e)) from None
