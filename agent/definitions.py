"""Service and check definitions as users write them (HTTP bodies and config files).

Consul accepts PascalCase in the HTTP API and snake_case in config files, case-insensitively;
we fold every key to lowercase-without-underscores once, here, so the rest of the agent sees one
typed shape and unknown keys are caught in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshd import validate, validate_catalog, validate_fields
from meshd.config import ConfigError, parse_duration
from meshd.jsonshape import JSONShapeError, check_json_shape
from meshd.structs import HEALTH_STATES, SERF_CHECK_ID, HealthCheck, NodeService, Weights

log = logging.getLogger("meshd.agent")

MIN_INTERVAL = 1.0  # seconds; Consul's agent/checks.MinInterval


class DefinitionError(ValueError):
    """A user-supplied definition is invalid; the message is returned as HTTP 400 text."""


def _servers_rule(rule: Callable[..., None], *args: Any, **kw: Any) -> None:
    """The servers' own rule for this part, run before the agent changes its local state, so a
    definition the agent accepts is one anti-entropy can push."""
    try:
        rule(*args, **kw)
    except validate.ValidationError as e:
        raise DefinitionError(f"invalid definition: {e}") from None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # Go's int on the servers; msgspec's range too


def _fold(d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DefinitionError(f"{where}: expected an object, got {type(d).__name__}")
    return {k.lower().replace("_", ""): v for k, v in d.items()}


def _typed(
    d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    v = d.get(key, default)
    if v is None:
        return default
    if kind is int and isinstance(v, bool):
        raise DefinitionError(f"{where}: field {key!r} must be a number")
    if kind is int and isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX:
        raise DefinitionError(f"{where}: field {key!r} is out of range: {v}")
    if not isinstance(v, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DefinitionError(
            f"{where}: field {key!r} must be of type {name}, got {type(v).__name__}"
        )
    return v


def _free_form(d: dict[str, Any], key: str, where: str, default: Any) -> Any:
    """An object kept as given (Proxy, Connect): it must still be shallow and 64-bit clean."""
    v = _typed(d, key, dict, where, default)
    try:
        check_json_shape(v)
    except JSONShapeError as e:
        raise DefinitionError(f"{where}: {key}: {e}") from None
    return v


def _str_map(v: Any, key: str, where: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise DefinitionError(f"{where}: {key} must be a map of strings")
    return dict(v)


def _duration(d: dict[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if v in (None, "", 0):
        return 0.0
    try:
        return parse_duration(v)
    except (ConfigError, ValueError) as e:
        raise DefinitionError(f"{where}: invalid {key} {v!r}: {e}") from None


_CHECK_KEYS = {
    "id",
    "checkid",
    "name",
    "notes",
    "status",
    "serviceid",
    "http",
    "method",
    "header",
    "body",
    "tlsskipverify",
    "tlsservername",
    "tcp",
    "udp",
    "grpc",
    "grpcusetls",
    "ttl",
    "args",
    "scriptargs",
    "aliasnode",
    "aliasservice",
    "interval",
    "timeout",
    "deregistercriticalserviceafter",
    "successbeforepassing",
    "failuresbeforewarning",
    "failuresbeforecritical",
    "outputmaxsize",
    "node",
    "type",
    "definition",
    "servicename",
    "servicetags",
    "output",
    "createindex",
    "modifyindex",
    "disableredirects",
    "h2ping",
}


@dataclass
class CheckDefinition:
    """A check the agent runs (or a TTL it waits on). Durations are seconds."""

    CheckID: str
    Name: str
    Type: str  # http | tcp | udp | grpc | ttl | script | alias
    ServiceID: str = ""
    Notes: str = ""
    Status: str = "critical"
    HTTP: str = ""
    Method: str = "GET"
    Header: dict[str, list[str]] = field(default_factory=dict)
    Body: str = ""
    TLSSkipVerify: bool = False
    TCP: str = ""
    UDP: str = ""
    GRPC: str = ""
    GRPCUseTLS: bool = False
    TTL: float = 0.0
    Args: list[str] = field(default_factory=list)
    AliasNode: str = ""
    AliasService: str = ""
    Interval: float = 0.0
    Timeout: float = 10.0
    DeregisterCriticalServiceAfter: float = 0.0
    SuccessBeforePassing: int = 0
    FailuresBeforeWarning: int = 0
    FailuresBeforeCritical: int = 0
    OutputMaxSize: int = 4096
    raw: dict[str, Any] = field(default_factory=dict)

    def to_health_check(self, node: str, service: NodeService | None) -> HealthCheck:
        return HealthCheck(
            Node=node,
            CheckID=self.CheckID,
            Name=self.Name,
            Status=self.Status,
            Notes=self.Notes,
            ServiceID=service.ID if service else "",
            ServiceName=service.Service if service else "",
            ServiceTags=list(service.Tags) if service else [],
            Type=self.Type,
            Interval=f"{self.Interval:g}s" if self.Interval else "",
            Timeout=f"{self.Timeout:g}s" if self.Type not in ("ttl", "alias") else "",
            Definition={
                "DeregisterCriticalServiceAfter": f"{self.DeregisterCriticalServiceAfter:g}s"
            }
            if self.DeregisterCriticalServiceAfter
            else {},
        )


def parse_check(raw: dict[str, Any], *, service_id: str = "", index: int = 0) -> CheckDefinition:
    """Parse one check; `service_id` is set when the check is embedded in a service.

    `index` numbers the checks of a service that has more than one (1, 2, ...; 0 when it has
    one): Consul names them `service:<id>:<n>`, a lone check just `service:<id>`."""
    where = "check"
    d = _fold(raw, where)
    unknown = sorted(set(d) - _CHECK_KEYS)
    if unknown:
        raise DefinitionError(f"{where}: unknown field {unknown[0]!r}")
    name = _typed(d, "name", str, where, "")
    cid = _typed(d, "checkid", str, where, "") or _typed(d, "id", str, where, "")
    sid = _typed(d, "serviceid", str, where, "") or service_id
    if not cid:
        cid = f"service:{service_id}" + (f":{index}" if index else "") if service_id else name
    if not name:
        name = f"Service '{service_id}' check" if service_id else cid
    if not cid:
        raise DefinitionError("check: missing check name")
    _servers_rule(validate.name, cid, "check: CheckID")
    _servers_rule(validate.name, sid, "check: ServiceID", required=False)
    if cid == SERF_CHECK_ID:
        raise DefinitionError(f"check: CheckID {SERF_CHECK_ID!r} is maintained by the servers")
    args = d.get("args") or d.get("scriptargs") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DefinitionError(f"{where}: Args must be a list of strings")
    header = d.get("header") or {}
    if not isinstance(header, dict) or not all(isinstance(v, list) for v in header.values()):
        raise DefinitionError(f"{where}: Header must be a map of string lists")
    status = _typed(d, "status", str, where, "") or "critical"
    if status not in HEALTH_STATES:
        raise DefinitionError(f"{where}: invalid Status {status!r}")
    c = CheckDefinition(
        CheckID=cid,
        Name=name,
        Type="",
        ServiceID=sid,
        Notes=_typed(d, "notes", str, where, ""),
        Status=status,
        HTTP=_typed(d, "http", str, where, ""),
        Method=_typed(d, "method", str, where, "") or "GET",
        Header=header,
        Body=_typed(d, "body", str, where, ""),
        TLSSkipVerify=bool(d.get("tlsskipverify", False)),
        TCP=_typed(d, "tcp", str, where, ""),
        UDP=_typed(d, "udp", str, where, ""),
        GRPC=_typed(d, "grpc", str, where, ""),
        GRPCUseTLS=bool(d.get("grpcusetls", False)),
        TTL=_duration(d, "ttl", where),
        Args=list(args),
        AliasNode=_typed(d, "aliasnode", str, where, ""),
        AliasService=_typed(d, "aliasservice", str, where, ""),
        Interval=_duration(d, "interval", where),
        Timeout=_duration(d, "timeout", where) or 10.0,
        DeregisterCriticalServiceAfter=_duration(d, "deregistercriticalserviceafter", where),
        SuccessBeforePassing=_typed(d, "successbeforepassing", int, where, 0),
        FailuresBeforeWarning=_typed(d, "failuresbeforewarning", int, where, 0),
        FailuresBeforeCritical=_typed(d, "failuresbeforecritical", int, where, 0),
        OutputMaxSize=_typed(d, "outputmaxsize", int, where, 4096) or 4096,
        raw=dict(raw),
    )
    kinds = [
        k
        for k, v in (
            ("http", c.HTTP),
            ("tcp", c.TCP),
            ("udp", c.UDP),
            ("grpc", c.GRPC),
            ("ttl", c.TTL),
            ("script", c.Args),
            ("alias", c.AliasService or c.AliasNode),
        )
        if v
    ]
    if len(kinds) != 1:
        raise DefinitionError(
            "check: exactly one of HTTP, TCP, UDP, GRPC, TTL, Args or AliasService is required"
            if not kinds
            else f"check: conflicting check kinds {', '.join(kinds)}"
        )
    c.Type = kinds[0]
    if c.Type in ("http", "tcp", "udp", "grpc", "script") and c.Interval <= 0:
        raise DefinitionError(f"check: Interval is required for {c.Type} checks")
    if c.Type in ("http", "tcp", "udp", "grpc", "script") and c.Interval < MIN_INTERVAL:
        # Consul's checks.MinInterval: "1ns" would spin a core (or fork-bomb, for a script)
        log.warning(
            "check %r has interval %gs, below the minimum: raised to %gs",
            c.CheckID,
            c.Interval,
            MIN_INTERVAL,
        )
        c.Interval = MIN_INTERVAL
    if c.Type == "http" and not c.HTTP.startswith(("http://", "https://")):
        raise DefinitionError(f"check: invalid HTTP URL {c.HTTP!r}")
    if c.OutputMaxSize > validate_fields.OUTPUT_MAX_SIZE:
        raise DefinitionError(
            f"check: OutputMaxSize must be at most {validate_fields.OUTPUT_MAX_SIZE}"
        )
    if len(c.Notes) > validate.MAX_TEXT:
        raise DefinitionError(f"check: Notes is longer than {validate.MAX_TEXT} characters")
    for k in ("SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical"):
        if getattr(c, k) < 0:
            raise DefinitionError(f"check: {k} must not be negative")
    return c


def check_list(value: Any, where: str) -> list[Any]:
    """`Checks` is a JSON array; `{}` or a number is a mistake to report, not an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DefinitionError(f"{where}: Checks must be a list, got {type(value).__name__}")
    return value


