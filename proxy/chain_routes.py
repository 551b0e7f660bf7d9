"""Routes of a compiled discovery chain: the upstream listener's RDS route configuration.

A router node becomes one Envoy route per Consul route (its catch-all last), a splitter node a
route with weighted clusters, a resolver node a route to its target's cluster (or failover
group). Per route: path/header/query/method matches, prefix rewrite, request and idle timeouts,
the retry policy, header modifications and, as a meshd extension, Envoy's fault filter config.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2

from meshd.durations import parse_duration_seconds

from .chain_clusters import resolver_cluster
from .common import pack, seconds
from .snapshot import H2_PROTOCOLS, Upstream

FAULT_FILTER = "envoy.filters.http.fault"
_WEIGHT_SCALE = 100  # Consul's weights have two decimals; Envoy's are integers


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _string_matcher(spec: dict[str, Any]) -> string_pb2.StringMatcher | None:
    if "Exact" in spec:
        return string_pb2.StringMatcher(exact=spec["Exact"])
    if "Prefix" in spec:
        return string_pb2.StringMatcher(prefix=spec["Prefix"])
    if "Suffix" in spec:
        return string_pb2.StringMatcher(suffix=spec["Suffix"])
    if "Regex" in spec:
        return string_pb2.StringMatcher(safe_regex=_regex(spec["Regex"]))
    return None


def _header_matcher(spec: dict[str, Any]) -> rc.HeaderMatcher:
    m = rc.HeaderMatcher(name=spec["Name"], invert_match=bool(spec.get("Invert")))
    matcher = _string_matcher(spec)
    if matcher is not None:
        m.string_match.CopyFrom(matcher)
    else:
        m.present_match = True
    return m


def _query_matcher(spec: dict[str, Any]) -> rc.QueryParameterMatcher:
    m = rc.QueryParameterMatcher(name=spec["Name"])
    matcher = _string_matcher(spec)
    if matcher is not None:
        m.string_match.CopyFrom(matcher)
    else:
        m.present_match = True
    return m


def route_match(http: dict[str, Any]) -> rc.RouteMatch:
    m = rc.RouteMatch()
    if "PathExact" in http:
        m.path = http["PathExact"]
    elif "PathRegex" in http:
        m.safe_regex.CopyFrom(_regex(http["PathRegex"]))
    else:
        m.prefix = http.get("PathPrefix", "/")
    if http.get("CaseInsensitive"):
        m.case_sensitive.value = False
    m.headers.extend(_header_matcher(h) for h in http.get("Header", []))
    if http.get("Methods"):
        m.headers.append(
            rc.HeaderMatcher(
                name=":method",
                string_match=string_pb2.StringMatcher(safe_regex=_regex("|".join(http["Methods"]))),
            )
        )
    m.query_parameters.extend(_query_matcher(q) for q in http.get("QueryParam", []))
    return m


def _header_options(mods: dict[str, Any]) -> list[base_pb2.HeaderValueOption]:
    out = []
    for field, action in (
        ("Add", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
        ("Set", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
    ):
        for key, value in sorted((mods.get(field) or {}).items()):
            out.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, value=value), append_action=action
                )
            )
    return out


def _apply_headers(target: Any, spec: dict[str, Any]) -> None:
    """Request/response header modifications onto a Route or a ClusterWeight."""
    req, resp = spec.get("RequestHeaders") or {}, spec.get("ResponseHeaders") or {}
    target.request_headers_to_add.extend(_header_options(req))
    target.request_headers_to_remove.extend(req.get("Remove", []))
    target.response_headers_to_add.extend(_header_options(resp))
    target.response_headers_to_remove.extend(resp.get("Remove", []))


def retry_policy(dest: dict[str, Any]) -> rc.RetryPolicy | None:
    """Consul's makeRetryPolicy: the conditions joined, status codes via retriable-status-codes."""
    conditions: list[str] = []
    if dest.get("RetryOnConnectFailure"):
        conditions.append("connect-failure")
    if dest.get("RetryOnStatusCodes"):
        conditions.append("retriable-status-codes")
    conditions.extend(c for c in dest.get("RetryOn", []) if c not in conditions)
    if not conditions and not dest.get("NumRetries"):
        return None
    policy = rc.RetryPolicy(
        retry_on=",".join(conditions), retriable_status_codes=dest.get("RetryOnStatusCodes", [])
    )
    if dest.get("NumRetries"):
        policy.num_retries.value = int(dest["NumRetries"])
    return policy


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def fault_config(fault: dict[str, Any]) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if fault.get("Delay"):
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=seconds(parse_duration_seconds(fault["Delay"])),
                percentage=_percent(fault.get("DelayPercent", 100)),
            )
        )
    if fault.get("AbortStatus"):
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=int(fault["AbortStatus"]),
                percentage=_percent(fault.get("AbortPercent", 100)),
            )
        )
    return out


