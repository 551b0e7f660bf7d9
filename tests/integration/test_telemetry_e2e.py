"""The service graph from real Envoys: traffic web -> api (HTTP) and web -> db (TCP).

The agent reads its sidecars every second here (MESHD_TELEMETRY_INTERVAL=1); a background
thread sends web -> api at RATE requests per second on an absolute schedule, and some db
connections, for the whole module.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from helpers import run_meshd, wait_for
from telemetry_mesh import RATE, TelemetryMesh, Traffic, start_mesh

WINDOW = "10s"


@pytest.fixture(scope="module")
def mesh():
    m = start_mesh(env={"MESHD_TELEMETRY_INTERVAL": "1"})
    traffic = Traffic(m)
    m.traffic = traffic  # type: ignore[attr-defined]
    yield m
    traffic.stop.set()
    traffic.thread.join(5)
    m.close()
    m.agent.stop()


def graph(mesh: TelemetryMesh) -> dict[str, Any]:
    r = mesh.agent.get(f"/v1/meshd/graph?window={WINDOW}")
    assert r.status == 200, r.body
    return r.json()


def edge(mesh: TelemetryMesh, src: str, dst: str) -> dict[str, Any] | None:
    return next(
        (e for e in graph(mesh)["Edges"] if (e["Source"], e["Destination"]) == (src, dst)), None
    )


def steady(mesh: TelemetryMesh) -> dict[str, Any]:
    """The web -> api edge once a whole window of samples has traffic in it."""
    wait_for(
        lambda: (edge(mesh, "web", "api") or {}).get("Metrics", {}).get("RequestsPerSecond"), 30
    )
    time.sleep(11)  # one window: the early, partial samples have left it
    e = edge(mesh, "web", "api")
    assert e is not None
    return e


def test_rate_shows_in_graph_within_ten_percent(mesh):
    e = steady(mesh)
    late_before = mesh.traffic.late
    m = e["Metrics"]
    assert e["Protocol"] == "http" and e["Denied"] is False
    assert e["Intention"]["Allowed"] is True
    # the sender kept its schedule (else the known rate is not known)
    assert mesh.traffic.late - late_before < RATE
    assert abs(m["RequestsPerSecond"] - RATE) <= 0.1 * RATE, m
    assert m["SuccessRate"] == 1.0
    assert m["P50Ms"] is not None and m["P50Ms"] <= m["P99Ms"]
    assert m["RxBytesPerSecond"] > 0 and m["TxBytesPerSecond"] > 0
    api = next(s for s in graph(mesh)["Services"] if s["Name"] == "api")
    assert abs(api["Inbound"]["RequestsPerSecond"] - RATE) <= 0.1 * RATE


def test_tcp_edge_has_connections_and_bytes(mesh):
    wait_for(
        lambda: (edge(mesh, "web", "db") or {}).get("Metrics", {}).get("ConnectionsPerSecond"), 30
    )
    m = edge(mesh, "web", "db")["Metrics"]
    assert edge(mesh, "web", "db")["Protocol"] == "tcp"
    assert m["SuccessRate"] is None and m["RequestsPerSecond"] == 0
    assert abs(m["ConnectionsPerSecond"] - RATE / 4) <= 0.2 * RATE / 4, m
    assert m["RxBytesPerSecond"] > 0 and m["TxBytesPerSecond"] > 0


def test_success_rate_drops_when_api_answers_503(mesh):
    steady(mesh)
    mesh.api_status = 503
    try:
        low = wait_for(
            lambda: (
                (sr := edge(mesh, "web", "api")["Metrics"]["SuccessRate"]) is not None
                and sr < 0.5
                and sr
            ),
            20,
            interval=0.5,
        )
        assert low < 0.5
    finally:
        mesh.api_status = 200
    wait_for(lambda: edge(mesh, "web", "api")["Metrics"]["SuccessRate"] == 1.0, 30, interval=0.5)


def test_deny_intention_marks_the_edge_denied(mesh):
    a = mesh.agent
    assert edge(mesh, "web", "api")["Denied"] is False
    r = a.put("/v1/connect/intentions/exact?source=web&destination=api", {"Action": "deny"})
    assert r.status == 200
    try:
        e = edge(mesh, "web", "api")
        assert e["Denied"] is True and e["Intention"]["Allowed"] is False
        assert e["Intention"]["HasExact"] is True
        # and the refusals show up as measured denials on the edge and at api's sidecar
        wait_for(lambda: edge(mesh, "web", "api")["Metrics"]["DeniedPerSecond"] > 0, 20)
        api = next(s for s in graph(mesh)["Services"] if s["Name"] == "api")
        assert api["Inbound"]["DeniedPerSecond"] > 0
        topo = a.get("/v1/internal/ui/service-topology/api?kind=").json()
        down = {d["Name"]: d for d in topo["Downstreams"]}
        assert down["web"]["Intention"]["Allowed"] is False
        out = run_meshd("explain", "web", "api", http_addr=a.http)
        assert out.returncode == 2, out
        assert "[FAIL] intention: Matched L4 intention DENY web => api" in out.stdout
        assert "web cannot reach api" in out.stdout
    finally:
        a.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=api")
    assert edge(mesh, "web", "api")["Denied"] is False


def test_service_topology_in_consuls_shape(mesh):
    a = mesh.agent
    r = a.get("/v1/internal/ui/service-topology/web")
    assert r.status == 400 and b"Missing service kind" in r.body
    web = a.get("/v1/internal/ui/service-topology/web?kind=").json()
    assert [u["Name"] for u in web["Upstreams"]] == ["api", "db"]
    assert web["Downstreams"] == []
    api_up = web["Upstreams"][0]
    assert api_up["Intention"]["Allowed"] is True and api_up["Source"] == "registration"
    assert api_up["InstanceCount"] == 1 and api_up["ConnectedWithProxy"] is True
    assert api_up["Metrics"]["RequestsPerSecond"] > 0
    api = a.get("/v1/internal/ui/service-topology/api?kind=").json()
    assert api["Protocol"] == "http" and [d["Name"] for d in api["Downstreams"]] == ["web"]
    assert api["Upstreams"] == []


def test_cli_top_and_explain(mesh):
    steady(mesh)
    out = run_meshd("top", "-once", http_addr=mesh.agent.http)
    assert out.returncode == 0, out
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert rows["api"][-1] == "web" and float(rows["api"][1]) > 0
    assert rows["db"][-1] == "web"
    ok = run_meshd("explain", "web", "api", http_addr=mesh.agent.http)
    assert ok.returncode == 0, ok
    assert "[ok] intention" in ok.stdout and "web can reach api" in ok.stdout
    assert "spiffe://" in ok.stdout


def test_agent_metrics_under_consul_names(mesh):
    wait_for(lambda: mesh.traffic.sent > 0, 10)
    gauges = {g["Name"]: g["Value"] for g in mesh.agent.get("/v1/agent/metrics").json()["Gauges"]}
    assert gauges["consul.xds.server.streams"] >= 3  # one ADS stream per sidecar
    assert gauges["meshd.xds.envoys"] == 3
    assert gauges["consul.server.isLeader"] == 1
    assert gauges["consul.state.services"] >= 3
    assert gauges["meshd.telemetry.scrapes"] > 0
    assert gauges["meshd.telemetry.graph_edges"] == 2
    prom = mesh.agent.get("/v1/agent/metrics?format=prometheus").body.decode()
    assert "\nconsul_xds_server_streams " in prom and "\nconsul_server_isLeader 1.0" in prom


def test_rate_survives_a_restart_of_the_callers_envoy(mesh):
    """Envoy's counters start again from zero: a delta that would be negative is a reset."""
    steady(mesh)
    mesh.restart_sidecar("web")
    wait_for(lambda: mesh.call("up-api") == 200, 30)
    e = steady(mesh)
    assert abs(e["Metrics"]["RequestsPerSecond"] - RATE) <= 0.1 * RATE, e
    hist = mesh.agent.get("/v1/meshd/graph?window=10s&history").json()
    (edge_hist,) = [
        x["History"] for x in hist["Edges"] if (x["Source"], x["Destination"]) == ("web", "api")
    ]
    # every 10 s step, across the restart, stays a plausible rate (never negative, no spike)
    assert all(0 <= step["RequestsPerSecond"] <= 1.5 * RATE for step in edge_hist), edge_hist


def test_sidecar_serves_prometheus_metrics_when_asked(mesh):
    """`envoy_prometheus_bind_addr` in web's proxy config: `/metrics` there, nothing else of
    Envoy's admin API."""
    base = f"http://127.0.0.1:{mesh.ports['prom-web']}"
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        body = r.read().decode()
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in body
    # the upstream's destination is a tag (meshd_destination), not part of the metric's name
    completed = [
        dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        for line in body.splitlines()
        if line.startswith("envoy_http_downstream_rq_completed{")
    ]
    assert {
        "meshd_destination": "api",
        "envoy_http_conn_manager_prefix": "upstream",
    }.items() <= next(x for x in completed if x.get("meshd_destination")).items()
    assert not any("upstream_api_" in line.split("{")[0] for line in body.splitlines())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/quitquitquit", timeout=5)
    assert e.value.code == 404
