"""`/v1/acl/login` and `/logout` on the servers: a verified bearer token becomes a token command.

As in Consul, the servers (not the agent that took the request) verify the bearer token with
the auth method, so a login cannot be forged by whoever can talk to an agent. The network half
is here: JWKS keys fetched over HTTPS, and Kubernetes' TokenReview API
(`POST /apis/authentication.k8s.io/v1/tokenreviews`, authenticated with the method's
ServiceAccountJWT) plus the service account read for Consul's service-name annotation. The
result is an ordinary `ACLTokenOp`, admitted and replicated like any token write; the login
command itself never enters the log.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import jwt

from meshd.acl.auth_model import ACLAuthMethod, ACLLogin, ACLLogout
from meshd.acl.authmethods import (
    AuthMethodError,
    LoginError,
    jwt_config,
    jwt_identity,
    kubernetes_config,
    kubernetes_identity,
)
from meshd.acl.binding import BindError, Identity, bind
from meshd.acl.model import ACLToken, ACLTokenOp
from meshd.durations import parse_duration_seconds
from meshd.server.acl_state import ACLState
from meshd.server.authority import CommandForbiddenError
from meshd.server.store import CommandError

_TIMEOUT = aiohttp.ClientTimeout(total=10)
SERVICE_NAME_ANNOTATION = "consul.hashicorp.com/service-name"
NO_BINDING = "Permission denied: no binding rules matched the identity of the bearer token"


def _context(ca_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    return ctx


def _jwks_keys(url: str, ca_pem: str) -> list[Any]:
    """Blocking (PyJWT's client uses urllib): run in a worker thread."""
    client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=10, ssl_context=_context(ca_pem))
    try:
        return [k.key for k in client.get_signing_keys()]
    except jwt.PyJWTError as e:
        raise LoginError(f"error verifying token: {e}") from None


async def _jwt(method: ACLAuthMethod, bearer: str) -> Identity:
    cfg = jwt_config(method.Config)
    keys: list[Any] = list(cfg.keys)
    if cfg.jwks_url:
        keys = await asyncio.to_thread(_jwks_keys, cfg.jwks_url, cfg.jwks_ca_cert)
    return jwt_identity(cfg, bearer, keys)


async def _kubernetes(method: ACLAuthMethod, bearer: str) -> Identity:
    cfg = kubernetes_config(method.Config)
    try:
        jwt.get_unverified_header(bearer)
    except jwt.PyJWTError as e:
        raise LoginError(f"failed to parse and validate JWT: {e}") from None
    headers = {"Authorization": f"Bearer {cfg.service_account_jwt}"}
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": bearer},
    }
    connector = aiohttp.TCPConnector(ssl=_context(cfg.ca_cert))
    async with aiohttp.ClientSession(
        connector=connector, timeout=_TIMEOUT, headers=headers
    ) as http:
        url = f"{cfg.host}/apis/authentication.k8s.io/v1/tokenreviews"
        status = (await _call(http, "POST", url, review)).get("status") or {}
        if status.get("error"):
            raise LoginError(f"lookup failed: {status['error']}")
        if not status.get("authenticated"):
            raise LoginError("lookup failed: service account jwt not valid")
        user = status.get("user") or {}
        parts = str(user.get("username") or "").split(":")
        if len(parts) != 4:
            raise LoginError("lookup failed: unexpected username format")
        if parts[:2] != ["system", "serviceaccount"]:
            raise LoginError("lookup failed: username returned is not a service account")
        namespace, name = parts[2], parts[3]
        sa_url = f"{cfg.host}/api/v1/namespaces/{namespace}/serviceaccounts/{name}"
        try:
            sa = await _call(http, "GET", sa_url)
        except LoginError as e:
            raise LoginError(f"annotation lookup failed: {e}") from None
    annotations = (sa.get("metadata") or {}).get("annotations") or {}
    name = str(annotations.get(SERVICE_NAME_ANNOTATION) or name)
    return kubernetes_identity(namespace, name, str(user.get("uid") or ""))


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    try:
        async with http.request(method, url, json=body) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise LoginError(f"the Kubernetes API answered {resp.status}: {text[:200]}")
            data = json.loads(text)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise LoginError(f"the Kubernetes API could not be reached: {e}") from None
    if not isinstance(data, dict):
        raise LoginError("the Kubernetes API answered something that is not an object")
    return data


