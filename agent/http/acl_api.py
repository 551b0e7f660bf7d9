"""`/v1/acl/*`: Consul's token, policy and role endpoints, and bootstrap.

IDs, secrets and times are chosen here, before Raft (as Consul's server endpoint does), so the
command is deterministic. The permission of each route is in `acl_guard.PERMISSIONS` (acl:read
or acl:write); the servers check acl:write again on the command with the caller's token.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from meshd import queries as q
from meshd.acl import Access, expiry, templates
from meshd.acl.model import (
    ANONYMOUS_SECRET,
    ACLLink,
    ACLNodeIdentity,
    ACLPolicy,
    ACLPolicyOp,
    ACLRole,
    ACLRoleOp,
    ACLServiceIdentity,
    ACLToken,
    ACLTokenOp,
)
from meshd.agent import acl_tokens_file
from meshd.agent.acl import ACLNotFoundError
from meshd.agent.backend import caller_token
from meshd.agent.http.acl_guard import authorizer_of, token_of
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    NotFoundError,
    json_body,
    json_response,
    query_options,
    to_builtins,
)

routes = web.RouteTableDef()
HIDDEN = "<hidden>"


def _now() -> datetime:
    return datetime.now(UTC)


def _convert(value: Any, kind: Any, what: str) -> Any:
    try:
        return msgspec.convert(value, type=kind)
    except msgspec.ValidationError as e:
        raise BadRequestError(f"Request decode failed: {what}: {e}") from None


def _links(body: dict[str, Any], field: str) -> list[ACLLink]:
    return list(_convert(body.get(field) or [], list[ACLLink], field))


def _identities(body: dict[str, Any]) -> dict[str, Any]:
    try:
        templated = templates.from_json(body.get("TemplatedPolicies"))
    except templates.TemplateError as e:
        raise BadRequestError(f"Request decode failed: {e}") from None
    return {
        "TemplatedPolicies": templated,
        "ServiceIdentities": _convert(
            body.get("ServiceIdentities") or [], list[ACLServiceIdentity], "ServiceIdentities"
        ),
        "NodeIdentities": _convert(
            body.get("NodeIdentities") or [], list[ACLNodeIdentity], "NodeIdentities"
        ),
    }


def _expiration(request: web.Request, body: dict[str, Any], old: ACLToken | None) -> str:
    """The token's ExpirationTime: fixed at creation, never changed (meshd/acl/expiry.py)."""
    ttl, when = body.get("ExpirationTTL"), body.get("ExpirationTime")
    acl = request.app[AGENT_KEY].config.acl
    try:
        if old is not None:
            return expiry.unchanged(ttl, when, old.ExpirationTime)
        return expiry.new_expiration(
            ttl, when, _now(), acl.token_min_expiration_ttl, acl.token_max_expiration_ttl
        )
    except expiry.ExpiryError as e:
        raise BadRequestError(str(e)) from None


def _token_from(
    request: web.Request, body: dict[str, Any], accessor: str, secret: str, old: ACLToken | None
) -> ACLToken:
    return ACLToken(
        AccessorID=accessor,
        SecretID=secret,
        Description=str(body.get("Description") or ""),
        Policies=_links(body, "Policies"),
        Roles=_links(body, "Roles"),
        Local=bool(body.get("Local", old.Local if old else False)),
        AuthMethod=old.AuthMethod if old else "",  # set by login only, kept by updates
        ExpirationTime=_expiration(request, body, old),
        CreateTime=old.CreateTime if old else _now().isoformat().replace("+00:00", "Z"),
        **_identities(body),
    )


def _show_token(request: web.Request, token: ACLToken) -> dict[str, Any]:
    """Consul shows a SecretID only to a token that may write ACLs (or to its own holder)."""
    out: dict[str, Any] = to_builtins(token)
    own = token_of(request) == token.SecretID
    if not own and not authorizer_of(request).allowed("acl", "", Access.WRITE):
        out["SecretID"] = HIDDEN
    return out


async def _write(request: web.Request, cmd: Any) -> Any:
    agent = request.app[AGENT_KEY]
    result = await agent.backend.write(cmd, token_of(request))
    agent.acl.forget()
    return result


async def _read_one(request: web.Request, query: Any, what: str) -> Any:
    """A token that does not exist is 403 `ACL not found` (Consul); a policy or role, 404.
    An ID that is not a UUID cannot name anything: 400."""
    ident = getattr(query, "AccessorID", "") or getattr(query, "ID", "")
    if ident:
        try:
            uuid.UUID(ident)
        except ValueError:
            raise BadRequestError(f"{what} ID must be a UUID: {ident!r}") from None
    ans = await request.app[AGENT_KEY].backend.read(query)
    if not ans.value:
        if isinstance(query, q.ACLTokens):
            raise ACLNotFoundError()
        raise NotFoundError(f"{what} not found")
    return ans.value[0]


