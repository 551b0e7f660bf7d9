"""The servers' in-memory graph: reporters add up, history in 10 s steps, 15 minutes kept."""

from __future__ import annotations

import itertools

import pytest

from meshd.server.telemetry import HISTORY_S, STEP_S, TelemetryGraph
from meshd.telemetry import EdgeSample, InboundSample, SidecarReport, TelemetryReport


def report(node: str, proxy: str, service: str, requests: int, errors: int = 0) -> TelemetryReport:
    edge = EdgeSample(
        source=service,
        destination="api",
        protocol="http",
        interval_s=10,
        requests=requests,
        errors_5xx=errors,
        active_connections=1,
        latency=((1.0, requests - errors), (50.0, requests)),
    )
    inbound = InboundSample(service=service, protocol="http", interval_s=10, requests=3)
    sc = SidecarReport(
        proxy_id=proxy, service=service, node=node, at=0, edges=[edge], inbound=inbound
    )
    return TelemetryReport(node=node, sidecars=[sc])


def web_api(view: dict) -> dict:
    (e,) = [e for e in view["Edges"] if (e["Source"], e["Destination"]) == ("web", "api")]
    return e


def test_two_instances_of_a_caller_add_up():
    g = TelemetryGraph()
    g.ingest(report("n1", "web-1", "web", 100), now=1000)
    g.ingest(report("n2", "web-2", "web", 50, errors=50), now=1001)
    view = g.view(now=1005, window_s=30)
    m = web_api(view)["Metrics"]
    assert m["RequestsPerSecond"] == pytest.approx(15.0)
    assert m["SuccessRate"] == pytest.approx(100 / 150, abs=1e-3)
    assert m["ActiveConnections"] == 2
    # 150 samples: 100 under 1 ms, 50 in (1, 50]: the median is 3/4 into the first bucket
    assert m["P50Ms"] == pytest.approx(0.75) and 1.0 < m["P99Ms"] <= 50.0
    web = next(s for s in view["Services"] if s["Name"] == "web")
    assert web["Reporters"] == 2 and web["Inbound"]["RequestsPerSecond"] == pytest.approx(0.6)
    # api never reported (no sidecar read), but it is an edge's end: it is in the graph
    assert "api" in {s["Name"] for s in view["Services"]}


def test_window_leaves_out_older_samples():
    g = TelemetryGraph()
    g.ingest(report("n1", "web-1", "web", 100), now=1000)
    g.ingest(report("n1", "web-1", "web", 10), now=1040)
    m = web_api(g.view(now=1045, window_s=30))["Metrics"]
    assert m["RequestsPerSecond"] == pytest.approx(1.0)


def test_history_in_steps_and_pruned_after_fifteen_minutes():
    g = TelemetryGraph()
    t0 = 10_000.0
    for i in range(5):
        g.ingest(report("n1", "web-1", "web", 10 * (i + 1)), now=t0 + i * STEP_S + 1)
    hist = web_api(g.view(now=t0 + 50, window_s=30, history=True))["History"]
    assert [round(h["RequestsPerSecond"]) for h in hist] == [1, 2, 3, 4, 5]
    assert all(b["Time"] - a["Time"] == STEP_S for a, b in itertools.pairwise(hist))
    g.ingest(report("n1", "web-9", "other", 1), now=t0 + HISTORY_S + 100)
    assert [e["Source"] for e in g.view(now=t0 + HISTORY_S + 100, window_s=30)["Edges"]] == [
        "other"
    ]
