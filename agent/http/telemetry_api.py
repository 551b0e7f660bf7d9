"""The service graph over HTTP: meshd's whole graph, Consul's service topology, the explainer."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd import queries as q
from meshd.agent.http.common import AGENT_KEY, BadRequestError, json_response
from meshd.durations import DurationError, parse_duration_seconds
from meshd.intentions import Decision, Intention, check, flatten
from meshd.server.telemetry import DEFAULT_WINDOW_S, GraphRequest, graph_view
from meshd.spiffe import spiffe_service_id
from meshd.structs import CheckServiceNode

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
INTENTIONS = "service-intentions"


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _window(request: web.Request) -> float:
    raw = request.query.get("window", "")
    if not raw:
        return DEFAULT_WINDOW_S
    try:
        return parse_duration_seconds(raw)
    except DurationError as e:
        raise BadRequestError(f"invalid window {raw!r}: {e}") from None


async def fetch_graph(agent: Agent, window_s: float, history: bool = False) -> dict[str, Any]:
    """The graph from the local server, or from any server (each holds all of it)."""
    req = GraphRequest(Window=window_s, History=history)
    if agent.server is not None:
        return graph_view(agent.server, req)
    assert agent.rpc is not None
    return await agent.rpc.call("telemetry_graph", req, dict)


async def _intentions(agent: Agent) -> list[Intention]:
    return flatten((await agent.backend.read(q.ConfigEntries(Kind=INTENTIONS))).value)


def _default_allow(agent: Agent) -> bool:
    return agent.config.default_intention_policy == "allow"


def _decision(ixns: list[Intention], src: str, dst: str, default_allow: bool) -> Decision:
    # as Consul's topology view: an L7 intention lets some traffic through (HasPermissions)
    return check(ixns, src, dst, default_allow, allow_permissions=True)


def _decision_json(d: Decision, src: str, dst: str, default_allow: bool) -> dict[str, Any]:
    ixn = d.intention
    return {
        "Allowed": d.allowed,
        "HasPermissions": d.has_permissions,
        "ExternalSource": "",
        "HasExact": ixn is not None and (ixn.SourceName, ixn.DestinationName) == (src, dst),
        "DefaultAllow": default_allow,
    }


@routes.get("/v1/meshd/graph")
async def graph(request: web.Request) -> web.Response:
    agent = _agent(request)
    view = await fetch_graph(agent, _window(request), "history" in request.query)
    ixns = await _intentions(agent)
    allow = _default_allow(agent)
    for edge in view["Edges"]:
        d = _decision(ixns, edge["Source"], edge["Destination"], allow)
        edge["Intention"] = _decision_json(d, edge["Source"], edge["Destination"], allow)
        edge["Denied"] = not d.allowed
    return json_response(view)


async def _instances(agent: Agent, service: str, connect: bool = False) -> list[CheckServiceNode]:
    return list((await agent.backend.read(q.ServiceNodes(Service=service, Connect=connect))).value)


def _upstreams_of(rows: list[CheckServiceNode]) -> set[str]:
    names = set()
    for row in rows:
        for up in (row.Service.Proxy or {}).get("Upstreams") or []:
            if up.get("DestinationType", "service") == "service" and up.get("DestinationName"):
                names.add(up["DestinationName"])
    return names


async def _summary(agent: Agent, name: str) -> dict[str, Any]:
    """Consul's ServiceSummary fields for one service."""
    rows = await _instances(agent, name)
    status = {"passing": 0, "warning": 0, "critical": 0}
    for row in rows:
        for c in row.Checks:
            status[c.Status] = status.get(c.Status, 0) + 1
    proxies = await _instances(agent, name, connect=True)
    return {
        "Name": name,
        "Datacenter": agent.config.datacenter,
        "Namespace": "default",
        "Partition": "default",
        "Tags": sorted({t for r in rows for t in r.Service.Tags}),
        "Nodes": sorted({r.Node.Node for r in rows}),
        "InstanceCount": len(rows),
        "ChecksPassing": status["passing"],
        "ChecksWarning": status["warning"],
        "ChecksCritical": status["critical"],
        "ExternalSources": [],
        "ConnectedWithProxy": any(p.Service.Kind == "connect-proxy" for p in proxies),
        "ConnectedWithConnectNative": any((r.Service.Connect or {}).get("Native") for r in rows),
        "TransparentProxy": False,
    }


