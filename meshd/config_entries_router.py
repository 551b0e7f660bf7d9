"""`service-router` entries and service-defaults' `UpstreamConfig`: Consul's fields and rules.

Routes (matches on path, header, query parameter and method; destination with retries,
timeouts, header changes) follow Consul's `ServiceRouterConfigEntry.Validate` and its error
texts. `Destination.Fault` (Envoy's fault filter: abort and delay percentages) is a meshd
extension, documented as such: Consul refuses the field.
"""

from __future__ import annotations

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
    path_match,
)
from meshd.config_entries_l7 import (
    _TARGET_KEYS,
    ROUTER,
    _duration,
    _header_mods,
    _target,
    _uint,
)

__all__ = ["RETRY_ON", "normalize_router", "upstream_config"]

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


def normalize_router(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` is folded to canonical top-level keys with Kind/Name/Meta checked."""
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
    keys = (
        "PathExact",
        "PathPrefix",
        "PathRegex",
        "CaseInsensitive",
        "Header",
        "QueryParam",
        "Methods",
    )
    http = _fold(raw, keys, where)
    out = path_match(http, where)
    if _bool(http.get("CaseInsensitive"), f"{where}.CaseInsensitive"):
        if "PathRegex" in out:  # Envoy ignores it for regexes: a regex says (?i) itself
            raise ConfigEntryError(f"{where}.CaseInsensitive cannot be used with PathRegex")
        out["CaseInsensitive"] = True
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
