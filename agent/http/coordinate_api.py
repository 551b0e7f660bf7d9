"""`/v1/coordinate/*` and the `?near=` sort of catalog and health reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

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
from meshd.coordinate import Coordinate, CoordinateError, sort_by_distance
from meshd.structs import CoordinateBatch, CoordinateUpdate

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
AGENT_ALIAS = "_agent"  # Consul's name for "the node of the agent answering"


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _segment(rows: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    seg = request.query.get("segment")
    return rows if seg is None else [r for r in rows if r["Segment"] == seg]


@routes.get("/v1/coordinate/nodes")
async def coordinate_nodes(request: web.Request) -> web.Response:
    agent = _agent(request)
    res = await blocking_read(agent.backend, q.Coordinates(), query_options(request))
    return json_response(_segment(res.value, request), result=res)


@routes.get("/v1/coordinate/node/{node}")
async def coordinate_node(request: web.Request) -> web.Response:
    agent = _agent(request)
    node = request.match_info["node"]
    res = await blocking_read(agent.backend, q.Coordinates(Node=node), query_options(request))
    rows = _segment(res.value, request)
    if not rows:
        raise NotFoundError(f"no coordinates for node {node!r}")
    return json_response(rows, result=res)


@routes.get("/v1/coordinate/datacenters")
async def coordinate_datacenters(request: web.Request) -> web.Response:
    """The servers' coordinates per datacenter (one: there is no WAN federation)."""
    agent = _agent(request)
    coords = (await agent.backend.read(q.Coordinates())).value
    servers = {n.Node for n in (await agent.backend.read(q.Nodes())).value if _is_server(n)}
    rows = [{"Node": r["Node"], "Coord": r["Coord"]} for r in coords if r["Node"] in servers]
    dc = agent.config.datacenter
    return json_response([{"Datacenter": dc, "AreaID": "wan", "Coordinates": rows}])


def _is_server(node: Any) -> bool:
    return node.Meta.get("meshd-server") == "true"


@routes.put("/v1/coordinate/update")
async def coordinate_update(request: web.Request) -> web.Response:
    body = {k.lower(): v for k, v in (await json_body(request)).items()}
    node = body.get("node")
    if not isinstance(node, str) or not node:
        raise BadRequestError("Node is required")
    segment = body.get("segment") or ""
    if not isinstance(segment, str):
        raise BadRequestError("Segment must be a string")
    try:
        coord = Coordinate.from_json(body.get("coord"))
    except CoordinateError as e:
        raise BadRequestError(f"Invalid coordinate: {e}") from None
    update = CoordinateUpdate(Node=node, Segment=segment, Coord=coord.to_json())
    await _agent(request).backend.write(CoordinateBatch(Updates=[update]))
    return web.Response(status=200)


async def sort_near(
    request: web.Request, rows: list[Any], node_of: Callable[[Any], str]
) -> list[Any]:
    """Consul's `?near=NODE` on a read."""
    return await sort_near_node(_agent(request), request.query.get("near", ""), rows, node_of)


async def sort_near_node(
    agent: Agent, near: str, rows: list[Any], node_of: Callable[[Any], str]
) -> list[Any]:
    """Rows by estimated round-trip time from `near` (`_agent`: this agent's node), nearest
    first; rows whose node has no coordinate go last. Without `near`, or when that node has no
    coordinate yet, the order is unchanged."""
    if not near or not rows:
        return rows
    if near == AGENT_ALIAS:
        near = agent.config.node_name
    coords = {
        r["Node"]: Coordinate.from_json(r["Coord"])
        for r in (await agent.backend.read(q.Coordinates())).value
        if not r["Segment"]
    }
    origin = coords.get(near)
    if origin is None and near == agent.config.node_name:
        origin = agent.coordinate.coord
    return sort_by_distance(origin, rows, lambda row: coords.get(node_of(row)))