@routes.get("/v1/internal/ui/service-topology/{service}")
async def service_topology(request: web.Request) -> web.Response:
    """Consul's shape, plus meshd's `Metrics` per upstream and downstream (graph window)."""
    if "kind" not in request.query:
        raise BadRequestError("Missing service kind")  # Consul's answer too
    agent = _agent(request)
    service = request.match_info["service"]
    own = await _instances(agent, service, connect=True)
    proxies = [r for r in own if r.Service.Kind == "connect-proxy"]
    ups = _upstreams_of(proxies)
    downs = set()
    names = (await agent.backend.read(q.Services())).value
    for name in names:
        if name != service and service in _upstreams_of(await _instances(agent, name, True)):
            downs.add(name)
    view = await fetch_graph(agent, _window(request))
    metrics = {(e["Source"], e["Destination"]): e["Metrics"] for e in view["Edges"]}
    ups |= {d for s, d in metrics if s == service}
    downs |= {s for s, d in metrics if d == service}
    ixns = await _intentions(agent)
    allow = _default_allow(agent)

    async def entry(src: str, dst: str, other: str) -> dict[str, Any]:
        d = _decision(ixns, src, dst, allow)
        out = await _summary(agent, other)
        out["Intention"] = _decision_json(d, src, dst, allow)
        out["Source"] = "registration"
        out["Metrics"] = metrics.get((src, dst))
        return out

    protocol = "tcp"
    for row in proxies:
        protocol = (row.Service.Proxy or {}).get("Config", {}).get("protocol", protocol)
    for e in view["Edges"]:
        if e["Destination"] == service:
            protocol = e["Protocol"]
    return json_response(
        {
            "Protocol": protocol,
            "TransparentProxy": False,
            "Upstreams": [await entry(service, u, u) for u in sorted(ups)],
            "Downstreams": [await entry(d, service, d) for d in sorted(downs)],
            "FilteredByACLs": False,
            "DefaultAllow": allow,
            "WildcardIntention": any(i.SourceName == "*" for i in ixns),
        }
    )


def _healthy(row: CheckServiceNode) -> bool:
    return all(c.Status == "passing" for c in row.Checks)


def _step(name: str, ok: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"Step": name, "OK": ok, "Detail": detail, **extra}


async def _cert_step(agent: Agent, service: str, trust_domain: str) -> dict[str, Any]:
    want = spiffe_service_id(trust_domain, agent.config.datacenter, service)
    leaf = agent.mesh.leaves.leaves.get(service)
    if leaf is None:
        return _step(
            f"certificate of {service}",
            True,
            f"no sidecar of {service} on this agent; its SPIFFE ID is {want}",
            SpiffeID=want,
        )
    now = dt.datetime.now(dt.UTC)
    ok = leaf.valid_after <= now < leaf.valid_before and leaf.spiffe_id == want
    return _step(
        f"certificate of {service}",
        ok,
        f"{leaf.spiffe_id} valid {leaf.valid_after.isoformat()} .. "
        f"{leaf.valid_before.isoformat()}" + ("" if ok else " (expired or wrong identity)"),
        SpiffeID=leaf.spiffe_id,
        ValidBefore=leaf.valid_before.isoformat(),
    )


def _xds_step(agent: Agent, service: str) -> dict[str, Any] | None:
    """Last ACK/NACK of the local sidecars of `service` (None: none on this agent)."""
    mesh = agent.mesh
    sids = [
        sid
        for sid, svc in agent.local.services.items()
        if svc.Kind == "connect-proxy"
        and (svc.Proxy or {}).get("DestinationServiceName") == service
    ]
    if not sids:
        return None
    nacks = []
    for sid in sids:
        for n in mesh.ads.stats(sid)["nacks"][-1:]:
            nacks.append(f"{sid}: {n.get('message', n)}")
    detail = "; ".join(nacks) if nacks else f"{', '.join(sids)}: last config accepted (ACK)"
    return _step(f"Envoy config of {service}", not nacks, detail)


@routes.get("/v1/meshd/explain")
async def explain(request: web.Request) -> web.Response:
    """Why SRC can or cannot reach DST, step by step; Verdict: every step OK."""
    src, dst = request.query.get("source", ""), request.query.get("destination", "")
    if not src or not dst:
        raise BadRequestError("required query parameters 'source' and 'destination' are missing")
    agent = _agent(request)
    steps = []
    rows = await _instances(agent, dst)
    healthy = [r for r in rows if _healthy(r)]
    addrs = [f"{r.Service.Address or r.Node.Address}:{r.Service.Port}" for r in healthy]
    steps.append(
        _step(
            f"DNS {dst}.service.consul",
            bool(healthy),
            f"{len(healthy)} of {len(rows)} instances healthy: {', '.join(addrs) or 'none'}",
            Answer=addrs,
        )
    )
    proxies = [r for r in await _instances(agent, dst, True) if _healthy(r)]
    steps.append(
        _step(f"sidecars of {dst}", bool(proxies), f"{len(proxies)} healthy connect proxies")
    )
    allow = _default_allow(agent)
    d = check(await _intentions(agent), src, dst, allow, allow_permissions=True)
    steps.append(_step("intention", d.allowed, d.reason))
    roots = (await agent.backend.read(q.CARoots())).value
    for svc in (src, dst):
        steps.append(await _cert_step(agent, svc, roots.get("TrustDomain", "")))
        xds = _xds_step(agent, svc)
        if xds is not None:
            steps.append(xds)
    view = await fetch_graph(agent, _window(request))
    edge = next((e for e in view["Edges"] if (e["Source"], e["Destination"]) == (src, dst)), None)
    if edge is None:
        steps.append(_step("traffic", True, "no traffic reported on this edge in the window"))
    else:
        m = edge["Metrics"]
        sr = m["SuccessRate"]
        ok = (sr is None or sr >= 0.99) and not m["DeniedPerSecond"]
        steps.append(
            _step(
                "traffic",
                ok,
                f"{m['RequestsPerSecond']} req/s, success rate "
                f"{'n/a' if sr is None else f'{sr:.1%}'}, "
                f"{m['DeniedPerSecond']} denied/s (403 from the destination's RBAC)",
                Metrics=m,
            )
        )
    return json_response(
        {
            "Source": src,
            "Destination": dst,
            "Allowed": d.allowed and bool(proxies),
            "Steps": steps,
        }
    )
