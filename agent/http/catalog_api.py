"""`/v1/catalog/*` and `/v1/health/*`: reads of the replicated catalog, blocking-capable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshd import queries as q
from meshd.agent.backend import ReadResult
from meshd.agent.definitions import check_list, parse_service
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    blocking_read,
    filtered,
    flag,
    json_body,
    json_response,
    query_options,
    require_local_datacenter,
    to_builtins,
)
from meshd.agent.http.coordinate_api import sort_near
from meshd.structs import (
    HEALTH_PASSING,
    HEALTH_STATES,
    CheckServiceNode,
    Deregister,
    HealthCheck,
    Register,
)

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _tags(request: web.Request) -> list[str]:
    return request.query.getall("tag", [])


def _has_tags(row: CheckServiceNode, tags: list[str]) -> bool:
    have = {t.lower() for t in row.Service.Tags}
    return all(t.lower() in have for t in tags)


def service_node(row: CheckServiceNode, dc: str) -> dict[str, Any]:
    """The flat ServiceNode shape of /v1/catalog/service."""
    n, s = row.Node, row.Service
    return {
        "ID": n.ID,
        "Node": n.Node,
        "Address": n.Address,
        "Datacenter": n.Datacenter or dc,
        "TaggedAddresses": n.TaggedAddresses,
        "NodeMeta": n.Meta,
        "ServiceKind": s.Kind,
        "ServiceID": s.ID,
        "ServiceName": s.Service,
        "ServiceTags": s.Tags,
        "ServiceAddress": s.Address,
        "ServiceTaggedAddresses": s.TaggedAddresses,
        "ServiceWeights": to_builtins(s.Weights),
        "ServiceMeta": s.Meta,
        "ServicePort": s.Port,
        "ServiceEnableTagOverride": s.EnableTagOverride,
        "ServiceProxy": s.Proxy or {},
        "ServiceConnect": s.Connect or {},
        "ServiceLocality": s.Locality,
        "CreateIndex": s.CreateIndex,
        "ModifyIndex": s.ModifyIndex,
    }


def _node_key(row: dict[str, Any]) -> str:
    return str(row["Node"])


def _with_dc(row: Any, dc: str) -> dict[str, Any]:
    d = to_builtins(row)
    if not d.get("Datacenter"):
        d["Datacenter"] = dc
    return d


def _catalog_check(node: str, raw: Any) -> HealthCheck:
    """A check written straight into the catalog: a status record, nothing for an agent to run."""
    if not isinstance(raw, dict):
        raise BadRequestError("Check must be an object")
    d = {k.lower(): v for k, v in raw.items()}
    fields: dict[str, Any] = {}
    for key, name in (
        ("checkid", "CheckID"),
        ("name", "Name"),
        ("status", "Status"),
        ("serviceid", "ServiceID"),
        ("notes", "Notes"),
        ("output", "Output"),
    ):
        v = d.get(key, "")
        if not isinstance(v, str):
            raise BadRequestError(f"Check.{name} must be a string")
        fields[name] = v
    fields["CheckID"] = fields["CheckID"] or fields["Name"]
    if not fields["CheckID"]:
        raise BadRequestError("Check must have a CheckID or Name")
    fields["Name"] = fields["Name"] or fields["CheckID"]
    fields["Status"] = fields["Status"] or "critical"
    if fields["Status"] not in HEALTH_STATES:
        raise BadRequestError(f"Invalid check status: {fields['Status']!r}")
    return HealthCheck(Node=node, **fields)


_REGISTER_KEYS = {
    "id",
    "node",
    "address",
    "datacenter",
    "taggedaddresses",
    "nodemeta",
    "service",
    "check",
    "checks",
    "skipnodeupdate",
    "partition",
    "namespace",
    "locality",
    "token",
}


# ---- catalog writes -------------------------------------------------------------------------


@routes.put("/v1/catalog/register")
async def catalog_register(request: web.Request) -> web.Response:
    agent = _agent(request)
    body = await json_body(request)
    folded = {k.lower(): v for k, v in body.items()}
    unknown = sorted(k for k in body if k.lower() not in _REGISTER_KEYS)
    if unknown:
        raise BadRequestError(f"Request decode failed: unknown field {unknown[0]!r}")
    require_local_datacenter(request, folded.get("datacenter"))
    node = folded.get("node")
    if not isinstance(node, str) or not node:
        raise BadRequestError("Must provide node")
    address = folded.get("address")
    if not isinstance(address, str) or not address:
        raise BadRequestError("Must provide address")
    svc = None
    if folded.get("service"):
        raw_svc = folded["service"]
        if not isinstance(raw_svc, dict):
            raise BadRequestError("Service must be an object")
        # the catalog body names the service `Service` (an AgentService), the agent's `Name`
        raw_svc = {("Name" if k.lower() == "service" else k): v for k, v in raw_svc.items()}
        svc = parse_service(raw_svc).service
    raw_checks = ([folded["check"]] if folded.get("check") else []) + check_list(
        folded.get("checks"), "register"
    )
    checks = [_catalog_check(node, rc) for rc in raw_checks]
    for key, kind in (("taggedaddresses", dict), ("nodemeta", dict)):
        if folded.get(key) is not None and not isinstance(folded[key], kind):
            raise BadRequestError(f"{key} must be an object")
    reg = Register(
        Node=node,
        Address=address,
        ID=str(folded.get("id") or ""),
        Datacenter=str(folded.get("datacenter") or agent.config.datacenter),
        TaggedAddresses=folded.get("taggedaddresses") or {},
        NodeMeta=folded.get("nodemeta") or {},
        Service=svc,
        Checks=checks,
        SkipNodeUpdate=bool(folded.get("skipnodeupdate", False)),
    )
    return json_response(await agent.backend.write(reg))


@routes.put("/v1/catalog/deregister")
async def catalog_deregister(request: web.Request) -> web.Response:
    body = {k.lower(): v for k, v in (await json_body(request)).items()}
    require_local_datacenter(request, body.get("datacenter"))
    node = body.get("node")
    if not isinstance(node, str) or not node:
        raise BadRequestError("Must provide node")
    d = Deregister(
        Node=node,
        ServiceID=str(body.get("serviceid") or ""),
        CheckID=str(body.get("checkid") or ""),
    )
    return json_response(await _agent(request).backend.write(d))


# ---- catalog reads --------------------------------------------------------------------------


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    return json_response([_agent(request).config.datacenter])


@routes.get("/v1/catalog/services")
async def catalog_services(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(agent.backend, q.Services(), opts)
    value = res.value
    if opts.filter:  # Consul filters /catalog/services over ServiceNode rows
        value = {}
        for name in res.value:
            rows = (await agent.backend.read(q.ServiceNodes(Service=name))).value
            for r in filtered(opts, [service_node(x, agent.config.datacenter) for x in rows]):
                value.setdefault(name, set()).update(r["ServiceTags"])
        value = {k: sorted(v) for k, v in value.items()}
    return json_response(value, result=res)


def _from_peer(request: web.Request) -> bool:
    """`?peer=` asks for instances imported from a cluster peer; meshd has no peering, so no
    peer has any (Consul answers an unknown peer with an empty list, not this cluster's)."""
    return bool(request.query.get("peer"))


@routes.get("/v1/catalog/service/{name}")
async def catalog_service(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(
        agent.backend, q.ServiceNodes(Service=request.match_info["name"]), opts
    )
    tags = _tags(request)
    found = [] if _from_peer(request) else res.value
    rows = [service_node(r, agent.config.datacenter) for r in found if _has_tags(r, tags)]
    rows = await sort_near(request, filtered(opts, rows), _node_key)
    return json_response(rows, result=res)


@routes.get("/v1/catalog/connect/{name}")
async def catalog_connect(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(
        agent.backend, q.ServiceNodes(Service=request.match_info["name"], Connect=True), opts
    )
    rows = [service_node(r, agent.config.datacenter) for r in res.value]
    return json_response(filtered(opts, rows), result=res)


@routes.get("/v1/catalog/nodes")
async def catalog_nodes(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(agent.backend, q.Nodes(), opts)
    rows = [_with_dc(n, agent.config.datacenter) for n in res.value]
    rows = await sort_near(request, filtered(opts, rows), _node_key)
    return json_response(rows, result=res)


@routes.get("/v1/catalog/node/{node}")
async def catalog_node(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(agent.backend, q.NodeInfo(Node=request.match_info["node"]), opts)
    if res.value is None:
        return json_response(None, result=res)
    node, svcs, _ = res.value
    # Consul evaluates ?filter= against each entry of the Services map, not the whole answer.
    services = {s.ID: s for s in filtered(opts, list(svcs))}
    return json_response(
        {"Node": _with_dc(node, agent.config.datacenter), "Services": services}, result=res
    )


# ---- health ---------------------------------------------------------------------------------


async def _cached(agent: Agent, query: q.Query, opts: Any) -> ReadResult | None:
    """A client agent answers plain reads of a service from its watch-fed cache (DESIGN:
    no server round-trip per query); blocking and ?consistent reads still go to the servers."""
    if agent.server is not None or opts.index or opts.consistency == "consistent":
        return None  # a server reads its own store: nothing to save
    got = await agent.cache.fetch(query)
    if got is None:
        return None
    return ReadResult(got[0], got[1])


def _all_passing(row: CheckServiceNode) -> bool:
    return all(c.Status == HEALTH_PASSING for c in row.Checks)


@routes.get("/v1/health/service/{name}")
async def health_service(request: web.Request) -> web.Response:
    return await _health_rows(request, connect=False)


@routes.get("/v1/health/connect/{name}")
async def health_connect(request: web.Request) -> web.Response:
    return await _health_rows(request, connect=True)


async def _health_rows(request: web.Request, connect: bool) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    query = q.ServiceNodes(Service=request.match_info["name"], Connect=connect)
    res = await _cached(agent, query, opts) or await blocking_read(agent.backend, query, opts)
    tags = _tags(request)
    passing = flag(request, "passing")
    found = [] if _from_peer(request) else res.value
    rows = [r for r in found if _has_tags(r, tags) and (not passing or _all_passing(r))]
    if opts.filter:
        rows = filtered(opts, rows)
    rows = await sort_near(request, rows, lambda r: r.Node.Node)
    return json_response(rows, result=res)


@routes.get("/v1/health/checks/{service}")
async def health_checks(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(
        agent.backend, q.ServiceChecks(Service=request.match_info["service"]), opts
    )
    return json_response(filtered(opts, res.value), result=res)


@routes.get("/v1/health/node/{node}")
async def health_node(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    res = await blocking_read(agent.backend, q.NodeInfo(Node=request.match_info["node"]), opts)
    checks = res.value[2] if res.value else []
    return json_response(filtered(opts, checks), result=res)


@routes.get("/v1/health/state/{state}")
async def health_state(request: web.Request) -> web.Response:
    agent = _agent(request)
    state = request.match_info["state"]
    if state not in (*HEALTH_STATES, "any"):
        raise BadRequestError(
            f"Invalid state {state!r}: must be one of any, passing, warning, critical"
        )
    opts = query_options(request)
    res = await blocking_read(agent.backend, q.ChecksInState(State=state), opts)
    return json_response(filtered(opts, res.value), result=res)