async def verify(method: ACLAuthMethod, bearer: str) -> Identity:
    try:
        if method.Type == "jwt":
            return await _jwt(method, bearer)
        return await _kubernetes(method, bearer)
    except (LoginError, AuthMethodError, OSError) as e:  # OSError: TLS setup (ssl.SSLError)
        raise CommandForbiddenError(f"Permission denied: {e}") from None


def _description(meta: dict[str, str]) -> str:
    text = "token created via login"
    return f"{text}: {json.dumps(meta, separators=(',', ':'))}" if meta else text


def _expiry(create_time: str, ttl: str) -> str:
    if not ttl:
        return ""
    start = datetime.fromisoformat(create_time.replace("Z", "+00:00"))
    when = start + timedelta(seconds=parse_duration_seconds(ttl))
    return when.isoformat().replace("+00:00", "Z")


async def login_command(
    cmd: ACLLogin, state: ACLState, lock: threading.RLock, datacenter: str
) -> ACLTokenOp:
    """The token a login makes, or CommandForbiddenError/CommandError with the reason."""
    with lock:
        method = state.auth.methods.get(cmd.AuthMethod)
    if method is None:
        raise CommandForbiddenError(f"ACL not found: auth method {cmd.AuthMethod!r} not found")
    identity = await verify(method, cmd.BearerToken)
    with lock:  # the method's rules, roles and policies as they are now
        if cmd.AccessorID in state.tokens or cmd.SecretID in state.by_secret:
            raise CommandError("Invalid Login request: the token IDs are already in use")
        try:
            bindings = bind(
                state.auth.rules_of(method.Name),
                identity,
                lambda n: next((r.ID for r in state.roles.values() if r.Name == n), None),
                lambda n: next((p.ID for p in state.policies.values() if p.Name == n), None),
                datacenter,
            )
        except BindError as e:
            raise CommandError(str(e)) from None
    if bindings.none():
        raise CommandForbiddenError(NO_BINDING)
    token = ACLToken(
        AccessorID=cmd.AccessorID,
        SecretID=cmd.SecretID,
        Description=_description(cmd.Meta),
        Policies=bindings.policies,
        Roles=bindings.roles,
        ServiceIdentities=bindings.service_identities,
        NodeIdentities=bindings.node_identities,
        TemplatedPolicies=bindings.templated_policies,
        AuthMethod=method.Name,
        Local=method.TokenLocality != "global",
        ExpirationTTL=method.MaxTokenTTL,
        ExpirationTime=_expiry(cmd.CreateTime, method.MaxTokenTTL),
        CreateTime=cmd.CreateTime,
    )
    return ACLTokenOp(Op="set", Token=token)


def logout_command(cmd: ACLLogout, secret: str, state: ACLState, lock: threading.RLock) -> Any:
    """Delete the caller's token; only a token that login made may log itself out."""
    with lock:
        token = state.token_by_secret(secret) if secret else None
    if token is None:
        raise CommandForbiddenError("ACL not found")
    if not token.AuthMethod:
        raise CommandForbiddenError("Permission denied: only a token created by login can log out")
    return ACLTokenOp(Op="delete", AccessorID=token.AccessorID)


async def exchange(
    cmd: Any,
    secret: str,
    state: ACLState,
    lock: threading.RLock,
    datacenter: str,
) -> ACLTokenOp:
    """`cmd` (an ACLLogin or ACLLogout, checked by the stateless rules) as a token command."""
    if isinstance(cmd, ACLLogin):
        return await login_command(cmd, state, lock, datacenter)
    result: ACLTokenOp = logout_command(cmd, secret, state, lock)
    return result
