"""The discovery-chain config entries: `service-resolver`, `service-splitter`, `service-router`.

Schema and single-entry rules follow Consul's `structs.ServiceResolverConfigEntry.Validate` and
its router/splitter siblings, with their error texts. Rules that need other entries (a subset
named by a splitter exists, the protocol allows L7, no redirect loop) are the compiler's, in
`meshd.chain`, run by the servers against the state a write would produce.

Durations are stored as Go duration strings ("200ms", "5s"): that is what Consul answers with,
and what the CLI reads back. Fault injection (`Destination.Fault`) is a meshd extension.
"""

from __future__ import annotations

import math
import re
from typing import Any

from meshd.config_entries import (
    HTTP_METHODS,
    PROTOCOLS,
    ConfigEntryError,
    _bool,
    _fold,
    _header,
    _regex,
    _string,
)
from meshd.durations import DurationError, parse_duration_seconds
from meshd.filter import FilterError, compile_filter

__all__ = ["L7_KINDS", "L7_TOP_KEYS", "go_duration", "normalize_l7", "upstream_config"]

RESOLVER, SPLITTER, ROUTER = "service-resolver", "service-splitter", "service-router"
L7_KINDS = (RESOLVER, SPLITTER, ROUTER)
_COMMON = ("Kind", "Name", "Namespace", "Partition", "Meta", "CreateIndex", "ModifyIndex", "Hash")
L7_TOP_KEYS: dict[str, tuple[str, ...]] = {
    RESOLVER: (
        *_COMMON,
        "ConnectTimeout",
        "RequestTimeout",
        "DefaultSubset",
        "Subsets",
        "Redirect",
        "Failover",
        "LoadBalancer",
        "PrioritizeByLocality",
    ),
    SPLITTER: (*_COMMON, "Splits"),
    ROUTER: (*_COMMON, "Routes"),
}
LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
HASH_FIELDS = ("header", "cookie", "query_parameter")
# Envoy's retry_on conditions Consul accepts (structs.isValidRetryOn)
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
_SUBSET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_TARGET_KEYS = ("Service", "ServiceSubset", "Namespace", "Partition")
_HEADER_MOD_KEYS = ("Add", "Set", "Remove")
_UPSTREAM_KEYS = (
    "Name",
    "Namespace",
    "Partition",
    "Peer",
    "EnvoyListenerJSON",
    "EnvoyClusterJSON",
    "Protocol",
    "ConnectTimeoutMs",
    "Limits",
    "PassiveHealthCheck",
    "MeshGateway",
    "BalanceOutboundConnections",
)
_LIMIT_KEYS = ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests")
_PHC_KEYS = (
    "Interval",
    "MaxFailures",
    "EnforcingConsecutive5xx",
    "MaxEjectionPercent",
    "BaseEjectionTime",
)


def go_duration(seconds: float) -> str:
    """Go's `time.Duration.String()` for the whole-unit cases config entries use."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns % 1_000_000_000 == 0:
        s = ns // 1_000_000_000
        h, rest = divmod(s, 3600)
        m, sec = divmod(rest, 60)
        text = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{sec}s"
        return text
    if ns % 1_000_000 == 0:
        return f"{ns // 1_000_000}ms"
    if ns % 1000 == 0:
        return f"{ns // 1000}us"
    return f"{ns}ns"


def _duration(value: Any, field: str) -> str:
    if value in (None, "", 0):
        return ""
    try:
        return go_duration(parse_duration_seconds(value))
    except DurationError as e:
        raise ConfigEntryError(f"Bad {field} '{value}': {e}") from None


def _uint(value: Any, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigEntryError(f"{field} must be a non-negative integer")
    return value


def _target(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Service/ServiceSubset/Namespace/Partition of a split, route or redirect destination."""
    out: dict[str, Any] = {}
    for field in ("Datacenter", "Peer"):
        if _string(raw.get(field), f"{where}.{field}"):
            raise ConfigEntryError(
                f"{where}.{field}: other datacenters and peers are not supported by meshd"
            )
    for field in _TARGET_KEYS:
        value = _string(raw.get(field), f"{where}.{field}")
        if field in ("Namespace", "Partition"):
            if value not in ("", "default"):
                raise ConfigEntryError(
                    f"{where}.{field}: only 'default' is supported, got {value!r}"
                )
            continue
        if value:
            out[field] = value
    return out


