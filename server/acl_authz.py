"""Which permission each command needs from the caller's token: one row per command type.

The servers authorise every command an agent sends (RPC and the HTTP API of an agent on a
server alike) against the token that came with it, after the origin check and before Raft. A
command type without a row is refused, so a new command cannot slip through unchecked.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from meshd.acl import MANAGEMENT, Access, Authorizer, build_authorizer, parse_rules
from meshd.acl.auth_model import ACLAuthMethodOp, ACLBindingRuleOp
from meshd.acl.model import (
    ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET,
    ACLPolicyOp,
    ACLRoleOp,
    ACLTokenOp,
    expired,
)
from meshd.acl.settings import ACLConfig
from meshd.prepared_query import acl_prefix
from meshd.server.acl_state import ACLState
from meshd.structs import (
    AutopilotConfigOp,
    Barrier,
    Batch,
    ConfigEntryOp,
    CoordinateBatch,
    Deregister,
    EventFire,
    IntentionOp,
    KeyringOp,
    KVOp,
    Node,
    PreparedQueryOp,
    Register,
    SessionOp,
    Txn,
)

W, R = Access.WRITE, Access.READ
# config entries about one service; the rest (proxy-defaults, mesh, ...) need mesh:write
SERVICE_KINDS = frozenset(
    {"service-defaults", "service-resolver", "service-splitter", "service-router"}
)


class TokenNotFoundError(Exception):
    """The caller's SecretID is not a token (403 `ACL not found`)."""


def _register(cmd: Register, authz: Authorizer) -> None:
    """node:write on the node covers everything on it; without it, a registration may only
    carry one service (service:write) and that service's own checks."""
    if authz.allowed("node", cmd.Node, W):
        return
    checks = [*([cmd.Check] if cmd.Check else []), *cmd.Checks]
    if cmd.Service is None or any(c.ServiceID != cmd.Service.ID for c in checks):
        authz.check("node", cmd.Node, W)
    else:
        authz.check("service", cmd.Service.Service, W)


def _deregister(cmd: Deregister, authz: Authorizer) -> None:
    authz.check("node", cmd.Node, W)


def _kv(cmd: KVOp, authz: Authorizer) -> None:
    authz.check("key", cmd.Key, W)


def _config_entry(cmd: ConfigEntryOp, authz: Authorizer) -> None:
    if cmd.Kind == "service-intentions":
        authz.check("intention", cmd.Name, W)
    elif cmd.Kind in SERVICE_KINDS:
        authz.check("service", cmd.Name, W)
    else:
        authz.check("mesh", "", W)


def _txn(cmd: Txn, authz: Authorizer) -> None:
    for op in cmd.Ops:
        if op.KV is not None:
            authz.check("key", op.KV.Key, R if op.KV.Verb in ("get", "get-tree") else W)
        if op.Node is not None:
            authz.check("node", op.Node.Node.Node, W)
        if op.Service is not None:
            authz.check("service", op.Service.Service.Service, W)
        if op.Check is not None:
            authz.check("node", op.Check.Check.Node, W)


def _acl(cmd: Any, authz: Authorizer) -> None:
    if isinstance(cmd, ACLTokenOp) and cmd.Op == "bootstrap":
        return  # anyone, once: the state refuses a second one
    authz.check("acl", "", W)


def _batch(cmd: Batch, authz: Authorizer) -> None:
    for op in cmd.Ops:
        authorize(op, authz)


def _coordinates(cmd: CoordinateBatch, authz: Authorizer) -> None:
    for update in cmd.Updates:
        authz.check("node", update.Node, W)


def _prepared_query(cmd: PreparedQueryOp, authz: Authorizer) -> None:
    """query:write on the name (a template's name is a prefix); an unnamed query is managed by
    whoever holds its ID, as in Consul. The existing definition's name is checked as well, by
    `authorize_with_state`, so a rename cannot take over another team's query."""
    prefix = acl_prefix(cmd.Query) if cmd.Query else None
    if prefix is not None:
        authz.check("query", prefix, W)


def _nothing(cmd: Any, authz: Authorizer) -> None:
    """A barrier changes nothing."""


