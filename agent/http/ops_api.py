"""Operator and agent endpoints in Consul's shapes: join, force-leave, monitor, host, version,
autopilot, leadership transfer, usage, and the gateway views of the catalog."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd import queries as q
from meshd.agent import introspect, monitor
from meshd.agent.backend import ReadResult
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    blocking_read,
    flag,
    json_body,
    json_response,
    query_options,
)
from meshd.agent.join import JoinError, join
from meshd.agent.logs import secrets_of
from meshd.server.operator import (
    AutopilotHealth,
    ForceLeave,
    KeyringList,
    TransferLeader,
    Usage,
)
from meshd.server.store import CommandError
from meshd.structs import AutopilotConfigOp, KeyringOp

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
_NO_NODE = "agent: No node found"


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _text500(text: str) -> web.Response:
    return web.Response(status=500, text=text + "\n")


@routes.get("/v1/agent/version")
async def agent_version(request: web.Request) -> web.Response:
    return json_response(introspect.version_info())


@routes.get("/v1/agent/host")
async def agent_host(request: web.Request) -> web.Response:
    return json_response(introspect.host_info(_agent(request)))


@routes.put("/v1/agent/join/{address}")
async def agent_join(request: web.Request) -> web.Response:
    if flag(request, "wan"):
        raise BadRequestError("WAN federation is not supported: there is no WAN pool to join")
    try:
        await join(_agent(request), request.match_info["address"])
    except JoinError as e:
        return _text500(str(e))
    return web.Response(status=200)


@routes.put("/v1/agent/force-leave/{node}")
async def agent_force_leave(request: web.Request) -> web.Response:
    if flag(request, "wan"):
        raise BadRequestError("WAN federation is not supported")
    req = ForceLeave(Node=request.match_info["node"], Prune=flag(request, "prune"))
    try:
        await _agent(request).backend.operator(req)
    except CommandError as e:
        if _NO_NODE in str(e):  # Consul answers an unknown node with a 500
            return _text500(str(e))
        raise
    return web.Response(status=200)


@routes.get("/v1/agent/monitor")
async def agent_monitor(request: web.Request) -> web.StreamResponse:
    try:
        level = monitor.parse_level(request.query.get("loglevel", "info"))
    except monitor.MonitorLevelError as e:
        raise BadRequestError(str(e)) from None
    agent = _agent(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await resp.prepare(request)
    lines = monitor.stream(level, flag(request, "logjson"), lambda: secrets_of(agent.config))
    with contextlib.suppress(ConnectionResetError):
        async for line in lines:
            await resp.write(line.encode() + b"\n")
    return resp


# ---- operator -------------------------------------------------------------------------------


@routes.post("/v1/operator/raft/transfer-leader")
@routes.put("/v1/operator/raft/transfer-leader")
async def transfer_leader(request: web.Request) -> web.Response:
    agent = _agent(request)
    target = request.query.get("id", "")
    ok = await agent.backend.operator(TransferLeader(ID=target))
    return json_response({"Success": bool(ok)})


@routes.get("/v1/operator/autopilot/configuration")
async def autopilot_get(request: web.Request) -> web.Response:
    agent = _agent(request)
    res = await blocking_read(agent.backend, q.AutopilotConfig(), query_options(request))
    return json_response(res.value, result=res)


@routes.put("/v1/operator/autopilot/configuration")
async def autopilot_put(request: web.Request) -> web.Response:
    body = await json_body(request)
    cas = request.query.get("cas")
    try:
        index = int(cas) if cas is not None else -1
    except ValueError:
        raise BadRequestError(f"Invalid cas value: {cas!r}") from None
    if cas is not None and index < 0:
        raise BadRequestError(f"Invalid cas value: {cas!r}")
    result = await _agent(request).backend.write(AutopilotConfigOp(Config=body, CASIndex=index))
    return json_response(bool(result))


@routes.get("/v1/operator/autopilot/health")
async def autopilot_health(request: web.Request) -> web.Response:
    health = await _agent(request).backend.operator(AutopilotHealth())
    return json_response(health, status=200 if health.get("Healthy") else 429)


@routes.get("/v1/operator/autopilot/state")
async def autopilot_state(request: web.Request) -> web.Response:
    return json_response(await _agent(request).backend.operator(AutopilotHealth(State=True)))


@routes.get("/v1/operator/usage")
async def operator_usage(request: web.Request) -> web.Response:
    agent = _agent(request)
    answer = await agent.backend.operator(Usage())
    index = int(answer.get("Index", 0))
    body = {  # Consul's body carries its query metadata too
        "Usage": answer["Usage"],
        "Index": index,
        "LastContact": 0,
        "KnownLeader": True,
        "ConsistencyLevel": "leader",
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }
    return json_response(body, result=ReadResult(index, None))


# ---- keyring -------------------------------------------------------------------------------


@routes.get("/v1/operator/keyring")
async def keyring_list(request: web.Request) -> web.Response:
    return json_response(await _agent(request).backend.operator(KeyringList()))


async def _keyring_op(request: web.Request, op: str) -> web.Response:
    body = {k.lower(): v for k, v in (await json_body(request)).items()}
    key = body.get("key")
    if not isinstance(key, str) or not key:
        raise BadRequestError("Request body must have a Key")
    agent = _agent(request)
    await agent.backend.write(KeyringOp(Op=op, Key=key, Current=list(agent.keyring.keys)))
    return web.Response(status=200)


@routes.post("/v1/operator/keyring")
async def keyring_install(request: web.Request) -> web.Response:
    return await _keyring_op(request, "install")


@routes.put("/v1/operator/keyring")
async def keyring_use(request: web.Request) -> web.Response:
    return await _keyring_op(request, "use")


@routes.delete("/v1/operator/keyring")
async def keyring_remove(request: web.Request) -> web.Response:
    return await _keyring_op(request, "remove")


# ---- gateways -------------------------------------------------------------------------------

GATEWAY_KINDS = ("ingress-gateway", "terminating-gateway")


def gateway_services(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Consul's GatewayService rows of one ingress or terminating gateway config entry."""
    gw, kind = entry.get("Name", ""), entry.get("Kind", "")
    rows: list[dict[str, Any]] = []
    if kind == "terminating-gateway":
        for svc in entry.get("Services") or []:
            rows.append(
                {
                    "Gateway": {"Name": gw},
                    "Service": {"Name": svc.get("Name", "")},
                    "GatewayKind": kind,
                    "CAFile": svc.get("CAFile", ""),
                    "CertFile": svc.get("CertFile", ""),
                    "KeyFile": svc.get("KeyFile", ""),
                    "SNI": svc.get("SNI", ""),
                    "FromWildcard": svc.get("Name") == "*",
                }
            )
    for listener in entry.get("Listeners") or [] if kind == "ingress-gateway" else []:
        for svc in listener.get("Services") or []:
            rows.append(
                {
                    "Gateway": {"Name": gw},
                    "Service": {"Name": svc.get("Name", "")},
                    "GatewayKind": kind,
                    "Port": listener.get("Port", 0),
                    "Protocol": listener.get("Protocol", "tcp"),
                    "Hosts": svc.get("Hosts") or None,
                    "FromWildcard": svc.get("Name") == "*",
                }
            )
    return rows


