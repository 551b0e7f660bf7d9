"""`/v1/kv/*` and `/v1/status/*`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from meshd import queries as q
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    blocking_read,
    flag,
    json_response,
    query_options,
    query_uint,
    set_read_headers,
)
from meshd.structs import KVOp

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
MAX_VALUE = 512 * 1024  # Consul's kv_max_value_size


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _key(request: web.Request) -> str:
    return request.match_info.get("key", "")


@routes.get("/v1/kv/{key:.*}")
async def kv_get(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    key = _key(request)
    if flag(request, "keys"):
        sep = request.query.get("separator", "")
        res = await blocking_read(agent.backend, q.KVKeys(Prefix=key, Separator=sep), opts)
        if not res.value:
            resp = web.Response(status=404)
            set_read_headers(resp, res)
            return resp
        return json_response(res.value, result=res)
    recurse = flag(request, "recurse")
    if not key and not recurse:
        raise BadRequestError("Missing key name")
    res = await blocking_read(agent.backend, q.KVGet(Key=key, Recurse=recurse), opts)
    if not res.value:
        resp = web.Response(status=404)
        set_read_headers(resp, res)
        return resp
    if flag(request, "raw"):
        resp = web.Response(body=res.value[0].Value or b"", content_type="application/octet-stream")
        set_read_headers(resp, res)
        return resp
    return json_response(res.value, result=res)


@routes.put("/v1/kv/{key:.*}")
async def kv_put(request: web.Request) -> web.Response:
    key = _key(request)
    if not key:
        raise BadRequestError("Missing key name")
    if len(key) > 512 or "\x00" in key:
        raise BadRequestError("Invalid key name")
    limit = int(_agent(request).config.limits.get("kv_max_value_size", MAX_VALUE))
    if request.content_length is not None and request.content_length > limit:
        return web.Response(status=413, text=f"Value exceeds {limit} byte limit\n")
    value = await request.read()
    if len(value) > limit:
        return web.Response(status=413, text=f"Value exceeds {limit} byte limit\n")
    flags = query_uint(request, "flags") or 0
    cas = query_uint(request, "cas")
    verb, session = ("cas" if cas is not None else "set"), ""
    for param, lock_verb in (("acquire", "lock"), ("release", "unlock")):  # Consul's precedence
        if param in request.query:
            verb, session = lock_verb, request.query[param]
    op = KVOp(  # an empty value is stored as none: it reads back as `null`, as in Consul
        Verb=verb,
        Key=key,
        Value=value or None,
        Flags=flags,
        Index=cas or 0,
        Session=session,
    )
    return json_response(await _agent(request).backend.write(op))


@routes.delete("/v1/kv/{key:.*}")
async def kv_delete(request: web.Request) -> web.Response:
    key = _key(request)
    recurse = flag(request, "recurse")
    cas = query_uint(request, "cas")
    if not key and not recurse:
        raise BadRequestError("Missing key name")
    if recurse:
        op = KVOp(Verb="delete-tree", Key=key)
    elif cas is not None:
        op = KVOp(Verb="delete-cas", Key=key, Index=cas)
    else:
        op = KVOp(Verb="delete", Key=key)
    return json_response(await _agent(request).backend.write(op))


@routes.get("/v1/status/leader")
async def status_leader(request: web.Request) -> web.Response:
    leader, _ = await _agent(request).backend.status()
    return json_response(leader)


@routes.get("/v1/status/peers")
async def status_peers(request: web.Request) -> web.Response:
    _, peers = await _agent(request).backend.status()
    return json_response(peers)