# Consul decodes bodies case-insensitively (Go's encoding/json): {"name": ...} is a Name
_FIELDS = {
    f.lower(): f
    for f in (
        *ACLToken.__struct_fields__,
        *ACLPolicy.__struct_fields__,
        *ACLRole.__struct_fields__,
        "Token",
        "TemplatedPolicies",
    )
}


async def _body(request: web.Request, kind: type | None = dict) -> Any:
    body = await json_body(request, kind)
    if isinstance(body, dict):
        return {_FIELDS.get(k.lower(), k) if isinstance(k, str) else k: v for k, v in body.items()}
    return body


def _new_ids(body: dict[str, Any]) -> tuple[str, str]:
    return (
        str(body.get("AccessorID") or uuid.uuid4()),
        str(body.get("SecretID") or uuid.uuid4()),
    )


# ---- bootstrap and tokens ---------------------------------------------------------------------


@routes.put("/v1/acl/bootstrap")
async def bootstrap(request: web.Request) -> web.Response:
    body = await _body(request, None) or {}
    accessor, secret = _new_ids(body if isinstance(body, dict) else {})
    token = ACLToken(
        AccessorID=accessor,
        SecretID=secret,
        Description="Bootstrap Token (Global Management)",
        CreateTime=_now().isoformat().replace("+00:00", "Z"),
    )
    stored = await _write(request, ACLTokenOp(Op="bootstrap", Token=token))
    return json_response(to_builtins(stored))


@routes.put("/v1/acl/token")
async def token_create(request: web.Request) -> web.Response:
    body = await _body(request)
    accessor, secret = _new_ids(body)
    stored = await _write(
        request, ACLTokenOp(Op="set", Token=_token_from(request, body, accessor, secret, None))
    )
    return json_response(to_builtins(stored))


@routes.get("/v1/acl/token/self")
async def token_self(request: web.Request) -> web.Response:
    # no token: the request is the agent's default token's, else the anonymous token's, and
    # Consul shows that token, as `consul acl token read -self` does
    agent = request.app[AGENT_KEY]
    secret = token_of(request) or agent.acl.config.tokens.default or ANONYMOUS_SECRET
    held = caller_token.set(secret)  # the servers show a token to its holder
    try:
        ans = await agent.backend.read(q.ACLTokens(SecretID=secret))
    finally:
        caller_token.reset(held)
    if not ans.value:
        raise ACLNotFoundError()
    return json_response(to_builtins(ans.value[0]))


@routes.get("/v1/acl/token/{id}")
async def token_read(request: web.Request) -> web.Response:
    token = await _read_one(request, q.ACLTokens(AccessorID=request.match_info["id"]), "ACL")
    return json_response(_show_token(request, token))


@routes.put("/v1/acl/token/{id}")
async def token_update(request: web.Request) -> web.Response:
    body = await _body(request)
    accessor = request.match_info["id"]
    if body.get("AccessorID") and body["AccessorID"] != accessor:
        raise BadRequestError("Token update failed: AccessorID in the body and the URL differ")
    old = await _read_one(request, q.ACLTokens(AccessorID=accessor), "ACL")
    if body.get("SecretID") and body["SecretID"] != old.SecretID:
        raise BadRequestError("Token update failed: the SecretID cannot change")
    token = _token_from(request, body, accessor, old.SecretID, old)
    return json_response(to_builtins(await _write(request, ACLTokenOp(Op="set", Token=token))))


@routes.put("/v1/acl/token/{id}/clone")
async def token_clone(request: web.Request) -> web.Response:
    body = await _body(request, None) or {}
    old = await _read_one(request, q.ACLTokens(AccessorID=request.match_info["id"]), "ACL")
    if old.AuthMethod:
        raise BadRequestError("Cannot clone a token created from an auth method")
    clone = msgspec.structs.replace(
        old,
        AccessorID=str(uuid.uuid4()),
        SecretID=str(uuid.uuid4()),
        Description=str(body.get("Description") or old.Description),
        CreateTime=_now().isoformat().replace("+00:00", "Z"),
    )
    return json_response(to_builtins(await _write(request, ACLTokenOp(Op="set", Token=clone))))


@routes.delete("/v1/acl/token/{id}")
async def token_delete(request: web.Request) -> web.Response:
    await _write(request, ACLTokenOp(Op="delete", AccessorID=request.match_info["id"]))
    return json_response(True)


