"""Timers as Consul's /v1/agent/metrics shows them (Samples) and as Prometheus summaries."""

from __future__ import annotations

import math

from meshd.metrics import Stats, Timer, consul_json, prom_name, prometheus_text


def test_timer_sample_in_consuls_shape():
    t = Timer()
    for ms in (1.0, 2.0, 3.0, 6.0):
        t.observe(ms)
    row = t.to_json("consul.raft.commitTime", 6.0)
    assert row["Rate"] == 2.0  # Sum per second, as Consul's
    assert (row["Count"], row["Sum"], row["Min"], row["Max"], row["Mean"]) == (4, 12, 1, 6, 3)
    assert math.isclose(row["Stddev"], math.sqrt((4 + 1 + 0 + 9) / 4))
    assert t.quantile(0.5) == 3.0 and t.quantile(0.99) == 6.0


def test_only_observed_timers_are_listed_in_samples():
    s = Stats()
    s.timer("consul.dns.ptr_query")
    s.timer("consul.dns.domain_query").observe(0.5)
    names = [r["Name"] for r in consul_json(s)["Samples"]]
    assert names == ["consul.dns.domain_query"]


def test_prometheus_names_and_summary():
    assert prom_name("consul.http.GET.v1.internal.ui.service-topology._") == (
        "consul_http_GET_v1_internal_ui_service_topology__"
    )
    s = Stats()
    s.timer("consul.raft.commitTime").observe(4.0)
    s.named_counters["consul.raft.apply"] = lambda: 7
    text = prometheus_text(s).decode()
    assert 'consul_raft_commitTime{quantile="0.5"} 4.0' in text
    assert "consul_raft_commitTime_count 1.0" in text
    assert "consul_raft_apply_total 7.0" in text