def _hash_policies(lb: dict[str, Any]) -> list[rc.RouteAction.HashPolicy]:
    out = []
    for hp in lb.get("HashPolicies", []):
        p = rc.RouteAction.HashPolicy(terminal=bool(hp.get("Terminal")))
        if hp.get("SourceIP"):
            p.connection_properties.source_ip = True
        elif hp.get("Field") == "header":
            p.header.header_name = hp["FieldValue"]
        elif hp.get("Field") == "query_parameter":
            p.query_parameter.name = hp["FieldValue"]
        else:
            cookie = hp.get("CookieConfig") or {}
            p.cookie.name = hp["FieldValue"]
            p.cookie.path = cookie.get("Path", "")
            if cookie.get("TTL"):
                p.cookie.ttl.CopyFrom(seconds(parse_duration_seconds(cookie["TTL"])))
        out.append(p)
    return out


def _action(chain: dict[str, Any], node_name: str) -> tuple[rc.RouteAction, str]:
    """The action towards a splitter or resolver node, and the resolver's RequestTimeout."""
    node = chain["Nodes"][node_name]
    if node["Type"] == "resolver":
        action = rc.RouteAction(cluster=resolver_cluster(chain, node))
        action.hash_policy.extend(_hash_policies(node.get("LoadBalancer") or {}))
        return action, node["Resolver"].get("RequestTimeout", "")
    weighted = rc.WeightedCluster()
    for split in node["Splits"]:
        weight = round(float(split["Weight"]) * _WEIGHT_SCALE)
        if weight <= 0:
            continue  # Envoy refuses zero weights; a 0% split simply receives nothing
        cw = rc.WeightedCluster.ClusterWeight(
            name=resolver_cluster(chain, chain["Nodes"][split["NextNode"]])
        )
        cw.weight.value = weight
        _apply_headers(cw, split)
        weighted.clusters.append(cw)
    return rc.RouteAction(weighted_clusters=weighted), ""


def _route(chain: dict[str, Any], definition: dict[str, Any], next_node: str) -> rc.Route:
    dest = definition.get("Destination") or {}
    action, resolver_timeout = _action(chain, next_node)
    if dest.get("PrefixRewrite"):
        action.prefix_rewrite = dest["PrefixRewrite"]
    timeout = dest.get("RequestTimeout") or resolver_timeout
    if timeout:
        action.timeout.CopyFrom(seconds(parse_duration_seconds(timeout)))
    elif chain.get("Protocol") in H2_PROTOCOLS:
        action.timeout.CopyFrom(seconds(0))  # streams are not cut at Envoy's 15 s default
    if dest.get("IdleTimeout"):
        action.idle_timeout.CopyFrom(seconds(parse_duration_seconds(dest["IdleTimeout"])))
    policy = retry_policy(dest)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    route = rc.Route(
        match=route_match((definition.get("Match") or {}).get("HTTP") or {}), route=action
    )
    _apply_headers(route, dest)
    if dest.get("Fault"):
        route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(fault_config(dest["Fault"])))
    return route


def chain_routes(chain: dict[str, Any]) -> list[rc.Route]:
    start = chain["StartNode"]
    node = chain["Nodes"][start]
    if node["Type"] == "router":
        return [_route(chain, r["Definition"], r["NextNode"]) for r in node["Routes"]]
    return [_route(chain, {}, start)]


def chain_route_config(name: str, up: Upstream) -> route_pb2.RouteConfiguration:
    vhost = rc.VirtualHost(name=name, domains=["*"], routes=chain_routes(up.chain or {}))
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[vhost])


def chain_has_faults(chain: dict[str, Any] | None) -> bool:
    """Whether the listener needs the fault filter (only then: it costs every request)."""
    for node in (chain or {}).get("Nodes", {}).values():
        for route in node.get("Routes", []):
            if (route["Definition"].get("Destination") or {}).get("Fault"):
                return True
    return False


def chain_tcp_cluster(up: Upstream) -> str:
    """A TCP chain has no router or splitter (the servers refuse them): one resolver node."""
    chain = up.chain or {}
    return resolver_cluster(chain, chain["Nodes"][chain["StartNode"]])
