"""`/v1/query`: prepared queries (definitions in Raft; execution on the agent asked)."""

from __future__ import annotations

import random
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd import prepared_query as pq
from meshd import queries as q
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    NotFoundError,
    blocking_read,
    json_body,
    json_response,
    query_options,
)
from meshd.agent.http.coordinate_api import sort_near_node
from meshd.structs import CheckServiceNode, PreparedQueryOp

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
NOT_FOUND = "Query not found"


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


async def _definitions(agent: Agent) -> list[dict[str, Any]]:
    return list((await agent.backend.read(q.PreparedQueries())).value)


@routes.post("/v1/query")
async def create_query(request: web.Request) -> web.Response:
    query_id = str(uuid.uuid4())
    body = await json_body(request)
    await _agent(request).backend.write(PreparedQueryOp(Op="set", ID=query_id, Query=body))
    return json_response({"ID": query_id})


@routes.get("/v1/query")
async def list_queries(request: web.Request) -> web.Response:
    agent = _agent(request)
    res = await blocking_read(agent.backend, q.PreparedQueries(), query_options(request))
    return json_response(res.value, result=res)


@routes.get("/v1/query/{id}")
async def read_query(request: web.Request) -> web.Response:
    agent = _agent(request)
    query = q.PreparedQueries(ID=request.match_info["id"])
    res = await blocking_read(agent.backend, query, query_options(request))
    if not res.value:
        raise NotFoundError(NOT_FOUND)
    return json_response(res.value, result=res)


async def _existing(agent: Agent, query_id: str) -> None:
    if not (await agent.backend.read(q.PreparedQueries(ID=query_id))).value:
        raise NotFoundError(NOT_FOUND)


@routes.put("/v1/query/{id}")
async def update_query(request: web.Request) -> web.Response:
    agent = _agent(request)
    query_id = request.match_info["id"]
    body = await json_body(request)
    await _existing(agent, query_id)
    await agent.backend.write(PreparedQueryOp(Op="set", ID=query_id, Query=body))
    return web.Response(status=200)


@routes.delete("/v1/query/{id}")
async def delete_query(request: web.Request) -> web.Response:
    agent = _agent(request)
    query_id = request.match_info["id"]
    await _existing(agent, query_id)
    await agent.backend.write(PreparedQueryOp(Op="delete", ID=query_id))
    return web.Response(status=200)


async def _resolve(agent: Agent, id_or_name: str) -> dict[str, Any]:
    resolved = pq.resolve(await _definitions(agent), id_or_name)
    if resolved is None:
        raise NotFoundError(NOT_FOUND)
    return resolved.query


@routes.get("/v1/query/{id}/explain")
async def explain_query(request: web.Request) -> web.Response:
    return json_response({"Query": await _resolve(_agent(request), request.match_info["id"])})


async def execute(agent: Agent, query: dict[str, Any], near: str = "") -> list[CheckServiceNode]:
    """The instances `query` hands out: filtered, shuffled, then sorted by RTT from `near` (or
    the query's own `Near`) when a coordinate is known."""
    svc = query["Service"]
    read = q.ServiceNodes(Service=svc["Service"], Connect=svc["Connect"]["Enabled"])
    rows = pq.select(query, (await agent.backend.read(read)).value)
    random.shuffle(rows)
    return await sort_near_node(agent, near or svc["Near"], rows, lambda r: r.Node.Node)


@routes.get("/v1/query/{id}/execute")
async def execute_query(request: web.Request) -> web.Response:
    agent = _agent(request)
    query = await _resolve(agent, request.match_info["id"])
    rows = await execute(agent, query, request.query.get("near", ""))
    limit = request.query.get("limit")
    if limit is not None:
        try:
            n = int(limit)
        except ValueError:
            raise BadRequestError(f"Invalid limit {limit!r}") from None
        if n < 0:
            raise BadRequestError(f"Invalid limit {limit!r}")
        rows = rows[:n] if n else rows
    return json_response(
        {
            "Service": query["Service"]["Service"],
            "Nodes": rows,
            "DNS": query["DNS"],
            "Datacenter": agent.config.datacenter,
            "Failovers": 0,
        }
    )
