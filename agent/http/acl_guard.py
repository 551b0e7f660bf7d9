"""ACL enforcement on the HTTP API: the caller's token, and one permission row per route.

`PERMISSIONS` maps (method, route pattern) to what the route needs: a `check` that raises
Consul's 403 before the handler runs, and/or a `keep` predicate that filters the rows of a list
answer (Consul filters reads rather than refusing them and says so with
`X-Consul-Results-Filtered-By-ACLs: true`). A route without a row is refused while ACLs are on,
and a test fails for it: a new endpoint cannot ship unguarded. With ACLs off the middleware
passes every request straight through.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from meshd.acl import MANAGEMENT, Access, Authorizer, PermissionDeniedError
from meshd.agent.acl import ACLNotFoundError
from meshd.agent.backend import caller_token
from meshd.agent.http.acl_routes import PERMISSIONS, route_key
from meshd.agent.http.common import AGENT_KEY, Handler

FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
_AUTHZ = "meshd.acl.authz"
_TOKEN = "meshd.acl.token"


def token_of(request: web.Request) -> str:
    """Consul's three places for a token: X-Consul-Token, Authorization: Bearer, ?token=."""
    cached = request.get(_TOKEN)
    if cached is not None:
        return str(cached)
    token = request.headers.get("X-Consul-Token", "")
    if not token:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    if not token:
        token = request.query.get("token", "")
    request[_TOKEN] = token
    return token


def authorizer_of(request: web.Request) -> Authorizer:
    authz = request.get(_AUTHZ)
    return authz if isinstance(authz, Authorizer) else MANAGEMENT


def _deny(message: str) -> web.Response:
    return web.Response(status=403, text=message + "\n")


def _filter(body: bytes, authz: Authorizer, keep: Any) -> tuple[bytes, bool]:
    data = orjson.loads(body)
    if isinstance(data, list):
        kept: Any = [row for row in data if keep(authz, row)]
        dropped = len(kept) != len(data)
    elif isinstance(data, dict) and all(isinstance(v, (dict, list)) for v in data.values()):
        # keyed answers: catalog/services (name -> tags), agent/services and agent/checks
        kept = {k: v for k, v in data.items() if keep(authz, k if isinstance(v, list) else v)}
        dropped = len(kept) != len(data)
    else:
        return body, False
    return (orjson.dumps(kept) if dropped else body), dropped


# Consul answers its ACL endpoints and the agent's token endpoints with 401 while ACLs are off
_ACL_ONLY = ("/v1/acl/", "/v1/agent/token/")


@web.middleware
async def acl_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    agent = request.app[AGENT_KEY]
    if not agent.acl.enabled:
        if request.path.startswith(_ACL_ONLY):
            return web.Response(status=401, text="ACL support disabled")
        return await handler(request)
    resource = request.match_info.route.resource
    if resource is None:  # no such route: aiohttp's 404/405
        return await handler(request)
    perm = PERMISSIONS.get(route_key(request.method, resource.canonical))
    token = token_of(request)
    try:
        authz = await agent.acl.resolve(token)
        request[_AUTHZ] = authz
        if perm is None:
            raise PermissionDeniedError(authz.accessor, "operator", Access.WRITE)
        if perm.check is not None:
            await perm.check(request, authz)
        reset = caller_token.set(token)
        try:
            resp = await handler(request)
        finally:
            caller_token.reset(reset)
    except ACLNotFoundError as e:
        return _deny(str(e))
    except PermissionDeniedError as e:
        return _deny(str(e))
    if perm.keep is None or (perm.skip is not None and perm.skip(request, authz)):
        return resp
    if isinstance(resp, web.Response) and resp.status == 200:
        raw = resp.body
        if isinstance(raw, bytes) and raw:
            body, dropped = _filter(raw, authz, perm.keep)
            if dropped:
                resp.body = body
                resp.headers[FILTERED_HEADER] = "true"
    return resp
