"""`/v1/agent/*`: this agent's own services, checks, membership and configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd.agent import introspect
from meshd.agent.definitions import DefinitionError, parse_check, parse_service
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    NotFoundError,
    filtered,
    flag,
    json_body,
    json_response,
    query_options,
    to_builtins,
)
from meshd.metrics import consul_json, prometheus_text
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, HealthCheck

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def agent_service(agent: Agent, sid: str) -> dict[str, Any]:
    svc = agent.local.services[sid]
    out = to_builtins(svc)
    out.pop("CreateIndex", None)
    out.pop("ModifyIndex", None)
    out["Datacenter"] = agent.config.datacenter
    return out


@routes.put("/v1/agent/service/register")
async def register_service(request: web.Request) -> web.Response:
    agent = _agent(request)
    defn = parse_service(await json_body(request))
    await agent.register_service(defn, replace_checks=flag(request, "replace-existing-checks"))
    return web.Response(status=200)


@routes.put("/v1/agent/service/deregister/{sid:.+}")
async def deregister_service(request: web.Request) -> web.Response:
    await _agent(request).deregister_service(request.match_info["sid"])
    return web.Response(status=200)


@routes.put("/v1/agent/service/maintenance/{sid:.+}")
async def service_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    await _agent(request).service_maintenance(
        request.match_info["sid"], enable, request.query.get("reason", "")
    )
    return web.Response(status=200)


@routes.put("/v1/agent/maintenance")
async def node_maintenance(request: web.Request) -> web.Response:
    enable = _enable_param(request)
    await _agent(request).node_maintenance(enable, request.query.get("reason", ""))
    return web.Response(status=200)


def _enable_param(request: web.Request) -> bool:
    v = request.query.get("enable")
    if v is None:
        raise BadRequestError("Missing value for enable")
    if v.lower() not in ("true", "false"):
        raise BadRequestError(f"Invalid value for enable: {v!r}")
    return v.lower() == "true"


@routes.get("/v1/agent/services")
async def list_services(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    rows = [agent_service(agent, sid) for sid in sorted(agent.local.services)]
    return json_response({r["ID"]: r for r in filtered(opts, rows)})


@routes.get("/v1/agent/service/{sid:.+}")
async def get_service(request: web.Request) -> web.Response:
    agent = _agent(request)
    sid = request.match_info["sid"]
    if sid not in agent.local.services:
        raise NotFoundError(f"unknown service ID: {sid}")
    return json_response(agent_service(agent, sid))


_RANK = {HEALTH_PASSING: 0, HEALTH_WARNING: 1, HEALTH_CRITICAL: 2, "maintenance": 3}
_CODE = {HEALTH_PASSING: 200, HEALTH_WARNING: 429, HEALTH_CRITICAL: 503, "maintenance": 503}


def aggregated_status(checks: list[HealthCheck]) -> str:
    """Consul's order: maintenance beats critical beats warning beats passing."""
    status = HEALTH_PASSING
    for c in checks:
        s = "maintenance" if c.CheckID.startswith("_") and c.Type == "maintenance" else c.Status
        if _RANK.get(s, 2) > _RANK[status]:
            status = s
    return status


def _health_entry(agent: Agent, sid: str) -> tuple[str, dict[str, Any]]:
    checks = agent.local.service_checks(sid)
    status = aggregated_status(checks)
    return status, {
        "AggregatedStatus": status,
        "Service": agent_service(agent, sid),
        "Checks": to_builtins(checks),
    }


def _health_response(request: web.Request, status: str, body: Any) -> web.Response:
    if request.query.get("format") == "text":
        return web.Response(status=_CODE[status], text=status)
    return json_response(body, status=_CODE[status])


@routes.get("/v1/agent/health/service/name/{name:.+}")
async def health_by_name(request: web.Request) -> web.Response:
    agent = _agent(request)
    name = request.match_info["name"]
    entries = [
        _health_entry(agent, sid)
        for sid, s in sorted(agent.local.services.items())
        if s.Service == name
    ]
    if not entries:
        if request.query.get("format") == "text":
            return web.Response(status=404, text=f"ServiceName {name} Not Found")
        return json_response([], status=404)
    worst = max((s for s, _ in entries), key=lambda s: _RANK[s])
    return _health_response(request, worst, [e for _, e in entries])


