"""The parts of a sidecar's bootstrap that come from its proxy `Config`, as Consul's
`consul connect envoy` makes them: stats tags, stats flush interval, a bootstrap tracer and
extra static clusters.

The stats tags are Consul's: the destination's service, namespace, datacenter, routing type,
trust domain, target and full target are cut out of upstream cluster names
(`api.default.dc1.internal.<trust domain>.consul`, which meshd's clusters follow), and every
metric carries `local_cluster` and `consul.source.*`, so the published Consul Grafana
dashboards work on meshd's sidecars as they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

SEG = r"[^.]+"
_CLUSTER = "^cluster\\."
#: (tag, which of the seven name parts it takes) for Consul's cluster-name tags. The parts are
#: custom hash (before `~`), subset, service, namespace, datacenter, routing type, trust domain.
_CLUSTER_TAGS = (
    ("consul.destination.custom_hash", 0),
    ("consul.destination.service_subset", 1),
    ("consul.destination.service", 2),
    ("consul.destination.namespace", 3),
    ("consul.destination.datacenter", 4),
    ("consul.destination.routing_type", 5),
    ("consul.destination.trust_domain", 6),
)
#: meshd's upstream listener stats are `<http|tcp|listener>.upstream.<service>.<stat>` (the
#: prefix has no namespace or datacenter): the lazy match stops before the stat's own name, so
#: a dotted service name stays whole.
_UPSTREAM = (
    r"^(?:http|tcp|listener)\.upstream\.((.+?)\.)"
    r"(?:downstream_|rbac\.|rds\.|worker_|http\.|rq_|no_route|idle_|upstream_|"
    r"max_|early_|route_|on_demand|connections_)"
)
_FLUSH = re.compile(r"^\d+(\.\d{1,9})?s$")


class BootstrapConfigError(ValueError):
    """A proxy Config key for the bootstrap that Envoy would not accept; says which."""


def _cluster_regex(capture: int) -> str:
    """Consul's cluster-name pattern with part `capture` in the value group; the outer group
    (cut from the metric name) spans the whole destination."""
    parts = [f"(?:{SEG}~)?", f"(?:{SEG}\\.)?", *([f"{SEG}\\."] * 5)]
    if capture == 0:
        parts[0] = f"(?:({SEG})~)?"
    elif capture == 1:
        parts[1] = f"(?:({SEG})\\.)?"
    else:
        parts[capture] = f"({SEG})\\."
    return _CLUSTER + "(" + "".join(parts) + "consul\\.)"


def _span_regex(parts: int) -> str:
    """target (service.namespace.datacenter, with subset/hash) or full target (to the trust
    domain): the first `parts` name parts as the value."""
    inner = f"(?:{SEG}~)?(?:{SEG}\\.)?" + "\\.".join([SEG] * parts)
    rest = "".join(f"\\.{SEG}" for _ in range(5 - parts))
    return _CLUSTER + "((" + inner + ")" + rest + "\\.consul\\.)"


def consul_stats_tags(
    *,
    local_cluster: str,
    service: str,
    datacenter: str,
    namespace: str = "default",
    custom: list[str] | None = None,
) -> list[dict[str, str]]:
    """`stats_config.stats_tags` as Consul's bootstrap has them, custom `envoy_stats_tags`
    (`"k=v"`, or `"k"` for 1) first; a custom tag replaces a default of the same name."""
    tags: list[dict[str, str]] = []
    named: set[str] = set()
    for raw in custom or []:
        if not isinstance(raw, str) or not raw:
            raise BootstrapConfigError("envoy_stats_tags must be a list of non-empty strings")
        key, _, value = raw.partition("=")
        key = key.lower()
        tags.append({"tag_name": key, "fixed_value": value if "=" in raw else "1"})
        named.add(key)
    tags += [{"tag_name": n, "regex": _cluster_regex(i)} for n, i in _CLUSTER_TAGS]
    tags.append({"tag_name": "consul.destination.target", "regex": _span_regex(3)})
    tags.append({"tag_name": "consul.destination.full_target", "regex": _span_regex(5)})
    tags.append({"tag_name": "consul.upstream.service", "regex": _UPSTREAM})
    # meshd's own name for the same thing, kept for dashboards made before the Consul tags
    tags.append({"tag_name": "meshd.destination", "regex": _UPSTREAM})
    for name, value in (
        ("local_cluster", local_cluster),
        ("consul.source.service", service),
        ("consul.source.namespace", namespace),
        ("consul.source.datacenter", datacenter),
    ):
        if value and name not in named:
            tags.append({"tag_name": name, "fixed_value": value})
    return tags


def _json(conf: dict[str, Any], key: str) -> Any:
    raw = conf.get(key)
    if not raw:
        return None
    if not isinstance(raw, str):
        raise BootstrapConfigError(f"{key} must be a JSON string")
    try:
        return json.loads(raw)
    except ValueError as e:
        raise BootstrapConfigError(f"{key} is not valid JSON: {e}") from None


def _objects(conf: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Consul's `*_json` lists are one object, or several separated by commas."""
    raw = conf.get(key)
    if not raw:
        return []
    if not isinstance(raw, str):
        raise BootstrapConfigError(f"{key} must be a JSON string")
    try:
        value = json.loads(f"[{raw}]")
    except ValueError as e:
        raise BootstrapConfigError(f"{key} is not valid JSON: {e}") from None
    if not all(isinstance(v, dict) for v in value):
        raise BootstrapConfigError(f"{key} must hold JSON objects")
    return list(value)


def apply_proxy_config(
    cfg: dict[str, Any], conf: dict[str, Any], *, service: str, datacenter: str
) -> None:
    """Fold the proxy Config keys Consul reads at bootstrap into `cfg`, in place."""
    stats_config = _json(conf, "envoy_stats_config_json")
    if stats_config is None:
        custom = conf.get("envoy_stats_tags") or []
        if not isinstance(custom, list):
            raise BootstrapConfigError("envoy_stats_tags must be a list of strings")
        tags = consul_stats_tags(
            local_cluster=cfg["node"]["cluster"],
            service=service,
            datacenter=datacenter,
            custom=custom,
        )
        stats_config = {"stats_tags": tags, "use_all_default_tags": True}
    elif not isinstance(stats_config, dict):
        raise BootstrapConfigError("envoy_stats_config_json must be a JSON object")
    cfg["stats_config"] = stats_config
    flush = conf.get("envoy_stats_flush_interval")
    if flush:
        if not isinstance(flush, str) or not _FLUSH.match(flush):
            raise BootstrapConfigError(
                f"envoy_stats_flush_interval must be a duration in seconds like '5s' or "
                f"'0.5s', got {flush!r}"
            )
        cfg["stats_flush_interval"] = flush
    tracing = _json(conf, "envoy_tracing_json")
    if tracing is not None:
        if not isinstance(tracing, dict):
            raise BootstrapConfigError("envoy_tracing_json must be a JSON object")
        cfg["tracing"] = tracing
    static = cfg.setdefault("static_resources", {})
    extra_clusters = _objects(conf, "envoy_extra_static_clusters_json")
    have = {c.get("name") for c in static.get("clusters", [])}
    static.setdefault("clusters", []).extend(c for c in extra_clusters if c.get("name") not in have)
    extra_listeners = _objects(conf, "envoy_extra_static_listeners_json")
    if extra_listeners:
        static.setdefault("listeners", []).extend(extra_listeners)
