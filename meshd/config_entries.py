"""Validation and normalisation of config entries, exactly as `PUT /v1/config` receives them.

Pure functions, no I/O: the HTTP layer and the Raft state machine both call `normalize_entry`
so a bad entry is refused before it is replicated and every node stores byte-identical data.
The rules and error texts follow Consul's `structs.ServiceIntentionsConfigEntry.validate` and
friends, because clients (consul CLI, Terraform, consul-k8s) surface those texts to users.

Key folding mirrors Consul's decoder: keys are matched case-insensitively and with `_`/`-`
ignored, so `path_exact`, `pathExact` and `PathExact` are the same field. User maps (`Meta`,
`Config`, extension `Arguments`) are opaque and keep their keys untouched.
"""

from __future__ import annotations

import re
from typing import Any

from meshd.intentions import WILDCARD, precedence
from meshd.proxy_observability import ObservabilityConfigError, validate_proxy_defaults

__all__ = ["KINDS", "PROTOCOLS", "ConfigEntryError", "normalize_entry"]


class ConfigEntryError(ValueError):
    """A config entry the server refuses; the text names the offending field (HTTP 400)."""


KINDS = (
    "service-intentions",
    "service-defaults",
    "proxy-defaults",
    "service-resolver",
    "service-splitter",
    "service-router",
)
PROTOCOLS = ("tcp", "http", "http2", "grpc")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

# Consul's limits (structs.metaMaxKeyPairs etc.): keep them so an entry accepted here is also
# accepted by a real Consul cluster, which matters for migrations in both directions.
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512

# Fields that identify a stored version, never user input: accepted so that a GET body can be
# PUT back verbatim, then dropped because the server assigns them.
_SERVER_SET = ("CreateIndex", "ModifyIndex", "Hash")
_COMMON = ("Kind", "Name", "Namespace", "Partition", "Meta", *_SERVER_SET)
_MESH_COMMON = (
    "Mode",
    "TransparentProxy",
    "MutualTLSMode",
    "MeshGateway",
    "Expose",
    "EnvoyExtensions",
)
_TOP_KEYS: dict[str, tuple[str, ...]] = {
    "service-intentions": (*_COMMON, "Sources", "JWT"),
    "service-defaults": (
        *_COMMON,
        *_MESH_COMMON,
        "Protocol",
        "ExternalSNI",
        "UpstreamConfig",
        "Destination",
        "MaxInboundConnections",
        "LocalConnectTimeoutMs",
        "LocalRequestTimeoutMs",
        "BalanceInboundConnections",
        "RateLimits",
    ),
    "proxy-defaults": (
        *_COMMON,
        *_MESH_COMMON,
        "Config",
        "AccessLogs",
        "FailoverPolicy",
        "PrioritizeByLocality",
    ),
}
_SOURCE_KEYS = (
    "Name",
    "Action",
    "Permissions",
    "Precedence",
    "Type",
    "Description",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
    "Namespace",
    "Partition",
    "Peer",
    "SamenessGroup",
)
_PERMISSION_KEYS = ("Action", "HTTP", "JWT")
_HTTP_KEYS = ("PathExact", "PathPrefix", "PathRegex", "Header", "Methods")
_HEADER_KEYS = ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert")
_HEADER_MATCHERS = ("Present", "Exact", "Prefix", "Suffix", "Regex")
# Consul features meshd does not implement: a precise refusal beats silently ignoring policy.
_UNSUPPORTED = {"JWT", "Peer", "SamenessGroup"}
_OPAQUE = {"Meta", "Config", "Arguments", "LegacyMeta"}
_ACRONYMS = {"id": "ID", "sni": "SNI", "tls": "TLS", "http": "HTTP", "jwt": "JWT", "ip": "IP"}
_ENUMS: dict[str, tuple[str, ...]] = {
    "Mode": ("", "direct", "transparent"),
    "MutualTLSMode": ("", "strict", "permissive"),
    "BalanceInboundConnections": ("", "exact_balance"),
}
_INT_FIELDS = ("MaxInboundConnections", "LocalConnectTimeoutMs", "LocalRequestTimeoutMs")
_RE2_UNSUPPORTED = re.compile(r"\(\?<?[=!]|\\[1-9]")