@routes.get("/v1/agent/health/service/id/{sid:.+}")
async def health_by_id(request: web.Request) -> web.Response:
    agent = _agent(request)
    sid = request.match_info["sid"]
    if sid not in agent.local.services:
        if request.query.get("format") == "text":
            return web.Response(status=404, text=f"ServiceId {sid} not found")
        raise NotFoundError(f"ServiceId {sid} not found")
    status, entry = _health_entry(agent, sid)
    return _health_response(request, status, entry)


@routes.get("/v1/agent/checks")
async def list_checks(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    rows = [to_builtins(lc.check) for _, lc in sorted(agent.local.checks.items())]
    return json_response({r["CheckID"]: r for r in filtered(opts, rows)})


@routes.put("/v1/agent/check/register")
async def register_check(request: web.Request) -> web.Response:
    agent = _agent(request)
    check = parse_check(await json_body(request))
    if check.ServiceID and check.ServiceID not in agent.local.services:
        # Consul refuses it: a check of an unknown service would never be shown with one.
        raise DefinitionError(f"ServiceID {check.ServiceID!r} does not exist")
    await agent.register_check(check)
    return web.Response(status=200)


@routes.put("/v1/agent/check/deregister/{cid:.+}")
async def deregister_check(request: web.Request) -> web.Response:
    await _agent(request).deregister_check(request.match_info["cid"])
    return web.Response(status=200)


async def _ttl(request: web.Request, status: str, output: str) -> web.Response:
    await _agent(request).update_ttl(request.match_info["cid"], status, output)
    return web.Response(status=200)


@routes.put("/v1/agent/check/pass/{cid:.+}")
async def check_pass(request: web.Request) -> web.Response:
    return await _ttl(request, HEALTH_PASSING, request.query.get("note", ""))


@routes.put("/v1/agent/check/warn/{cid:.+}")
async def check_warn(request: web.Request) -> web.Response:
    return await _ttl(request, HEALTH_WARNING, request.query.get("note", ""))


@routes.put("/v1/agent/check/fail/{cid:.+}")
async def check_fail(request: web.Request) -> web.Response:
    return await _ttl(request, HEALTH_CRITICAL, request.query.get("note", ""))


@routes.put("/v1/agent/check/update/{cid:.+}")
async def check_update(request: web.Request) -> web.Response:
    body = await json_body(request)
    status = body.get("Status", "")
    output = body.get("Output", "")
    if status not in (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL):
        raise BadRequestError(f"Invalid check status: {status!r}")
    if not isinstance(output, str):
        raise BadRequestError("Output must be a string")
    return await _ttl(request, status, output)


@routes.get("/v1/agent/members")
async def members(request: web.Request) -> web.Response:
    return json_response(await introspect.members(_agent(request)))


@routes.get("/v1/agent/self")
async def self_info(request: web.Request) -> web.Response:
    return json_response(introspect.self_info(_agent(request)))


@routes.get("/v1/agent/metrics")
async def metrics(request: web.Request) -> web.Response:
    stats = _agent(request).stats
    if request.query.get("format") == "prometheus":
        return web.Response(
            body=prometheus_text(stats), headers={"Content-Type": "text/plain; version=0.0.4"}
        )
    return json_response(consul_json(stats))


@routes.put("/v1/agent/reload")
async def reload_config(request: web.Request) -> web.Response:
    """Consul's reload: 200 once applied; a refused config is a 500 with the reason, as in
    Consul (the request itself was fine; the files on the agent are not). The body lists what
    was applied and what needs a restart."""
    from meshd.agent.reload import ReloadError

    reloader = _agent(request).reloader
    if reloader is None:
        return web.Response(status=500, text="reload is not available until the agent is ready")
    try:
        result = await reloader.reload()
    except ReloadError as e:
        return web.Response(status=500, text=f"Failed reloading config: {e}")
    return json_response(result.to_json())
