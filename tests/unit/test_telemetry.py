"""Envoy admin stats -> edge metrics, on stats captured from real Envoys (tests/telemetry_mesh.py).

The captures are about 5 s apart (Envoy's uptime 5, 10, 15 s; the tests read them at 0, 5, 10):
t0 after 20 requests web->api (200) and 20 connections web->db; t1 after 10 more api requests
answered 503 and 30 answered 200, and 30 more db connections; t2 after a deny intention
web->api, with the 403s api's RBAC sent back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.telemetry import (
    EdgeSample,
    Scrape,
    StatsFormatError,
    buckets_delta,
    counter_delta,
    golden,
    merge_buckets,
    parse_admin_stats,
    percentile,
    sidecar_report,
    upstream_destinations,
)

RQ_TIME = "http.upstream.api.downstream_rq_time"
FIX = Path(__file__).parent.parent / "fixtures" / "envoy"


def scrape(name: str, at: float) -> Scrape:
    return parse_admin_stats(json.loads((FIX / f"{name}.json").read_text()), at)


def edges(prev: Scrape | None, cur: Scrape) -> dict[str, EdgeSample]:
    r = sidecar_report(proxy_id="web-sidecar-proxy", service="web", node="n1", prev=prev, cur=cur)
    return {e.destination: e for e in r.edges}


def test_edges_named_from_the_upstream_listeners():
    assert upstream_destinations(scrape("web-t1", 0)) == {"api": "http", "db": "tcp"}
    # api and db have no upstreams: no outbound edges, only their inbound side
    assert upstream_destinations(scrape("api-t1", 0)) == {}


def test_http_edge_counts_requests_and_5xx_between_two_scrapes():
    e = edges(scrape("web-t0", 0), scrape("web-t1", 5))["api"]
    assert (e.source, e.destination, e.protocol, e.interval_s) == ("web", "api", "http", 5)
    assert e.requests == 40 and e.errors_5xx == 10 and e.denied_4xx == 0
    assert e.rx_bytes > 0 and e.tx_bytes > 0
    g = golden({"web-1": [e]})
    assert g.rps == pytest.approx(8.0) and g.success_rate == pytest.approx(0.75)
    assert g.p50_ms is not None and g.p99_ms is not None and 0 <= g.p50_ms <= g.p99_ms


def test_tcp_edge_has_connections_and_bytes_but_no_requests():
    e = edges(scrape("web-t0", 0), scrape("web-t1", 5))["db"]
    assert e.protocol == "tcp" and e.requests == 0 and e.connections == 30
    assert e.rx_bytes > 0 and e.tx_bytes > 0
    g = golden({"web-1": [e]})
    assert g.success_rate is None and g.connections_per_s == pytest.approx(6.0)


def test_rbac_denials_seen_on_both_sides_of_the_edge():
    denied = edges(scrape("web-t1", 5), scrape("web-t2", 10))["api"].denied_4xx
    assert denied > 0
    a1, a2 = scrape("api-t1", 5), scrape("api-t2", 10)
    inbound = sidecar_report(proxy_id="api", service="api", node="n", prev=a1, cur=a2).inbound
    assert inbound is not None and inbound.protocol == "http"
    assert inbound.rbac_denied == denied
    before = sidecar_report(proxy_id="api", service="api", node="n", prev=None, cur=a1).inbound
    assert before is not None and before.rbac_denied == 0


def test_tcp_inbound_side_counts_connections():
    d0, d1 = scrape("db-t0", 0), scrape("db-t1", 5)
    inbound = sidecar_report(proxy_id="db", service="db", node="n", prev=d0, cur=d1).inbound
    assert inbound is not None and inbound.protocol == "tcp" and inbound.connections == 30


def test_counter_going_down_means_envoy_restarted():
    assert counter_delta(10, 15) == 5
    assert counter_delta(100, 7) == 7
    # a restart between t2 and t0: everything since the restart is the interval's count
    after_restart = edges(scrape("web-t2", 20), scrape("web-t0", 30))["api"]
    fresh = edges(None, scrape("web-t0", 30))["api"]
    assert after_restart.requests == fresh.requests > 0
    assert after_restart.latency == fresh.latency


def test_restart_seen_in_uptime_even_when_counters_grew_back():
    # web-t0 (uptime 5 s) then web-t1 (uptime 10 s) read 100 s apart: Envoy restarted between
    prev, cur = scrape("web-t0", 0), scrape("web-t1", 100)
    e = edges(prev, cur)["api"]
    assert e.requests == edges(None, cur)["api"].requests and e.interval_s == 100
    # read 5 s apart, the same pair is one Envoy: the delta only
    assert edges(scrape("web-t0", 0), scrape("web-t1", 5))["api"].requests == 40


def test_histogram_reset_takes_the_new_buckets():
    prev = ((1.0, 5), (5.0, 9))
    assert buckets_delta(prev, ((1.0, 6), (5.0, 12))) == ((1.0, 1), (5.0, 3))
    assert buckets_delta(prev, ((1.0, 2), (5.0, 2))) == ((1.0, 2), (5.0, 2))


def test_percentiles_interpolate_inside_buckets():
    b = ((1.0, 0), (5.0, 10), (10.0, 20))
    assert percentile(b, 0.5) == pytest.approx(5.0)
    assert percentile(b, 0.99) == pytest.approx(9.9)
    assert percentile(((1.0, 0), (5.0, 0)), 0.5) is None
    assert percentile((), 0.5) is None


def test_instances_merge_before_percentiles():
    a = EdgeSample(
        source="web",
        destination="api",
        protocol="http",
        interval_s=10,
        requests=10,
        latency=((1.0, 10), (100.0, 10)),
    )
    b = EdgeSample(
        source="web",
        destination="api",
        protocol="http",
        interval_s=10,
        requests=10,
        errors_5xx=5,
        latency=((1.0, 0), (100.0, 10)),
    )
    assert merge_buckets([a.latency, b.latency]) == ((1.0, 10), (100.0, 20))
    g = golden({"web-1": [a], "web-2": [b]})
    assert g.rps == pytest.approx(2.0) and g.success_rate == pytest.approx(0.75)
    assert g.p50_ms == pytest.approx(1.0) and g.p99_ms is not None and g.p99_ms > 90


@pytest.mark.parametrize(
    "doc",
    [
        "text",
        {"stats": "x"},
        {"stats": [1]},
        {"stats": [{"histograms": {"supported_quantiles": [50], "computed_quantiles": []}}]},
        {"stats": [{"histograms": [{"name": RQ_TIME, "buckets": [{"upper_bound": 1}]}]}]},
    ],
)
def test_not_envoy_stats_is_a_clear_error(doc):
    with pytest.raises(StatsFormatError):
        parse_admin_stats(doc, 0)