def _tagged_addresses(v: Any, where: str) -> dict[str, Any]:
    """Consul's service tagged addresses: name -> {"Address", "Port"} (a ServiceAddress)."""
    out: dict[str, Any] = {}
    for key, raw in _typed({"t": v}, "t", dict, where, {}).items():
        a = _fold(raw, f"{where}: TaggedAddresses[{key!r}]")
        unknown = sorted(set(a) - {"address", "port"})
        if unknown:
            raise DefinitionError(
                f"{where}: TaggedAddresses[{key!r}]: unknown field {unknown[0]!r}"
            )
        out[key] = {
            "Address": _typed(a, "address", str, f"{where}: TaggedAddresses[{key!r}]", ""),
            "Port": _typed(a, "port", int, f"{where}: TaggedAddresses[{key!r}]", 0),
        }
    return out


def _locality(v: Any, where: str) -> dict[str, str] | None:
    """Consul 1.17's `Locality {Region, Zone}`: where the instance runs, for locality-aware
    routing; kept and reported as given."""
    if v is None:
        return None
    loc = _fold(v, f"{where}: Locality")
    unknown = sorted(set(loc) - {"region", "zone"})
    if unknown:
        raise DefinitionError(f"{where}: Locality: unknown field {unknown[0]!r}")
    return {
        "Region": _typed(loc, "region", str, f"{where}: Locality", ""),
        "Zone": _typed(loc, "zone", str, f"{where}: Locality", ""),
    }


