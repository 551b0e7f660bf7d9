"""The aiohttp application: routes, limits and error handling wired together."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd.agent.http import (
    acl_api,
    acl_auth_api,
    agent_api,
    catalog_api,
    connect_api,
    coordinate_api,
    event_api,
    kv_api,
    operator_api,
    ops_api,
    query_api,
    session_api,
    telemetry_api,
    txn_api,
    ui,
)
from meshd.agent.http.acl_guard import acl_middleware
from meshd.agent.http.common import AGENT_KEY, datacenter_middleware, error_middleware
from meshd.agent.http.guard import refuse_http09
from meshd.agent.http.http_metrics import route_timer

if TYPE_CHECKING:
    from meshd.agent.agent import Agent


@web.middleware
async def count_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    resp = await handler(request)
    stats = request.app[AGENT_KEY].stats
    stats.http[(request.method, resp.status)] += 1
    route_timer(stats, request).since(started)
    return resp


def make_app(agent: Agent, max_body: int = 1024 * 1024) -> web.Application:
    app = web.Application(
        middlewares=[
            refuse_http09,
            count_middleware,
            error_middleware,
            datacenter_middleware,
            acl_middleware,
        ],
        client_max_size=max_body,
    )
    app[AGENT_KEY] = agent
    for mod in (
        agent_api,
        catalog_api,
        connect_api,
        kv_api,
        operator_api,
        session_api,
        event_api,
        txn_api,
        acl_api,
        acl_auth_api,
        ops_api,
        coordinate_api,
        query_api,
        telemetry_api,
        ui,
    ):
        app.add_routes(mod.routes)
    return app
