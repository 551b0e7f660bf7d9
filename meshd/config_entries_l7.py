"""The discovery-chain config entries `service-resolver` and `service-splitter`, and the helpers
`meshd.config_entries_router` (service-router, UpstreamConfig) shares.

Schema and single-entry rules follow Consul's `structs.ServiceResolverConfigEntry.Validate` and
its router/splitter siblings, with their error texts. Rules that need other entries (a subset
named by a splitter exists, the protocol allows L7, no redirect loop) are the compiler's, in
`meshd.chain`, run by the servers against the state a write would produce.

Durations are stored as Go duration strings ("200ms", "5s"): that is what Consul answers with,
and what the CLI reads back.
"""

from __future__ import annotations

import math
import re
from typing import Any

from meshd.config_entries import (
    ConfigEntryError,
    _bool,
    _fold,
    _string,
)
from meshd.durations import DurationError, parse_duration_seconds
from meshd.filter import FilterError, compile_filter

__all__ = ["L7_KINDS", "L7_TOP_KEYS", "go_duration", "normalize_l7"]

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
_SUBSET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_TARGET_KEYS = ("Service", "ServiceSubset", "Namespace", "Partition")
_HEADER_MOD_KEYS = ("Add", "Set", "Remove")


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
    """service-resolver or service-splitter; `entry` is already folded to canonical top-level
    keys with Kind/Name/Meta checked (service-router: `meshd.config_entries_router`)."""
    if entry["Kind"] == RESOLVER:
        return _resolver(entry)
    return _splitter(entry)


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
            _fold(
                entry["Redirect"],
                (*_TARGET_KEYS, "Datacenter", "Peer", "SamenessGroup"),
                "Redirect",
            ),
            "Redirect",
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
    fo = _fold(raw, (*_TARGET_KEYS, "Datacenters", "Targets", "SamenessGroup", "Policy"), where)
    if fo.get("Policy"):
        raise ConfigEntryError(f"{where}.Policy: not supported by meshd")
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