@routes.get("/v1/acl/tokens")
async def token_list(request: web.Request) -> web.Response:
    opts = query_options(request)
    ans = await request.app[AGENT_KEY].backend.read(q.ACLTokens(), consistency=opts.consistency)
    policy, role = request.query.get("policy"), request.query.get("role")
    method = request.query.get("authmethod")
    rows = [
        _show_token(request, t)
        for t in ans.value
        if (not policy or any(policy == p.ID for p in t.Policies))
        and (not role or any(role == r.ID for r in t.Roles))
        and (not method or t.AuthMethod == method)
    ]
    return json_response(rows, result=ans)


# ---- policies and roles -----------------------------------------------------------------------


def _policy_from(body: dict[str, Any], pid: str) -> ACLPolicy:
    return ACLPolicy(
        ID=pid,
        Name=str(body.get("Name") or ""),
        Description=str(body.get("Description") or ""),
        Rules=str(body.get("Rules") or ""),
        Datacenters=_convert(body.get("Datacenters") or [], list[str], "Datacenters"),
    )


def _role_from(body: dict[str, Any], rid: str) -> ACLRole:
    return ACLRole(
        ID=rid,
        Name=str(body.get("Name") or ""),
        Description=str(body.get("Description") or ""),
        Policies=_links(body, "Policies"),
        **_identities(body),
    )


_KINDS: dict[str, tuple[Any, Any, Any, Any]] = {
    # kind: (query type, command type, body -> row, command field)
    "policy": (q.ACLPolicies, ACLPolicyOp, _policy_from, "Policy"),
    "role": (q.ACLRoles, ACLRoleOp, _role_from, "Role"),
}


def _crud(kind: str) -> None:
    """The same five routes for policies and roles (Consul's shapes for both)."""
    query, op, build, field = _KINDS[kind]
    label = kind.capitalize()

    async def create(request: web.Request) -> web.Response:
        row = build(await _body(request), str(uuid.uuid4()))
        return json_response(to_builtins(await _write(request, op(Op="set", **{field: row}))))

    async def read(request: web.Request) -> web.Response:
        row = await _read_one(request, query(ID=request.match_info["id"]), f"ACL {label}")
        return json_response(to_builtins(row))

    async def by_name(request: web.Request) -> web.Response:
        row = await _read_one(request, query(Name=request.match_info["name"]), f"ACL {label}")
        return json_response(to_builtins(row))

    async def update(request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        await _read_one(request, query(ID=rid), f"ACL {label}")
        row = build(await _body(request), rid)
        return json_response(to_builtins(await _write(request, op(Op="set", **{field: row}))))

    async def delete(request: web.Request) -> web.Response:
        await _write(request, op(Op="delete", ID=request.match_info["id"]))
        return json_response(True)

    async def listing(request: web.Request) -> web.Response:
        ans = await request.app[AGENT_KEY].backend.read(query())
        return json_response(to_builtins(ans.value), result=ans)

    base = f"/v1/acl/{kind}"
    routes.put(base)(create)
    routes.get(f"{base}/name/{{name}}")(by_name)
    routes.get(f"{base}/{{id}}")(read)
    routes.put(f"{base}/{{id}}")(update)
    routes.delete(f"{base}/{{id}}")(delete)
    routes.get(f"/v1/acl/{'policies' if kind == 'policy' else 'roles'}")(listing)


_crud("policy")
_crud("role")


# ---- the agent's own tokens -------------------------------------------------------------------

# Consul's `PUT /v1/agent/token/:type` names (and its older aliases)
_AGENT_TOKENS = {
    "default": "default",
    "agent": "agent",
    "agent_recovery": "agent_recovery",
    "agent_master": "agent_recovery",
    "dns": "dns",
    "config_file_service_registration": "config_file_service_registration",
    "replication": "replication",
}


@routes.put("/v1/agent/token/{type}")
async def set_agent_token(request: web.Request) -> web.Response:
    """Set one of the agent's tokens: in memory, and in `acl-tokens.json` when
    `acl.enable_token_persistence` is on (agent/acl_tokens_file.py)."""
    kind = _AGENT_TOKENS.get(request.match_info["type"])
    if kind is None:
        raise NotFoundError(f"Token {request.match_info['type']!r} is unknown")
    body = await _body(request)
    value = body.get("Token")
    if not isinstance(value, str):
        raise BadRequestError("Request decode failed: Token must be a string")
    agent = request.app[AGENT_KEY]
    setattr(agent.config.acl.tokens, kind, value)
    acl_tokens_file.save(agent.config.data_dir, agent.config.acl, kind, value)
    if kind == "agent":
        agent.backend.token = value  # background writes (anti-entropy, checks) use it from now
    agent.acl.forget()
    return web.Response(status=200)