def _key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _fold(obj: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    """Map user keys onto canonical names; unknown or twice-given fields are errors, since a
    typo in a policy document would otherwise silently weaken it."""
    if not isinstance(obj, dict):
        raise ConfigEntryError(f"{where or 'config entry'} must be an object")
    lookup = {_key(k): k for k in known}
    out: dict[str, Any] = {}
    prefix = f"{where}." if where else ""
    for raw_key, value in obj.items():
        canon = lookup.get(_key(str(raw_key)))
        if canon is None:
            raise ConfigEntryError(f"{prefix}{raw_key}: unknown field")
        if canon in out:
            raise ConfigEntryError(f"{prefix}{canon}: given more than once")
        if canon in _UNSUPPORTED and value not in (None, "", {}, []):
            raise ConfigEntryError(f"{prefix}{canon}: not supported by meshd")
        out[canon] = value
    return out


def _pascal(key: str) -> str:
    if "_" not in key and "-" not in key:
        return key[:1].upper() + key[1:]
    parts = re.split(r"[_-]+", key)
    return "".join(_ACRONYMS.get(p.lower(), p[:1].upper() + p[1:]) for p in parts if p)


def _fold_free(value: Any) -> Any:
    """Fold keys of sub-objects we pass through without a schema (UpstreamConfig, Expose...)."""
    if isinstance(value, dict):
        return {
            _pascal(str(k)): (v if _pascal(str(k)) in _OPAQUE else _fold_free(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_fold_free(v) for v in value]
    return value


def _string(value: Any, field: str, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ConfigEntryError(f"{field} must be a string")
    if required and not value:
        raise ConfigEntryError(f"{field} is required")
    return value


def _bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigEntryError(f"{field} must be a boolean")
    return value


def _meta(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigEntryError(f"{field} must be a map of strings to strings")
    if len(value) > META_MAX_PAIRS:
        raise ConfigEntryError(f"{field} exceeds maximum element count {META_MAX_PAIRS}")
    for k, v in value.items():
        if len(k) > META_KEY_MAX:
            raise ConfigEntryError(f"{field} key {k!r} exceeds maximum length {META_KEY_MAX}")
        if len(v) > META_VALUE_MAX:
            raise ConfigEntryError(
                f"{field} value for key {k!r} exceeds maximum length {META_VALUE_MAX}"
            )
    return dict(value)


def _regex(value: str, field: str) -> None:
    """Envoy evaluates these with RE2; Python's `re` catches syntax errors, and the constructs
    RE2 lacks (look-around, back-references) are refused here rather than by Envoy later."""
    if _RE2_UNSUPPORTED.search(value):
        raise ConfigEntryError(f"{field}: look-around and back-references are not supported")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigEntryError(f"{field} is not a valid regular expression: {exc}") from None


def _wildcard_name(name: str, field: str) -> None:
    if name != WILDCARD and WILDCARD in name:
        raise ConfigEntryError(
            f"{field}: wildcard character '*' cannot be used with partial values"
        )


def _default_scope(entry: dict[str, Any], where: str) -> None:
    """Namespaces and partitions are Consul Enterprise; only the implicit default exists here."""
    for field in ("Namespace", "Partition"):
        value = _string(entry.pop(field, ""), f"{where}{field}")
        if value not in ("", "default"):
            raise ConfigEntryError(f"{where}{field}: only 'default' is supported, got {value!r}")


def normalize_entry(raw: dict[str, Any], *, legacy: bool = False) -> dict[str, Any]:
    """Validate `raw` and return it with canonical PascalCase keys plus Kind, Name and Meta.

    `legacy=True` is for the `/v1/connect/intentions` bridge: like Consul's LegacyValidate it
    requires every source to carry a LegacyID and keeps the Legacy* fields, which ordinary
    config-entry writes drop (IDs and timestamps) or refuse (LegacyMeta).
    """
    if not isinstance(raw, dict):
        raise ConfigEntryError("config entry must be an object")
    kind_key = next((k for k in raw if _key(str(k)) == "kind"), None)
    kind = _string(raw.get(kind_key) if kind_key else None, "Kind", required=True)
    if kind not in KINDS:
        raise ConfigEntryError(
            f"Kind: unsupported config entry kind {kind!r}; supported: {', '.join(KINDS)}"
        )
    # they build on this module's helpers, hence imported here
    from meshd import config_entries_l7 as l7
    from meshd import config_entries_router as router

    entry = _fold(raw, _TOP_KEYS.get(kind) or l7.L7_TOP_KEYS[kind], "")
    for field in _SERVER_SET:
        entry.pop(field, None)
    _default_scope(entry, "")
    entry["Meta"] = _meta(entry.get("Meta"), "Meta")
    if kind == "proxy-defaults":
        name = _string(entry.get("Name"), "Name") or "global"
        if name != "global":
            raise ConfigEntryError(f"Name: invalid name ({name!r}), only 'global' is supported")
        entry["Name"] = name
    else:
        entry["Name"] = _string(entry.get("Name"), "Name", required=True)
    if kind == "service-intentions":
        return _intentions(entry, legacy)
    if kind == "service-router":
        return router.normalize_router(entry)
    if kind in l7.L7_KINDS:
        return l7.normalize_l7(entry)
    if kind == "service-defaults" and entry.get("UpstreamConfig") is not None:
        entry["UpstreamConfig"] = router.upstream_config(entry["UpstreamConfig"])
    return _defaults(entry)


def _defaults(entry: dict[str, Any]) -> dict[str, Any]:
    """service-defaults / proxy-defaults: type-check the fields meshd acts on, pass the rest."""
    for field, allowed in _ENUMS.items():
        if field in entry:
            value = _string(entry[field], field)
            if value not in allowed:
                raise ConfigEntryError(
                    f"{field}: invalid value {value!r}; "
                    f"expected one of {', '.join(repr(a) for a in allowed)}"
                )
    for field in _INT_FIELDS:
        number = entry.get(field)
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int) or number < 0
        ):
            raise ConfigEntryError(f"{field} must be a non-negative integer")
    if "ExternalSNI" in entry:
        _string(entry["ExternalSNI"], "ExternalSNI")
    for field in (
        "MeshGateway",
        "TransparentProxy",
        "Expose",
        "UpstreamConfig",
        "Destination",
        "RateLimits",
        "AccessLogs",
        "FailoverPolicy",
        "PrioritizeByLocality",
    ):
        if entry.get(field) is not None and not isinstance(entry[field], dict):
            raise ConfigEntryError(f"{field} must be an object")
    if entry.get("EnvoyExtensions") is not None and not isinstance(entry["EnvoyExtensions"], list):
        raise ConfigEntryError("EnvoyExtensions must be a list")
    for field, value in list(entry.items()):
        if field not in _OPAQUE and isinstance(value, dict | list):
            entry[field] = _fold_free(value)
    gateway = entry.get("MeshGateway") or {}
    if _string(gateway.get("Mode"), "MeshGateway.Mode") not in ("", "none", "local", "remote"):
        raise ConfigEntryError("MeshGateway.Mode must be one of 'none', 'local' or 'remote'")
    if entry["Kind"] == "service-defaults":
        protocol = _string(entry.get("Protocol"), "Protocol") or "tcp"
        if protocol not in PROTOCOLS:
            raise ConfigEntryError(
                f"Protocol: invalid protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        entry["Protocol"] = protocol
    else:
        config = entry.get("Config")
        if config is not None and not isinstance(config, dict):
            raise ConfigEntryError("Config must be an object")
        proxy_protocol = (config or {}).get("protocol")
        if proxy_protocol is not None and proxy_protocol not in PROTOCOLS:
            raise ConfigEntryError(
                f"Config.protocol: invalid protocol {proxy_protocol!r}; "
                f"expected one of {', '.join(PROTOCOLS)}"
            )
        try:
            validate_proxy_defaults(entry)
        except ObservabilityConfigError as e:
            raise ConfigEntryError(str(e)) from None
    return entry


def _intentions(entry: dict[str, Any], legacy: bool) -> dict[str, Any]:
    name = entry["Name"]
    _wildcard_name(name, "Name")
    if legacy and entry["Meta"]:
        raise ConfigEntryError("Meta must be omitted for legacy intention writes")
    sources = entry.get("Sources")
    if not isinstance(sources, list) or not sources:
        raise ConfigEntryError("At least one source is required")
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for i, raw_src in enumerate(sources):
        src = _source(raw_src, f"Sources[{i}]", name, legacy)
        if src["Name"] in seen:
            raise ConfigEntryError(f"Sources[{i}] defines {src['Name']!r} more than once")
        seen.add(src["Name"])
        out.append(src)
    # Consul stores sources highest precedence first (stable), which is also evaluation order.
    out.sort(key=lambda s: -s["Precedence"])
    entry["Sources"] = out
    entry.pop("JWT", None)
    return entry


def _source(raw: Any, where: str, destination: str, legacy: bool) -> dict[str, Any]:
    src = _fold(raw, _SOURCE_KEYS, where)
    _default_scope(src, f"{where}.")
    src.pop("Peer", None)
    src.pop("SamenessGroup", None)
    name = _string(src.get("Name"), f"{where}.Name", required=True)
    _wildcard_name(name, f"{where}.Name")
    out: dict[str, Any] = {"Name": name}
    action = _string(src.get("Action"), f"{where}.Action")
    perms = src.get("Permissions")
    if perms is None:
        perms = []
    if not isinstance(perms, list):
        raise ConfigEntryError(f"{where}.Permissions must be a list")
    if perms and action:
        raise ConfigEntryError(f"{where}.Action must be omitted if Permissions are specified")
    if perms and destination == WILDCARD:
        raise ConfigEntryError(
            f"{where}.Permissions cannot be specified on intentions with wildcarded destinations"
        )
    if not perms:
        if action not in ("allow", "deny"):
            raise ConfigEntryError(f"{where}.Action must be set to 'allow' or 'deny'")
        out["Action"] = action
    else:
        out["Permissions"] = [
            _permission(p, f"{where}.Permissions[{j}]") for j, p in enumerate(perms)
        ]
    out["Precedence"] = precedence(name, destination)  # computed; any input value is ignored
    src_type = _string(src.get("Type"), f"{where}.Type") or "consul"
    if src_type != "consul":
        raise ConfigEntryError(f"{where}.Type must be set to 'consul'")
    out["Type"] = src_type
    description = _string(src.get("Description"), f"{where}.Description")
    if len(description) > META_VALUE_MAX:
        raise ConfigEntryError(f"{where}.Description exceeds maximum length {META_VALUE_MAX}")
    if description:
        out["Description"] = description
    legacy_meta = _meta(src.get("LegacyMeta"), f"{where}.LegacyMeta")
    if legacy:
        out["LegacyID"] = _string(src.get("LegacyID"), f"{where}.LegacyID", required=True)
        out["LegacyMeta"] = legacy_meta
        for field in ("LegacyCreateTime", "LegacyUpdateTime"):
            if src.get(field):
                out[field] = _string(src[field], f"{where}.{field}")
    elif legacy_meta:
        raise ConfigEntryError(f"{where}.LegacyMeta must be omitted")
    return out


def _permission(raw: Any, where: str) -> dict[str, Any]:
    perm = _fold(raw, _PERMISSION_KEYS, where)
    action = _string(perm.get("Action"), f"{where}.Action")
    if action not in ("allow", "deny"):
        raise ConfigEntryError(f"{where}.Action must be set to 'allow' or 'deny'")
    if perm.get("HTTP") is None:
        raise ConfigEntryError(f"{where}.HTTP is required")
    return {"Action": action, "HTTP": _http(perm["HTTP"], f"{where}.HTTP")}


def path_match(http: dict[str, Any], where: str) -> dict[str, Any]:
    """At most one of PathExact/PathPrefix/PathRegex, checked the same for intentions and routes."""
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
    return out


def _http(raw: Any, where: str) -> dict[str, Any]:
    http = _fold(raw, _HTTP_KEYS, where)
    out = path_match(http, where)
    headers = http.get("Header")
    if headers is not None and not isinstance(headers, list):
        raise ConfigEntryError(f"{where}.Header must be a list")
    if headers:
        out["Header"] = [_header(h, f"{where}.Header[{k}]") for k, h in enumerate(headers)]
    methods = http.get("Methods")
    if methods is not None and (
        not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)
    ):
        raise ConfigEntryError(f"{where}.Methods must be a list of strings")
    if methods:
        upper = [m.upper() for m in methods]  # Consul upper-cases before validating
        for m in upper:
            if m not in HTTP_METHODS:
                raise ConfigEntryError(f"{where}.Methods contains an invalid method {m!r}")
        dupes = sorted({m for m in upper if upper.count(m) > 1})
        if dupes:
            raise ConfigEntryError(f"{where}.Methods contains {dupes[0]!r} more than once")
        out["Methods"] = upper
    if not out:
        raise ConfigEntryError(f"{where} should not be empty")
    return out


def _header(raw: Any, where: str) -> dict[str, Any]:
    hdr = _fold(raw, _HEADER_KEYS, where)
    name = _string(hdr.get("Name"), f"{where}.Name")
    if not name:
        raise ConfigEntryError(f"{where} missing required Name field")
    out: dict[str, Any] = {"Name": name}
    if _bool(hdr.get("Present"), f"{where}.Present"):
        out["Present"] = True
    for field in ("Exact", "Prefix", "Suffix", "Regex"):
        value = _string(hdr.get(field), f"{where}.{field}")
        if value:
            out[field] = value
    if sum(1 for f in _HEADER_MATCHERS if f in out) != 1:
        raise ConfigEntryError(
            f"{where} should only contain one of Present, Exact, Prefix, Suffix, or Regex"
        )
    if "Regex" in out:
        _regex(out["Regex"], f"{where}.Regex")
    if _bool(hdr.get("Invert"), f"{where}.Invert"):
        out["Invert"] = True
    return out
