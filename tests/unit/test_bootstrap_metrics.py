"""Consul's metrics listeners in the Envoy bootstrap (envoy_prometheus_bind_addr and
envoy_stats_bind_addr): one admin path each, proxied to Envoy's own admin address."""

from __future__ import annotations

import pytest

from meshd.proxy.bootstrap import bootstrap_config


def build(**kw):
    return bootstrap_config(
        node_id="web-sidecar-proxy",
        cluster="web",
        ads_host="127.0.0.1",
        ads_port=8502,
        admin_bind="0.0.0.0:19005",
        **kw,
    )


def routes(listener):
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]


def test_no_metrics_listener_unless_asked():
    static = build()["static_resources"]
    assert [c["name"] for c in static["clusters"]] == ["meshd_ads"]
    assert "listeners" not in static


def test_prometheus_listener_exposes_only_metrics():
    static = build(prometheus_bind="0.0.0.0:9102", stats_bind="127.0.0.1:9103")["static_resources"]
    prom, stats = static["listeners"]
    assert prom["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9102}
    first, rest = routes(prom)
    assert first["match"] == {"path": "/metrics"}
    assert first["route"] == {"cluster": "self_admin", "prefix_rewrite": "/stats/prometheus"}
    assert rest["direct_response"] == {"status": 404}
    assert routes(stats)[0]["match"] == {"prefix": "/stats"}  # Consul: /stats/prometheus too
    (admin,) = [c for c in static["clusters"] if c["name"] == "self_admin"]
    ep = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    # a wildcard admin bind is reached over loopback
    assert ep["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19005}


def test_bad_bind_address_is_refused():
    with pytest.raises(ValueError, match="expected host:port"):
        build(prometheus_bind="9102")