def _header_mods(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    mods = _fold(raw, _HEADER_MOD_KEYS, where)
    out: dict[str, Any] = {}
    for field in ("Add", "Set"):
        value = mods.get(field) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigEntryError(f"{where}.{field} must be a map of strings to strings")
        if value:
            out[field] = dict(value)
    remove = mods.get("Remove") or []
    if not isinstance(remove, list) or not all(isinstance(h, str) for h in remove):
        raise ConfigEntryError(f"{where}.Remove must be a list of strings")
    if remove:
        out["Remove"] = list(remove)
    return out or None


def normalize_l7(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` is already folded to canonical top-level keys with Kind/Name/Meta checked."""
    kind = entry["Kind"]
    if kind == RESOLVER:
        return _resolver(entry)
    if kind == SPLITTER:
        return _splitter(entry)
    return _router(entry)


# ---- service-resolver -------------------------------------------------------------------------


def _resolver(entry: dict[str, Any]) -> dict[str, Any]:
    name = entry["Name"]
    out: dict[str, Any] = {"Kind": RESOLVER, "Name": name, "Meta": entry["Meta"]}
    for field in ("ConnectTimeout", "RequestTimeout"):
        value = _duration(entry.get(field), field)
        if value:
            out[field] = value
    subsets_raw = entry.get("Subsets") or {}
    if not isinstance(subsets_raw, dict):
        raise ConfigEntryError("Subsets must be a map of subset names to definitions")
    subsets: dict[str, Any] = {}
    for sname, sdef in subsets_raw.items():
        if not isinstance(sname, str) or not _SUBSET_NAME.match(sname):
            raise ConfigEntryError(f"Subset {sname!r} is invalid: must be a valid DNS label")
        subsets[sname] = _subset(sdef, f"Subsets[{sname}]")
    if subsets:
        out["Subsets"] = subsets
    default = _string(entry.get("DefaultSubset"), "DefaultSubset")
    if default:
        if default not in subsets:
            raise ConfigEntryError(f"DefaultSubset {default!r} is not a valid subset")
        out["DefaultSubset"] = default
    if entry.get("Redirect") is not None:
        redirect = _target(
            _fold(entry["Redirect"], (*_TARGET_KEYS, "Datacenter"), "Redirect"), "Redirect"
        )
        if not redirect:
            raise ConfigEntryError("Redirect is empty")
        if "ServiceSubset" in redirect and "Service" not in redirect:
            raise ConfigEntryError("Redirect.ServiceSubset defined without Redirect.Service")
        for other in ("Subsets", "DefaultSubset"):
            if other in out:
                raise ConfigEntryError(f"Redirect and {other} cannot both be set")
        if redirect.get("Service", name) == name and "ServiceSubset" not in redirect:
            raise ConfigEntryError("Redirect cannot point to the resolver's own service")
        out["Redirect"] = redirect
    failover = entry.get("Failover") or {}
    if not isinstance(failover, dict):
        raise ConfigEntryError("Failover must be a map of subset names to definitions")
    if failover and "Redirect" in out:
        raise ConfigEntryError("Redirect and Failover cannot both be set")
    if failover:
        out["Failover"] = {
            key: _failover(key, value, name, subsets) for key, value in failover.items()
        }
    if entry.get("LoadBalancer") is not None:
        lb = _load_balancer(entry["LoadBalancer"])
        if lb:
            out["LoadBalancer"] = lb
    return out


def _subset(raw: Any, where: str) -> dict[str, Any]:
    sdef = _fold(raw if raw is not None else {}, ("Filter", "OnlyPassing"), where)
    flt = _string(sdef.get("Filter"), f"{where}.Filter")
    try:
        compile_filter(flt)
    except FilterError as e:
        raise ConfigEntryError(f"{where}.Filter: bad filter expression: {e}") from None
    out: dict[str, Any] = {"Filter": flt}
    if _bool(sdef.get("OnlyPassing"), f"{where}.OnlyPassing"):
        out["OnlyPassing"] = True
    return out


def _failover(key: Any, raw: Any, name: str, subsets: dict[str, Any]) -> dict[str, Any]:
    where = f"Failover[{key}]"
    if key != "*" and key not in subsets:
        raise ConfigEntryError(f"Bad Failover[{key!r}]: not a valid subset")
    fo = _fold(raw, (*_TARGET_KEYS, "Datacenters", "Targets"), where)
    out = _target(fo, where)
    targets = fo.get("Targets") or []
    if not isinstance(targets, list):
        raise ConfigEntryError(f"{where}.Targets must be a list")
    if targets:
        if out:
            raise ConfigEntryError(
                f"Bad Failover[{key!r}]: Targets cannot be set with Service or ServiceSubset"
            )
        out["Targets"] = [
            _target(
                _fold(t, (*_TARGET_KEYS, "Datacenter", "Peer"), f"{where}.Targets[{i}]"),
                f"{where}.Targets[{i}]",
            )
            for i, t in enumerate(targets)
        ]
    datacenters = fo.get("Datacenters") or []
    if datacenters:
        raise ConfigEntryError(
            f"{where}.Datacenters: failover to other datacenters is not supported by meshd"
        )
    if not out:
        raise ConfigEntryError(
            f"Bad Failover[{key!r}]: one of Service, ServiceSubset, Targets, or Datacenters "
            "is required"
        )
    subset = out.get("ServiceSubset")
    if subset and out.get("Service", name) == name and subset not in subsets:
        raise ConfigEntryError(
            f"Bad Failover[{key!r}].ServiceSubset {subset!r} is not a valid subset of {name!r}"
        )
    return out


def _load_balancer(raw: Any) -> dict[str, Any]:
    lb = _fold(
        raw, ("Policy", "LeastRequestConfig", "RingHashConfig", "HashPolicies"), "LoadBalancer"
    )
    policy = _string(lb.get("Policy"), "LoadBalancer.Policy")
    if policy not in LB_POLICIES:
        raise ConfigEntryError(f"Bad LoadBalancer policy: {policy!r} is not supported")
    out: dict[str, Any] = {"Policy": policy} if policy else {}
    if lb.get("LeastRequestConfig") is not None:
        if policy != "least_request":
            raise ConfigEntryError(
                f"LeastRequestConfig specified for incompatible load balancing policy {policy!r}"
            )
        cfg = _fold(lb["LeastRequestConfig"], ("ChoiceCount",), "LoadBalancer.LeastRequestConfig")
        out["LeastRequestConfig"] = {
            "ChoiceCount": _uint(cfg.get("ChoiceCount"), "LeastRequestConfig.ChoiceCount")
        }
    hashing = policy in ("ring_hash", "maglev")
    if lb.get("RingHashConfig") is not None:
        if policy != "ring_hash":
            raise ConfigEntryError(
                f"RingHashConfig specified for incompatible load balancing policy {policy!r}"
            )
        cfg = _fold(
            lb["RingHashConfig"],
            ("MinimumRingSize", "MaximumRingSize"),
            "LoadBalancer.RingHashConfig",
        )
        out["RingHashConfig"] = {k: _uint(cfg.get(k), f"RingHashConfig.{k}") for k in cfg}
    policies = lb.get("HashPolicies") or []
    if not isinstance(policies, list):
        raise ConfigEntryError("LoadBalancer.HashPolicies must be a list")
    if policies and not hashing:
        raise ConfigEntryError(f"HashPolicies specified for non-hash-based Policy: {policy!r}")
    if policies:
        out["HashPolicies"] = [_hash_policy(p, i) for i, p in enumerate(policies)]
    return out


def _hash_policy(raw: Any, i: int) -> dict[str, Any]:
    where = f"LoadBalancer.HashPolicies[{i}]"
    hp = _fold(raw, ("Field", "FieldValue", "CookieConfig", "SourceIP", "Terminal"), where)
    field = _string(hp.get("Field"), f"{where}.Field")
    value = _string(hp.get("FieldValue"), f"{where}.FieldValue")
    source_ip = _bool(hp.get("SourceIP"), f"{where}.SourceIP")
    if field and field not in HASH_FIELDS:
        raise ConfigEntryError(
            f"{where}: Field {field!r} is not supported; expected one of {', '.join(HASH_FIELDS)}"
        )
    if field and source_ip:
        raise ConfigEntryError(
            f"{where}: A single hash policy cannot hash both a field and a source IP"
        )
    if field and not value:
        raise ConfigEntryError(f"{where}: Field {field!r} was specified without a FieldValue")
    if value and not field:
        raise ConfigEntryError(f"{where}: FieldValue requires a Field to apply to")
    if not field and not source_ip:
        raise ConfigEntryError(f"{where}: one of Field or SourceIP is required")
    out: dict[str, Any] = {}
    if field:
        out.update(Field=field, FieldValue=value)
    if source_ip:
        out["SourceIP"] = True
    if hp.get("CookieConfig") is not None:
        if field != "cookie":
            raise ConfigEntryError(f"{where}: cookie_config provided for {field!r}")
        cc = _fold(hp["CookieConfig"], ("Session", "TTL", "Path"), f"{where}.CookieConfig")
        cookie: dict[str, Any] = {}
        if _bool(cc.get("Session"), f"{where}.CookieConfig.Session"):
            cookie["Session"] = True
        ttl = _duration(cc.get("TTL"), f"{where}.CookieConfig.TTL")
        if ttl:
            if cookie.get("Session"):
                raise ConfigEntryError(f"{where}: a session cookie cannot have an associated TTL")
            cookie["TTL"] = ttl
        path = _string(cc.get("Path"), f"{where}.CookieConfig.Path")
        if path:
            cookie["Path"] = path
        out["CookieConfig"] = cookie
    if _bool(hp.get("Terminal"), f"{where}.Terminal"):
        out["Terminal"] = True
    return out


# ---- service-splitter -------------------------------------------------------------------------


def _splitter(entry: dict[str, Any]) -> dict[str, Any]:
    splits = entry.get("Splits")
    if not isinstance(splits, list) or not splits:
        raise ConfigEntryError("no splits configured")
    out_splits = []
    seen: set[tuple[str, str]] = set()
    total = 0
    for i, raw in enumerate(splits):
        where = f"Splits[{i}]"
        split = _fold(raw, ("Weight", *_TARGET_KEYS, "RequestHeaders", "ResponseHeaders"), where)
        weight = split.get("Weight", 0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigEntryError(f"{where}.Weight must be a number between 0 and 100")
        scaled = round(float(weight) * 100)  # Consul keeps two decimals of precision
        total += scaled
        out = {"Weight": scaled / 100, **_target(split, where)}
        key = (out.get("Service", entry["Name"]), out.get("ServiceSubset", ""))
        if key in seen:
            raise ConfigEntryError(f"split destination occurs more than once: {where}")
        seen.add(key)
        for field in ("RequestHeaders", "ResponseHeaders"):
            mods = _header_mods(split.get(field), f"{where}.{field}")
            if mods:
                out[field] = mods
        out_splits.append(out)
    if total != 10000:
        raise ConfigEntryError(f"the sum of all split weights must be 100, not {total / 100:.2f}")
    return {"Kind": SPLITTER, "Name": entry["Name"], "Meta": entry["Meta"], "Splits": out_splits}


# ---- service-router ---------------------------------------------------------------------------

_DEST_KEYS = (
    *_TARGET_KEYS,
    "PrefixRewrite",
    "RequestTimeout",
    "IdleTimeout",
    "NumRetries",
    "RetryOnConnectFailure",
    "RetryOn",
    "RetryOnStatusCodes",
    "RequestHeaders",
    "ResponseHeaders",
    "Fault",
)


def _router(entry: dict[str, Any]) -> dict[str, Any]:
    routes = entry.get("Routes") or []
    if not isinstance(routes, list):
        raise ConfigEntryError("Routes must be a list")
    out = [_route(r, f"Route[{i}]") for i, r in enumerate(routes)]
    return {"Kind": ROUTER, "Name": entry["Name"], "Meta": entry["Meta"], "Routes": out}


def _route(raw: Any, where: str) -> dict[str, Any]:
    route = _fold(raw, ("Match", "Destination"), where)
    out: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if route.get("Match") is not None:
        match = _fold(route["Match"], ("HTTP",), f"{where}.Match")
        if match.get("HTTP") is not None:
            http = _route_http(match["HTTP"], f"{where}.Match.HTTP")
    if http:
        out["Match"] = {"HTTP": http}
    dest = _destination(route.get("Destination") or {}, f"{where}.Destination")
    if dest.get("PrefixRewrite") and not ("PathPrefix" in http or "PathExact" in http):
        raise ConfigEntryError(
            f"{where} cannot make use of PrefixRewrite without configuring either PathExact "
            "or PathPrefix"
        )
    out["Destination"] = dest
    return out


def _route_http(raw: Any, where: str) -> dict[str, Any]:
    keys = ("PathExact", "PathPrefix", "PathRegex", "Header", "QueryParam", "Methods")
    http = _fold(raw, keys, where)
    out: dict[str, Any] = {}
    for field in ("PathExact", "PathPrefix", "PathRegex"):
        value = _string(http.get(field), f"{where}.{field}")
        if not value:
            continue
        if field == "PathRegex":
            _regex(value, f"{where}.PathRegex")
        elif not value.startswith("/"):
            raise ConfigEntryError(f"{where}.{field} doesn't start with '/': {value!r}")
        out[field] = value
    if len(out) > 1:
        raise ConfigEntryError(
            f"{where} should only contain at most one of PathExact, PathPrefix, or PathRegex"
        )
    for field, check in (("Header", _header), ("QueryParam", _query_param)):
        items = http.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ConfigEntryError(f"{where}.{field} must be a list")
        if items:
            out[field] = [check(h, f"{where}.{field}[{k}]") for k, h in enumerate(items)]
    methods = http.get("Methods")
    if methods:
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ConfigEntryError(f"{where}.Methods must be a list of strings")
        upper = [m.upper() for m in methods]
        for m in upper:
            if m not in HTTP_METHODS:
                raise ConfigEntryError(f"{where}.Methods contains an invalid method {m!r}")
            if upper.count(m) > 1:
                raise ConfigEntryError(f"{where}.Methods contains {m!r} more than once")
        out["Methods"] = upper
    return out


def _query_param(raw: Any, where: str) -> dict[str, Any]:
    qp = _fold(raw, ("Name", "Present", "Exact", "Regex"), where)
    name = _string(qp.get("Name"), f"{where}.Name")
    if not name:
        raise ConfigEntryError(f"{where} missing required Name field")
    out: dict[str, Any] = {"Name": name}
    if _bool(qp.get("Present"), f"{where}.Present"):
        out["Present"] = True
    for field in ("Exact", "Regex"):
        value = _string(qp.get(field), f"{where}.{field}")
        if value:
            out[field] = value
    if sum(1 for f in ("Present", "Exact", "Regex") if f in out) > 1:
        raise ConfigEntryError(f"{where} should only contain one of Present, Exact, or Regex")
    if "Regex" in out:
        _regex(out["Regex"], f"{where}.Regex")
    return out


def _destination(raw: Any, where: str) -> dict[str, Any]:
    dest = _fold(raw, _DEST_KEYS, where)
    out = _target(dest, where)
    rewrite = _string(dest.get("PrefixRewrite"), f"{where}.PrefixRewrite")
    if rewrite:
        out["PrefixRewrite"] = rewrite
    for field in ("RequestTimeout", "IdleTimeout"):
        value = _duration(dest.get(field), f"{where}.{field}")
        if value:
            out[field] = value
    retries = _uint(dest.get("NumRetries"), f"{where}.NumRetries")
    if retries:
        out["NumRetries"] = retries
    if _bool(dest.get("RetryOnConnectFailure"), f"{where}.RetryOnConnectFailure"):
        out["RetryOnConnectFailure"] = True
    retry_on = dest.get("RetryOn") or []
    if not isinstance(retry_on, list) or not all(isinstance(r, str) for r in retry_on):
        raise ConfigEntryError(f"{where}.RetryOn must be a list of strings")
    for r in retry_on:
        if r not in RETRY_ON:
            raise ConfigEntryError(f"{where}.RetryOn contains an invalid retry condition: {r!r}")
    if retry_on:
        out["RetryOn"] = list(retry_on)
    codes = dest.get("RetryOnStatusCodes") or []
    if not isinstance(codes, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes
    ):
        raise ConfigEntryError(f"{where}.RetryOnStatusCodes must be a list of HTTP status codes")
    if codes:
        out["RetryOnStatusCodes"] = list(codes)
    for field in ("RequestHeaders", "ResponseHeaders"):
        mods = _header_mods(dest.get(field), f"{where}.{field}")
        if mods:
            out[field] = mods
    if dest.get("Fault") is not None:
        fault = _fault(dest["Fault"], f"{where}.Fault")
        if fault:
            out["Fault"] = fault
    return out


def _percent(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ConfigEntryError(f"{field} must be a percentage between 0 and 100")
    return float(value)


def _fault(raw: Any, where: str) -> dict[str, Any]:
    """meshd extension: Envoy's HTTP fault filter per route (delay and/or abort)."""
    fault = _fold(raw, ("Delay", "DelayPercent", "AbortStatus", "AbortPercent"), where)
    out: dict[str, Any] = {}
    delay = _duration(fault.get("Delay"), f"{where}.Delay")
    if delay:
        out["Delay"] = delay
        out["DelayPercent"] = _percent(fault.get("DelayPercent", 100), f"{where}.DelayPercent")
    status = _uint(fault.get("AbortStatus"), f"{where}.AbortStatus")
    if status:
        if not 200 <= status <= 599:
            raise ConfigEntryError(f"{where}.AbortStatus must be an HTTP status code (200-599)")
        out["AbortStatus"] = status
        out["AbortPercent"] = _percent(fault.get("AbortPercent", 100), f"{where}.AbortPercent")
    elif fault.get("AbortPercent") is not None:
        raise ConfigEntryError(f"{where}.AbortPercent requires AbortStatus")
    return out


# ---- service-defaults UpstreamConfig ----------------------------------------------------------


def upstream_config(raw: Any) -> dict[str, Any]:
    """`UpstreamConfig` of service-defaults: `Defaults` for every upstream of the service and
    per-upstream `Overrides`; Limits and PassiveHealthCheck become circuit breakers and outlier
    detection on the upstream's clusters."""
    uc = _fold(raw, ("Defaults", "Overrides"), "UpstreamConfig")
    out: dict[str, Any] = {}
    if uc.get("Defaults") is not None:
        out["Defaults"] = _upstream(uc["Defaults"], "UpstreamConfig.Defaults", named=False)
    overrides = uc.get("Overrides") or []
    if not isinstance(overrides, list):
        raise ConfigEntryError("UpstreamConfig.Overrides must be a list")
    if overrides:
        out["Overrides"] = [
            _upstream(o, f"UpstreamConfig.Overrides[{i}]", named=True)
            for i, o in enumerate(overrides)
        ]
    return out


def _upstream(raw: Any, where: str, *, named: bool) -> dict[str, Any]:
    up = _fold(raw, _UPSTREAM_KEYS, where)
    out: dict[str, Any] = {}
    name = _string(up.get("Name"), f"{where}.Name")
    if named and not name:
        raise ConfigEntryError(f"{where}.Name is required")
    if not named and name:
        raise ConfigEntryError(f"{where}.Name must be unset for Defaults")
    if name:
        out["Name"] = name
    for field in ("EnvoyListenerJSON", "EnvoyClusterJSON", "Peer"):
        if up.get(field):
            raise ConfigEntryError(f"{where}.{field}: not supported by meshd")
    protocol = _string(up.get("Protocol"), f"{where}.Protocol")
    if protocol and protocol not in PROTOCOLS:
        raise ConfigEntryError(
            f"{where}.Protocol: invalid protocol {protocol!r}; expected one of "
            f"{', '.join(PROTOCOLS)}"
        )
    if protocol:
        out["Protocol"] = protocol
    if up.get("ConnectTimeoutMs") is not None:
        out["ConnectTimeoutMs"] = _uint(up["ConnectTimeoutMs"], f"{where}.ConnectTimeoutMs")
    if up.get("Limits") is not None:
        limits = _fold(up["Limits"], _LIMIT_KEYS, f"{where}.Limits")
        out["Limits"] = {
            k: _uint(v, f"{where}.Limits.{k}") for k, v in limits.items() if v is not None
        }
    if up.get("PassiveHealthCheck") is not None:
        phc = _fold(up["PassiveHealthCheck"], _PHC_KEYS, f"{where}.PassiveHealthCheck")
        checked: dict[str, Any] = {}
        for k, v in phc.items():
            if v is None:
                continue
            if k in ("Interval", "BaseEjectionTime"):
                checked[k] = _duration(v, f"{where}.PassiveHealthCheck.{k}")
            else:
                checked[k] = _uint(v, f"{where}.PassiveHealthCheck.{k}")
        if checked.get("MaxEjectionPercent", 0) > 100:
            raise ConfigEntryError(f"{where}.PassiveHealthCheck.MaxEjectionPercent must be <= 100")
        out["PassiveHealthCheck"] = checked
    for field in ("MeshGateway", "BalanceOutboundConnections", "Namespace", "Partition"):
        if up.get(field) not in (None, "", {}):
            out[field] = up[field]
    return out
