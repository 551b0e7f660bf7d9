"""Prepared queries (Consul's /v1/query): definitions, templates, lookup and result filtering.

Pure: the servers store normalized definitions (`normalize`), and whoever executes one (the HTTP
API, DNS) looks it up by ID or name (`resolve`, which renders a template for the name asked) and
filters the service's health rows with the query's rules (`select`). Near-sorting by network
coordinates is left to the caller, which holds the coordinates.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshd.config import ConfigError, parse_duration
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, CheckServiceNode

TEMPLATE_TYPES = ("name_prefix_match", "regexp")
_TOP = {
    "id",
    "name",
    "session",
    "token",
    "template",
    "service",
    "dns",
    "createindex",
    "modifyindex",
}
_SERVICE = {
    "service",
    "failover",
    "onlypassing",
    "ignorecheckids",
    "near",
    "tags",
    "nodemeta",
    "servicemeta",
    "connect",
    "peer",
    "samenessgroup",
    "namespace",
    "partition",
}
_VAR = re.compile(r"\$\{([^}]*)\}")


class PreparedQueryError(ValueError):
    """A definition the servers refuse, or a lookup that fails; the text is shown (HTTP 400)."""


def _fold(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PreparedQueryError(f"{where} must be an object")
    return {k.lower(): v for k, v in raw.items()}


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key) or ""
    if not isinstance(v, str):
        raise PreparedQueryError(f"{where} must be a string")
    return v


def _str_list(d: Mapping[str, Any], key: str, where: str) -> list[str]:
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise PreparedQueryError(f"{where} must be a list of strings")
    return list(v)


def _str_map(d: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    v = d.get(key) or {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise PreparedQueryError(f"{where} must be a map of strings")
    return dict(v)


def normalize(raw: Any, query_id: str) -> dict[str, Any]:
    """The stored form of a definition (Consul's field names, every field present)."""
    top = _fold(raw, "query")
    unknown = sorted(set(top) - _TOP)
    if unknown:
        raise PreparedQueryError(f"unknown prepared query field {unknown[0]!r}")
    svc = _fold(top.get("service") or {}, "Service")
    unknown = sorted(set(svc) - _SERVICE)
    if unknown:
        raise PreparedQueryError(f"unknown field Service.{unknown[0]!r}")
    tmpl = _fold(top.get("template") or {}, "Template")
    ttype = _str(tmpl, "type", "Template.Type")
    regexp = _str(tmpl, "regexp", "Template.Regexp")
    if ttype and ttype not in TEMPLATE_TYPES:
        raise PreparedQueryError(f"Bad Template.Type {ttype!r}: want one of {TEMPLATE_TYPES}")
    if regexp and ttype != "regexp":
        raise PreparedQueryError('Template.Regexp needs Template.Type "regexp"')
    if ttype == "regexp":
        try:
            re.compile(regexp)
        except re.error as e:
            raise PreparedQueryError(f"Invalid template regexp {regexp!r}: {e}") from None
    service = _str(svc, "service", "Service.Service")
    if not service:
        raise PreparedQueryError("Must provide a Service name to query")
    dns = _fold(top.get("dns") or {}, "DNS")
    ttl = _str(dns, "ttl", "DNS.TTL")
    if ttl:
        try:
            if parse_duration(ttl) < 0:
                raise ValueError("negative")
        except (ConfigError, ValueError) as e:
            raise PreparedQueryError(f"Bad DNS TTL {ttl!r}: {e}") from None
    failover = _fold(svc.get("failover") or {}, "Service.Failover")
    nearest = failover.get("nearestn", 0)
    if not isinstance(nearest, int) or isinstance(nearest, bool) or nearest < 0:
        raise PreparedQueryError("Service.Failover.NearestN must be a non-negative number")
    connect = _fold(svc.get("connect") or {}, "Service.Connect")
    name = _str(top, "name", "Name")
    if not name and not ttype:
        raise PreparedQueryError("Must provide a Name (only a template may have an empty one)")
    return {
        "ID": query_id,
        "Name": name,
        "Session": _str(top, "session", "Session"),
        "Token": "",
        "Template": {
            "Type": ttype,
            "Regexp": regexp,
            "RemoveEmptyTags": bool(tmpl.get("removeemptytags", False)),
        },
        "Service": {
            "Service": service,
            "Failover": {
                "NearestN": nearest,
                "Datacenters": _str_list(failover, "datacenters", "Service.Failover.Datacenters"),
            },
            "OnlyPassing": bool(svc.get("onlypassing", False)),
            "IgnoreCheckIDs": _str_list(svc, "ignorecheckids", "Service.IgnoreCheckIDs"),
            "Near": _str(svc, "near", "Service.Near"),
            "Tags": _str_list(svc, "tags", "Service.Tags"),
            "NodeMeta": _str_map(svc, "nodemeta", "Service.NodeMeta"),
            "ServiceMeta": _str_map(svc, "servicemeta", "Service.ServiceMeta"),
            "Connect": {"Enabled": bool(connect.get("enabled", False))},
        },
        "DNS": {"TTL": ttl},
    }


def check_unique(query: Mapping[str, Any], others: list[dict[str, Any]]) -> None:
    """Consul keeps names unique, and allows one catch-all template (empty name)."""
    for other in others:
        if other["ID"] != query["ID"] and other["Name"] == query["Name"]:
            what = f"name {query['Name']!r}" if query["Name"] else "an empty name (catch-all)"
            raise PreparedQueryError(f"A prepared query with {what} already exists")


@dataclass(frozen=True)
class Resolved:
    query: dict[str, Any]  # rendered: template variables filled in for the name asked


def _render(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: variables.get(m.group(1).strip(), ""), value)
    if isinstance(value, list):
        return [_render(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, variables) for k, v in value.items()}
    return value


def render(template: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A template rendered for the name asked: ${name.full}, ${name.prefix}, ${name.suffix},
    ${match(N)} (the regexp's groups) in every string of its Service."""
    prefix = template["Name"]
    variables = {
        "name.full": name,
        "name.prefix": prefix,
        "name.suffix": name[len(prefix) :] if name.startswith(prefix) else "",
        "agent.segment": "",
    }
    regexp = template["Template"]["Regexp"]
    if template["Template"]["Type"] == "regexp" and regexp:
        m = re.match(regexp, name)
        groups = [m.group(0), *m.groups()] if m else []
        for i, g in enumerate(groups):
            variables[f"match({i})"] = g or ""
    out = copy.deepcopy(dict(template))
    out["Service"] = _render(out["Service"], variables)
    if out["Template"].get("RemoveEmptyTags"):
        out["Service"]["Tags"] = [t for t in out["Service"]["Tags"] if t]
    return out


def resolve(queries: list[dict[str, Any]], id_or_name: str) -> Resolved | None:
    """Consul's lookup: by ID, then by exact name, then the template whose name is the longest
    prefix of the name asked (a template with an empty name matches everything)."""
    for query in queries:
        if query["ID"] == id_or_name:
            if query["Template"]["Type"]:
                return Resolved(render(query, query["Name"]))
            return Resolved(copy.deepcopy(query))
    for query in queries:
        if query["Name"] == id_or_name and not query["Template"]["Type"]:
            return Resolved(copy.deepcopy(query))
    templates = [q for q in queries if q["Template"]["Type"] and id_or_name.startswith(q["Name"])]
    if not templates:
        return None
    best = max(templates, key=lambda q: len(q["Name"]))
    return Resolved(render(best, id_or_name))


def _tags_match(have: list[str], want: list[str]) -> bool:
    present = {t.lower() for t in have}
    for tag in want:
        t = tag.lower()
        if t.startswith("!"):
            if t[1:] in present:
                return False
        elif t not in present:
            return False
    return True


def _healthy(row: CheckServiceNode, only_passing: bool, ignore: set[str]) -> bool:
    for check in row.Checks:
        if check.CheckID in ignore:
            continue
        if check.Status == HEALTH_CRITICAL:
            return False
        if only_passing and check.Status != HEALTH_PASSING:
            return False
    return True


def select(query: Mapping[str, Any], rows: list[CheckServiceNode]) -> list[CheckServiceNode]:
    """The instances a query hands out: healthy (critical never; warning unless OnlyPassing),
    with every tag asked for and none of the `!tag`s, and matching node and service meta."""
    svc = query["Service"]
    ignore = set(svc["IgnoreCheckIDs"])
    node_meta, svc_meta = svc["NodeMeta"], svc["ServiceMeta"]
    out = []
    for row in rows:
        if not _healthy(row, svc["OnlyPassing"], ignore):
            continue
        if not _tags_match(row.Service.Tags, svc["Tags"]):
            continue
        if any(row.Node.Meta.get(k) != v for k, v in node_meta.items()):
            continue
        if any(row.Service.Meta.get(k) != v for k, v in svc_meta.items()):
            continue
        out.append(row)
    return out


def dns_ttl(query: Mapping[str, Any]) -> float | None:
    ttl = query.get("DNS", {}).get("TTL", "")
    return parse_duration(ttl) if ttl else None


def acl_prefix(query: dict[str, Any]) -> str | None:
    """The `query` ACL name guarding a definition (Consul's GetACLPrefix): its name, which a
    template treats as a prefix; None for an unnamed query, which only its ID holder manages."""
    name = str(query.get("Name") or "")
    template = query.get("Template") or {}
    if name or (isinstance(template, dict) and template.get("Type")):
        return name
    return None