_SERVICE_KEYS = {
    "id",
    "name",
    "tags",
    "address",
    "port",
    "meta",
    "weights",
    "enabletagoverride",
    "check",
    "checks",
    "kind",
    "proxy",
    "connect",
    "taggedaddresses",
    "socketpath",
    "namespace",
    "partition",
    "locality",
    "token",
    "enableTagOverride".lower(),
}


@dataclass
class ServiceDefinition:
    service: NodeService
    checks: list[CheckDefinition]
    sidecar: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def parse_service(raw: dict[str, Any]) -> ServiceDefinition:
    where = "service"
    d = _fold(raw, where)
    unknown = sorted(set(d) - _SERVICE_KEYS)
    if unknown:
        raise DefinitionError(f"{where}: unknown field {unknown[0]!r}")
    name = _typed(d, "name", str, where, "")
    if not name:
        raise DefinitionError("Missing service name")
    sid = _typed(d, "id", str, where, "") or name
    for what, v in (("name", name), ("ID", sid)):
        _servers_rule(validate.name, v, f"{where}: service {what}")
    if not validate_fields.dns_safe(name):
        log.warning(
            "Service name %r will not be discoverable via DNS: valid characters are letters, "
            "digits and dashes, at most 63 of them",
            name,
        )
    tags = _typed(d, "tags", list, where, [])
    if not all(isinstance(t, str) for t in tags):
        raise DefinitionError(f"{where}: Tags must be a list of strings")
    port = _typed(d, "port", int, where, 0)
    if not 0 <= port <= 65535:
        raise DefinitionError(f"{where}: invalid Port {port}")
    w = _fold(_typed(d, "weights", dict, where, {}) or {}, "service.Weights")
    weights = Weights(
        Passing=_typed(w, "passing", int, where, 1), Warning=_typed(w, "warning", int, where, 1)
    )
    if weights.Passing < 1:
        raise DefinitionError("service: Passing must be greater than 0")
    kind = _typed(d, "kind", str, where, "")
    if kind not in (
        "",
        "connect-proxy",
        "mesh-gateway",
        "terminating-gateway",
        "ingress-gateway",
        "api-gateway",
    ):
        raise DefinitionError(f"{where}: invalid Kind {kind!r}")
    svc = NodeService(
        ID=sid,
        Service=name,
        Tags=list(tags),
        Address=_typed(d, "address", str, where, ""),
        Port=port,
        Meta=_str_map(d.get("meta"), "Meta", where),
        Weights=weights,
        EnableTagOverride=bool(d.get("enabletagoverride", False)),
        Kind=kind,
        Proxy=_free_form(d, "proxy", where, None),
        Connect=_free_form(d, "connect", where, None),
        TaggedAddresses=_tagged_addresses(d.get("taggedaddresses"), where),
        Locality=_locality(d.get("locality"), where),
    )
    _servers_rule(validate_catalog.service, svc)
    raw_checks: list[Any] = []
    if d.get("check"):
        raw_checks.append(d["check"])
    raw_checks.extend(check_list(d.get("checks"), where))
    many = len(raw_checks) > 1
    checks = [
        parse_check(c, service_id=sid, index=i + 1 if many else 0) for i, c in enumerate(raw_checks)
    ]
    sidecar = None
    if svc.Connect:
        sidecar = {k.lower().replace("_", ""): v for k, v in svc.Connect.items()}.get(
            "sidecarservice"
        )
    return ServiceDefinition(service=svc, checks=checks, sidecar=sidecar, raw=dict(raw))
