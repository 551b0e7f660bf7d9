"""`/v1/connect/*`, `/v1/config*` and the agent's leaf/authorize endpoints (Consul's paths)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

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
    query_uint,
)
from meshd.chain import ChainError, compile_chain
from meshd.config_entries import KINDS, PROTOCOLS, ConfigEntryError, normalize_entry
from meshd.config_entries_l7 import go_duration
from meshd.durations import DurationError, parse_duration_seconds
from meshd.intentions import check, flatten, match
from meshd.structs import ConfigEntryOp, IntentionOp

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
INTENTIONS = "service-intentions"


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadRequestError(f"invalid config entry kind: {kind}")
    return kind


async def _entries(agent: Agent, kind: str = "", name: str = "") -> list[dict[str, Any]]:
    return (await agent.backend.read(q.ConfigEntries(Kind=kind, Name=name))).value


async def _put_entry(agent: Agent, raw: dict[str, Any], cas: int = -1) -> bool:
    try:
        entry = normalize_entry(raw)
    except ConfigEntryError as e:
        raise BadRequestError(str(e)) from None
    return bool(
        await agent.backend.write(
            ConfigEntryOp(
                Op="set", Kind=entry["Kind"], Name=entry["Name"], Entry=entry, CASIndex=cas
            )
        )
    )


# ---- config entries -------------------------------------------------------------------------


@routes.put("/v1/config")
async def config_write(request: web.Request) -> web.Response:
    body = await json_body(request)
    cas = query_uint(request, "cas")
    cas_index = -1 if cas is None else cas
    return json_response(await _put_entry(_agent(request), body, cas_index))


@routes.get("/v1/config/{kind}")
async def config_list(request: web.Request) -> web.Response:
    kind = _kind(request.match_info["kind"])
    res = await blocking_read(
        _agent(request).backend, q.ConfigEntries(Kind=kind), query_options(request)
    )
    return json_response(res.value, result=res)


@routes.get("/v1/config/{kind}/{name}")
async def config_get(request: web.Request) -> web.Response:
    kind, name = _kind(request.match_info["kind"]), request.match_info["name"]
    res = await blocking_read(
        _agent(request).backend, q.ConfigEntries(Kind=kind, Name=name), query_options(request)
    )
    if not res.value:
        raise NotFoundError(f"Config entry not found for {kind!r} / {name!r}")
    return json_response(res.value[0], result=res)


@routes.delete("/v1/config/{kind}/{name}")
async def config_delete(request: web.Request) -> web.Response:
    kind, name = _kind(request.match_info["kind"]), request.match_info["name"]
    cas = query_uint(request, "cas")
    op = ConfigEntryOp(Op="delete", Kind=kind, Name=name, CASIndex=-1 if cas is None else cas)
    return json_response(bool(await _agent(request).backend.write(op)))


_OVERRIDES = {"OverrideProtocol": "Protocol", "OverrideConnectTimeout": "ConnectTimeout"}


async def _chain_overrides(request: web.Request) -> dict[str, str]:
    """POST carries Consul's override parameters; OverrideMeshGateway has nothing to act on
    here (meshd has no mesh gateways) and is accepted and ignored."""
    body = await json_body(request, kind=None) if request.method == "POST" else None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequestError("Request decode failed: the body must be a JSON object")
    out: dict[str, str] = {}
    for key, value in body.items():
        if key == "OverrideMeshGateway":
            continue
        if key not in _OVERRIDES:
            raise BadRequestError(f"Request decode failed: unknown field {key!r}")
        if not isinstance(value, str):
            raise BadRequestError(f"Request decode failed: {key} must be a string")
        if value:
            out[_OVERRIDES[key]] = value
    if "ConnectTimeout" in out:
        try:
            out["ConnectTimeout"] = go_duration(parse_duration_seconds(out["ConnectTimeout"]))
        except DurationError as e:
            raise BadRequestError(f"OverrideConnectTimeout: {e}") from None
    if out.get("Protocol", "tcp") not in PROTOCOLS:
        raise BadRequestError(f"OverrideProtocol: unknown protocol {out['Protocol']!r}")
    return out


@routes.get("/v1/discovery-chain/{service}")
@routes.post("/v1/discovery-chain/{service}")
async def discovery_chain(request: web.Request) -> web.Response:
    """Consul's compiled chain for `service`; blocks on any config entry (the chain reads
    entries of several kinds and services)."""
    agent = _agent(request)
    overrides = await _chain_overrides(request)
    res = await blocking_read(agent.backend, q.ConfigEntries(), query_options(request))
    entries = {(e["Kind"], e["Name"]): e for e in res.value}
    roots = (await agent.backend.read(q.CARoots())).value or {}
    dc = request.query.get("compile-dc") or agent.config.datacenter
    try:
        chain = compile_chain(
            request.match_info["service"],
            lambda kind, name: entries.get((kind, name)),
            datacenter=dc,
            trust_domain=roots.get("TrustDomain", ""),
            overrides=overrides,
        )
    except ChainError as e:
        raise BadRequestError(str(e)) from None
    return json_response({"Chain": chain}, result=res)


# ---- intentions -----------------------------------------------------------------------------


def _pair(request: web.Request) -> tuple[str, str]:
    src, dst = request.query.get("source", ""), request.query.get("destination", "")
    if not src or not dst:
        raise BadRequestError("required query parameters 'source' and 'destination' are missing")
    return src, dst


async def _upsert_source(
    agent: Agent, src: str, dst: str, source: dict[str, Any] | None, *, replace: bool = True
) -> Any:
    """Change one source of a destination's service-intentions entry: one server-side step.

    The intentions API keeps Meta per source (Consul's LegacyMeta). Returns the intention's ID
    for an upsert."""
    if source is None:
        op = IntentionOp(Op="delete", Destination=dst, Source=src)
    else:
        fields = {k: v for k, v in source.items() if k != "Meta"}
        fields["LegacyMeta"] = source.get("Meta") or {}
        op = IntentionOp(
            Op="upsert", Destination=dst, Source=src, Fields=fields, MustNotExist=not replace
        )
    return await agent.backend.write(op)  # the backend runs the servers' rules first


def _source_body(body: dict[str, Any]) -> dict[str, Any]:
    allowed = {"Action", "Description", "Meta", "Permissions"}
    out = {k: v for k, v in body.items() if k in allowed and v not in (None, "")}
    unknown = (
        set(body)
        - allowed
        - {
            "SourceName",
            "DestinationName",
            "SourceNS",
            "DestinationNS",
            "SourceType",
            "SourcePartition",
            "DestinationPartition",
        }
    )
    if unknown:
        raise BadRequestError(f"unknown intention field {sorted(unknown)[0]!r}")
    return out


@routes.put("/v1/connect/intentions/exact")
async def intention_put(request: web.Request) -> web.Response:
    src, dst = _pair(request)
    body = await json_body(request)
    await _upsert_source(_agent(request), src, dst, _source_body(body))
    return json_response(True)


@routes.post("/v1/connect/intentions")
async def intention_create(request: web.Request) -> web.Response:
    body = await json_body(request)
    src, dst = body.get("SourceName", ""), body.get("DestinationName", "")
    if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
        raise BadRequestError("SourceName and DestinationName are required")
    ixn_id = await _upsert_source(_agent(request), src, dst, _source_body(body), replace=False)
    return json_response({"ID": ixn_id})


@routes.get("/v1/connect/intentions/exact")
async def intention_get(request: web.Request) -> web.Response:
    src, dst = _pair(request)
    for ixn in flatten(await _entries(_agent(request), INTENTIONS, dst)):
        if ixn.SourceName == src:
            return json_response(ixn.to_api())
    raise NotFoundError("Intention not found")


@routes.delete("/v1/connect/intentions/exact")
async def intention_delete(request: web.Request) -> web.Response:
    src, dst = _pair(request)
    return json_response(bool(await _upsert_source(_agent(request), src, dst, None)))


@routes.get("/v1/connect/intentions")
async def intention_list(request: web.Request) -> web.Response:
    agent = _agent(request)
    res = await blocking_read(
        agent.backend, q.ConfigEntries(Kind=INTENTIONS), query_options(request)
    )
    return json_response([i.to_api() for i in flatten(res.value)], result=res)


@routes.get("/v1/connect/intentions/match")
async def intention_match(request: web.Request) -> web.Response:
    by_raw = request.query.get("by", "")
    names = request.query.getall("name", [])
    if by_raw not in ("source", "destination"):
        raise BadRequestError("'by' must be 'source' or 'destination'")
    by: Literal["source", "destination"] = "source" if by_raw == "source" else "destination"
    if not names:
        raise BadRequestError("required query parameter 'name' not set")
    ixns = flatten(await _entries(_agent(request), INTENTIONS))
    return json_response({n: [i.to_api() for i in match(ixns, by=by, name=n)] for n in names})


def default_allow(agent: Agent) -> bool:
    return agent.config.default_intention_policy == "allow"


@routes.get("/v1/connect/intentions/check")
async def intention_check(request: web.Request) -> web.Response:
    src, dst = _pair(request)
    agent = _agent(request)
    ixns = flatten(await _entries(agent, INTENTIONS))
    return json_response({"Allowed": check(ixns, src, dst, default_allow(agent)).allowed})


# ---- CA -------------------------------------------------------------------------------------


@routes.get("/v1/connect/ca/roots")
async def ca_roots(request: web.Request) -> web.Response:
    res = await blocking_read(_agent(request).backend, q.CARoots(), query_options(request))
    v = res.value
    return json_response(
        {"ActiveRootID": v["ActiveRootID"], "TrustDomain": v["TrustDomain"], "Roots": v["Roots"]},
        result=res,
    )


@routes.get("/v1/connect/ca/configuration")
async def ca_config_get(request: web.Request) -> web.Response:
    res = await _agent(request).backend.read(q.CARoots())
    return json_response(
        {
            "Provider": "consul",
            "Config": res.value["Config"],
            "CreateIndex": res.index,
            "ModifyIndex": res.index,
        }
    )


@routes.put("/v1/connect/ca/configuration")
async def ca_config_put(request: web.Request) -> web.Response:
    body = await json_body(request)
    provider = body.get("Provider", "consul")
    if provider != "consul":
        raise BadRequestError(f"unsupported CA provider {provider!r}: only 'consul' (built-in)")
    config = body.get("Config") or {}
    if not isinstance(config, dict):
        raise BadRequestError("Config must be an object")
    force = bool(body.get("ForceRotateRoot", False) or config.pop("RotateRoot", False))
    await _agent(request).backend.set_ca_config(config, force)
    return web.Response(status=200)


# ---- agent-local connect endpoints ----------------------------------------------------------


@routes.get("/v1/agent/connect/ca/leaf/{service}")
async def agent_leaf(request: web.Request) -> web.Response:
    agent = _agent(request)
    opts = query_options(request)
    service = request.match_info["service"]
    leaves = agent.mesh.leaves
    leaf = await (
        leaves.wait_change(service, opts.index, opts.wait) if opts.index else leaves.get(service)
    )
    body = {
        "SerialNumber": leaf.serial,
        "CertPEM": leaf.cert_pem,
        "PrivateKeyPEM": leaf.key_pem,
        "Service": service,
        "ServiceURI": leaf.spiffe_id,
        "ValidAfter": leaf.valid_after.isoformat(),
        "ValidBefore": leaf.valid_before.isoformat(),
        "CreateIndex": leaf.index,
        "ModifyIndex": leaf.index,
    }
    resp = json_response(body)
    resp.headers["X-Consul-Index"] = str(leaf.index)
    return resp


@routes.post("/v1/agent/connect/authorize")
async def agent_authorize(request: web.Request) -> web.Response:
    body = await json_body(request)
    target, uri = body.get("Target", ""), body.get("ClientCertURI", "")
    if not target or not uri:
        raise BadRequestError("Target and ClientCertURI are required")
    if not isinstance(target, str) or not isinstance(uri, str):
        raise BadRequestError("Target and ClientCertURI must be strings")
    from meshd.spiffe import parse_service_id

    try:
        caller = parse_service_id(uri)
    except ValueError as e:
        return json_response({"Authorized": False, "Reason": f"invalid client cert URI: {e}"})
    agent = _agent(request)
    roots = (await agent.backend.read(q.CARoots())).value
    if caller.trust_domain != roots["TrustDomain"]:
        return json_response(
            {"Authorized": False, "Reason": "client certificate is from another trust domain"}
        )
    ixns = flatten(await _entries(agent, INTENTIONS))
    d = check(ixns, caller.service, target, default_allow(agent))
    return json_response({"Authorized": d.allowed, "Reason": d.reason})