@routes.get("/v1/catalog/gateway-services/{gateway}")
async def catalog_gateway_services(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    name = request.match_info["gateway"]
    rows: list[dict[str, Any]] = []
    res = None
    for kind in GATEWAY_KINDS:
        res = await blocking_read(agent.backend, q.ConfigEntries(Kind=kind, Name=name), opts)
        for entry in res.value:
            rows.extend(gateway_services(entry))
    return json_response(rows, result=res)


@routes.get("/v1/health/ingress/{service}")
async def health_ingress(request: web.Request) -> web.Response:
    """The ingress gateways that expose `service`, as health rows (empty without any)."""
    agent = _agent(request)
    opts = query_options(request)
    service = request.match_info["service"]
    res = await blocking_read(agent.backend, q.ConfigEntries(Kind="ingress-gateway"), opts)
    gateways = sorted(
        {
            row["Gateway"]["Name"]
            for entry in res.value
            for row in gateway_services(entry)
            if row["Service"]["Name"] in (service, "*")
        }
    )
    passing = flag(request, "passing")
    rows: list[Any] = []
    for gw in gateways:
        got = await agent.backend.read(q.ServiceNodes(Service=gw))
        rows.extend(
            r for r in got.value if not passing or all(c.Status == "passing" for c in r.Checks)
        )
    return json_response(rows, result=res)
