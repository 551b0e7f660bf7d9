"""The proxy Config keys Consul reads at bootstrap: stats tags (checked by applying them to
real stat names the way Envoy does), flush interval, bootstrap tracer, extra clusters."""

from __future__ import annotations

import re

import pytest

from meshd.proxy.bootstrap import bootstrap_config
from meshd.proxy.bootstrap_extras import (
    BootstrapConfigError,
    apply_proxy_config,
    consul_stats_tags,
)

TD = "11111111-2222-3333-4444-555555555555.consul"


def extract(name: str, tags: list[dict[str, str]]) -> tuple[str, dict[str, str]]:
    """Envoy's tag extraction: group 1 is cut from the name, group 2 is the value (RE2 and
    Python agree on these patterns); fixed values apply to every stat."""
    out: dict[str, str] = {}
    cut: set[int] = set()
    for t in tags:
        if "fixed_value" in t:
            out[t["tag_name"]] = t["fixed_value"]
            continue
        m = re.search(t["regex"], name)
        if m and m.group(2) is not None:
            out[t["tag_name"]] = m.group(2)
            cut.update(range(*m.span(1)))
    return "".join(c for i, c in enumerate(name) if i not in cut), out


TAGS = consul_stats_tags(local_cluster="web", service="web", datacenter="dc1")


def test_cluster_stats_name_the_destination_as_consuls_tags_do():
    name, tags = extract(f"cluster.api.default.dc2.internal.{TD}.upstream_rq_total", TAGS)
    assert name == "cluster.upstream_rq_total"
    assert tags["consul.destination.service"] == "api"
    assert tags["consul.destination.namespace"] == "default"
    assert tags["consul.destination.datacenter"] == "dc2"
    assert tags["consul.destination.routing_type"] == "internal"
    assert tags["consul.destination.trust_domain"] == TD.split(".")[0]
    assert tags["consul.destination.target"] == "api.default.dc2"
    assert tags["consul.destination.full_target"] == f"api.default.dc2.internal.{TD[:-7]}"
    assert "consul.destination.service_subset" not in tags
    assert tags["local_cluster"] == "web" and tags["consul.source.datacenter"] == "dc1"


def test_subset_and_custom_hash_clusters():
    _, tags = extract(f"cluster.f8f8f8f8~v2.api.default.dc1.internal.{TD}.bind_errors", TAGS)
    assert tags["consul.destination.service_subset"] == "v2"
    assert tags["consul.destination.custom_hash"] == "f8f8f8f8"
    assert tags["consul.destination.service"] == "api"


def test_upstream_listener_stats_name_the_upstream_service():
    for stat in ("http.upstream.api.downstream_rq_completed", "tcp.upstream.db.rbac.allowed"):
        name, tags = extract(stat, TAGS)
        want = stat.split(".")[2]
        assert tags["consul.upstream.service"] == want and tags["meshd.destination"] == want
        assert want not in name


def test_local_app_and_other_stats_get_only_the_source_tags():
    name, tags = extract("cluster.local_app.upstream_rq_total", TAGS)
    assert name == "cluster.local_app.upstream_rq_total"
    assert set(tags) == {
        "local_cluster",
        "consul.source.service",
        "consul.source.namespace",
        "consul.source.datacenter",
    }


def test_custom_tags_come_first_and_replace_a_default():
    tags = consul_stats_tags(
        local_cluster="web", service="web", datacenter="dc1", custom=["canary", "local_cluster=x"]
    )
    assert tags[0] == {"tag_name": "canary", "fixed_value": "1"}
    assert [t["fixed_value"] for t in tags if t["tag_name"] == "local_cluster"] == ["x"]


def boot(**conf):
    cfg = bootstrap_config(node_id="web-sidecar-proxy", cluster="web", ads_host="h", ads_port=1)
    apply_proxy_config(cfg, conf, service="web", datacenter="dc1")
    return cfg


def test_apply_sets_tags_flush_interval_tracer_and_clusters():
    cfg = boot(
        envoy_stats_tags=["team=payments"],
        envoy_stats_flush_interval="2.5s",
        envoy_tracing_json='{"http": {"name": "envoy.tracers.zipkin"}}',
        envoy_extra_static_clusters_json='{"name": "zipkin"}, {"name": "meshd_ads"}',
    )
    sc = cfg["stats_config"]
    assert sc["use_all_default_tags"] is True
    assert {"tag_name": "team", "fixed_value": "payments"} in sc["stats_tags"]
    assert cfg["stats_flush_interval"] == "2.5s"
    assert cfg["tracing"] == {"http": {"name": "envoy.tracers.zipkin"}}
    # the ADS cluster is never replaced or duplicated
    assert [c["name"] for c in cfg["static_resources"]["clusters"]] == ["meshd_ads", "zipkin"]


def test_stats_config_json_replaces_the_tags():
    cfg = boot(envoy_stats_config_json='{"stats_tags": []}')
    assert cfg["stats_config"] == {"stats_tags": []}


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ({"envoy_stats_flush_interval": "5"}, "duration in seconds"),
        ({"envoy_stats_flush_interval": "1m"}, "duration in seconds"),
        ({"envoy_tracing_json": "{"}, "not valid JSON"),
        ({"envoy_tracing_json": "[]"}, "JSON object"),
        ({"envoy_stats_tags": "a=b"}, "list of strings"),
        ({"envoy_stats_tags": [""]}, "non-empty strings"),
        ({"envoy_extra_static_clusters_json": "1"}, "JSON objects"),
    ],
)
def test_bad_bootstrap_keys_say_why(conf, reason):
    with pytest.raises(BootstrapConfigError, match=reason):
        boot(**conf)
