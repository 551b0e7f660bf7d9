"""`/v1/event/fire/:name` and `/v1/event/list` (agent/events.py holds this agent's events)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

from aiohttp import web

from meshd.agent.events import list_index
from meshd.agent.http.common import AGENT_KEY, BadRequestError, json_response, query_options
from meshd.structs import UserEvent
from meshd.validate_session import MAX_EVENT_PAYLOAD

routes = web.RouteTableDef()


@routes.put("/v1/event/fire/{name}")
async def event_fire(request: web.Request) -> web.Response:
    too_big = f"Event payload exceeds {MAX_EVENT_PAYLOAD} byte limit\n"
    if (request.content_length or 0) > MAX_EVENT_PAYLOAD:
        return web.Response(status=413, text=too_big)
    payload = await request.read()
    if len(payload) > MAX_EVENT_PAYLOAD:
        return web.Response(status=413, text=too_big)
    qs = request.query
    ev = UserEvent(
        ID=str(uuid.uuid4()),
        Name=request.match_info["name"],
        Payload=payload or None,
        NodeFilter=qs.get("node", ""),
        ServiceFilter=qs.get("service", ""),
        TagFilter=qs.get("tag", ""),
    )
    return json_response(await request.app[AGENT_KEY].events.fire(ev))


def _filter(events: list[UserEvent], request: web.Request) -> list[UserEvent]:
    """`?node=`, `?service=`, `?tag=`: regexps over the events' own filters (Consul's list)."""
    out = events
    for param, field in (
        ("node", "NodeFilter"),
        ("service", "ServiceFilter"),
        ("tag", "TagFilter"),
    ):
        pattern = request.query.get(param)
        if pattern:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise BadRequestError(f"invalid {param} regexp: {e}") from None
            out = [e for e in out if rx.search(getattr(e, field))]
    return out


@routes.get("/v1/event/list")
async def event_list(request: web.Request) -> web.Response:
    """Blocking as Consul's: the index is the newest listed event's (opaque, so the wait ends
    when it differs from `?index=`, not when it grows)."""
    receiver = request.app[AGENT_KEY].events
    opts = query_options(request)
    name = request.query.get("name", "")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + opts.wait
    while True:
        wake = receiver.waiter()
        events = _filter(receiver.list(name), request)
        index = list_index(events)
        remaining = deadline - loop.time()
        if not opts.index or index != opts.index or remaining <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), remaining)
    resp = json_response(events)
    resp.headers["X-Consul-Index"] = str(index)
    return resp