PERMISSIONS: dict[type[Any], Callable[[Any, Authorizer], None]] = {
    Register: _register,
    Deregister: _deregister,
    KVOp: _kv,
    Batch: _batch,
    Barrier: _nothing,
    ConfigEntryOp: _config_entry,
    IntentionOp: lambda cmd, a: a.check("intention", cmd.Destination, W),
    EventFire: lambda cmd, a: a.check("event", cmd.Event.Name, W),
    Txn: _txn,
    SessionOp: lambda cmd, a: a.check("session", cmd.Session.Node, W),
    ACLTokenOp: _acl,
    ACLPolicyOp: _acl,
    ACLRoleOp: _acl,
    ACLAuthMethodOp: _acl,
    ACLBindingRuleOp: _acl,
    AutopilotConfigOp: lambda cmd, a: a.check("operator", "", W),
    KeyringOp: lambda cmd, a: a.check("keyring", "", W),
    PreparedQueryOp: _prepared_query,
    CoordinateBatch: _coordinates,
}


def authorize_query_owner(
    cmd: PreparedQueryOp, queries: dict[str, dict[str, Any]], authz: Authorizer
) -> None:
    """Changing or deleting a query needs query:write on the name it has now, too."""
    existing = queries.get(cmd.ID)
    prefix = acl_prefix(existing) if existing is not None else None
    if prefix is not None:
        authz.check("query", prefix, W)


def _changes_node(cmd: Register, node: Node | None) -> bool:
    """Consul's `ChangesNode`: a new node, or node fields the registration would overwrite."""
    if node is None:
        return True
    if cmd.SkipNodeUpdate:
        return False
    return (
        cmd.Address != node.Address
        or bool(cmd.ID and cmd.ID != node.ID)
        or bool(cmd.TaggedAddresses and cmd.TaggedAddresses != node.TaggedAddresses)
        or bool(cmd.NodeMeta and cmd.NodeMeta != node.Meta)
    )


def authorize_node_changes(cmd: Any, nodes: dict[str, Node], authz: Authorizer) -> None:
    """A registration that creates or changes a node needs node:write on it, even when it
    carries only a service: service:write alone cannot put a node into the catalog."""
    if isinstance(cmd, Batch):
        for op in cmd.Ops:
            authorize_node_changes(op, nodes, authz)
    elif isinstance(cmd, Register) and _changes_node(cmd, nodes.get(cmd.Node)):
        authz.check("node", cmd.Node, W)


def authorize(cmd: Any, authz: Authorizer) -> None:
    """Raises PermissionDeniedError (Consul's text) when the token may not send `cmd`."""
    check = PERMISSIONS.get(type(cmd))
    if check is None:
        authz.check("acl", "", W)  # no row: only a management token
        return
    check(cmd, authz)


def server_authorizer(config: ACLConfig, state: ACLState, secret: str) -> Authorizer:
    """The authorizer of a token as the servers see it, straight from the replicated state."""
    secret = secret or config.tokens.default or ANONYMOUS_SECRET
    initial = config.tokens.initial_management
    if initial and hmac.compare_digest(initial.encode(), secret.encode()):
        return MANAGEMENT
    resolved = state.resolve(secret)
    if resolved is None and secret == ANONYMOUS_SECRET:  # not created yet: the default policy
        return build_authorizer([], config.default_policy, ANONYMOUS_ACCESSOR)
    if resolved is None or expired(resolved.ExpirationTime):
        raise TokenNotFoundError("ACL not found")
    if resolved.Management:
        return Authorizer(management=True, accessor=resolved.AccessorID)
    rules = [r for text in resolved.Rules for r in parse_rules(text)]
    return build_authorizer(rules, config.default_policy, resolved.AccessorID)


def authorize_sign(service: str, nodes_running: set[str], authz: Authorizer) -> None:
    """A leaf for `service` goes to a token with service:write on it (Consul's rule), or to an
    agent's token with node:write on a node where that service is registered: the agent that
    runs the service and its sidecar renews its leaf with its own token, as it syncs it."""
    if authz.allowed("service", service, W):
        return
    if any(authz.allowed("node", node, W) for node in sorted(nodes_running)):
        return
    authz.check("service", service, W)  # raises, with Consul's reason
