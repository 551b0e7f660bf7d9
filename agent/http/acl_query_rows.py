"""ACL checks of the prepared query and coordinate routes (rows in acl_routes.PERMISSIONS).

Kept apart from acl_routes.py because prepared queries need the stored definitions: Consul
guards a query by its name (a template's name is a prefix), not by the path's ID.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd import prepared_query as pq
from meshd import queries as q
from meshd.acl import Access, Authorizer
from meshd.agent.http.common import AGENT_KEY
from meshd.agent.http.common import decode_json as _decode

R, W = Access.READ, Access.WRITE


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # aiohttp keeps the body: the handler reads it again
    try:
        return _decode(raw) if raw.strip() else {}
    except Exception:
        return {}  # the handler answers 400 with the reason


def _fold(raw: Any) -> dict[str, Any]:
    """The handful of fields the check needs, in any of the spellings the API accepts."""
    raw = raw if isinstance(raw, dict) else {}
    top = {k.lower(): v for k, v in raw.items()}
    template = top.get("template")
    template = {k.lower(): v for k, v in template.items()} if isinstance(template, dict) else {}
    return {"Name": top.get("name") or "", "Template": {"Type": template.get("type") or ""}}


async def _stored(request: web.Request, query_id: str) -> dict[str, Any] | None:
    agent = request.app[AGENT_KEY]
    found = (await agent.backend.read(q.PreparedQueries(ID=query_id))).value
    return found[0] if found else None


def _check(authz: Authorizer, query: dict[str, Any] | None, access: Access) -> None:
    prefix = pq.acl_prefix(query) if query is not None else None
    if prefix is not None:
        authz.check("query", prefix, access)


async def query_create(request: web.Request, authz: Authorizer) -> None:
    _check(authz, _fold(await _body(request)), W)


async def query_read(request: web.Request, authz: Authorizer) -> None:
    """One query by ID: refused (not emptied) without query:read on its name; an unnamed one is
    readable by whoever holds its ID."""
    _check(authz, await _stored(request, request.match_info["id"]), R)


async def query_update(request: web.Request, authz: Authorizer) -> None:
    """The name the query has now and the one it is given (a rename needs both)."""
    _check(authz, await _stored(request, request.match_info["id"]), W)
    if request.method == "PUT":
        _check(authz, _fold(await _body(request)), W)


async def query_resolved(request: web.Request, authz: Authorizer) -> None:
    """Explain and execute act on the definition an ID or name resolves to."""
    agent = request.app[AGENT_KEY]
    definitions = list((await agent.backend.read(q.PreparedQueries())).value)
    resolved = pq.resolve(definitions, request.match_info["id"])
    if resolved is None:
        return  # the handler answers 404
    if request.path.endswith("/explain"):
        _check(authz, resolved.query, R)
    else:  # execute hands out the service's instances
        authz.check("service", str(resolved.query["Service"]["Service"]), R)


def keep_query(authz: Authorizer, row: Any) -> bool:
    """Consul lists an unnamed query only to a management token (its ID is its capability)."""
    prefix = pq.acl_prefix(row)
    if prefix is None:
        return authz.allowed("acl", "", W)
    return authz.allowed("query", prefix, R)


async def coordinate_update(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    node = {k.lower(): v for k, v in body.items()}.get("node") if isinstance(body, dict) else ""
    authz.check("node", str(node or ""), W)
