"""Sidecar observability with real Envoys: Consul's stats tags on the Prometheus endpoint,
access logs from proxy-defaults, and traces reaching a Zipkin collector.

proxy-defaults is global: each test restores it before it ends.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import free_ports, run_meshd, wait_for
from telemetry_mesh import TelemetryMesh, start_mesh

from meshd.proxy_observability import DEFAULT_JSON_FORMAT

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def mesh() -> Iterator[TelemetryMesh]:
    m = start_mesh()
    yield m
    m.close()
    m.agent.stop()


def set_proxy_defaults(mesh: TelemetryMesh, **fields: Any) -> int:
    body = {"Kind": "proxy-defaults", "Name": "global", **fields}
    return int(mesh.agent.put("/v1/config", body).status)


def clear_proxy_defaults(mesh: TelemetryMesh) -> None:
    mesh.agent.request("DELETE", "/v1/config/proxy-defaults/global")


def get(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            r.read()
            return int(r.status)
    except OSError:
        return 0


def metric_lines(mesh: TelemetryMesh, name: str) -> list[str]:
    url = f"http://127.0.0.1:{mesh.ports['prom-web']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read().decode()
    return [line for line in body.splitlines() if line.startswith(name + "{")]


def labels(line: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))


def test_upstream_cluster_metrics_carry_consuls_destination_tags(mesh):
    assert mesh.call("up-api") == 200
    rows = [labels(x) for x in metric_lines(mesh, "envoy_cluster_upstream_rq_total")]
    api = [r for r in rows if r.get("consul_destination_service") == "api"]
    assert api, rows
    tags = api[0]
    assert tags["consul_destination_namespace"] == "default"
    assert tags["consul_destination_datacenter"] == "dc1"
    assert tags["consul_destination_routing_type"] == "internal"
    assert tags["consul_destination_target"] == "api.default.dc1"
    trust_domain = tags["consul_destination_trust_domain"]
    assert tags["consul_destination_full_target"] == f"api.default.dc1.internal.{trust_domain}"
    # the source side, on every metric, as Consul's bootstrap sets it
    assert tags["local_cluster"] == "web" and tags["consul_source_service"] == "web"
    assert tags["consul_source_datacenter"] == "dc1"
    assert tags["consul_source_namespace"] == "default"
    # the name is cut out of the metric: no metric name still holds the cluster name
    assert not metric_lines(mesh, f"envoy_cluster_api_default_dc1_internal_{trust_domain}")


def test_the_label_sets_consuls_grafana_dashboards_query_have_data(mesh):
    """The service-to-service and service dashboards' selectors (Consul's grafana/ folder):
    upstream requests by local_cluster and consul_destination_service, latency buckets by
    consul_destination_target, inbound requests by local_cluster on the public listener."""
    for _ in range(5):
        assert mesh.call("up-api") == 200

    def find(lines: list[str], want: dict[str, str]) -> list[float]:
        return [float(x.rsplit(" ", 1)[1]) for x in lines if want.items() <= labels(x).items()]

    ok = {"local_cluster": "web", "consul_destination_service": "api"}
    assert sum(find(metric_lines(mesh, "envoy_cluster_upstream_rq_total"), ok)) >= 5
    xx = find(
        metric_lines(mesh, "envoy_cluster_upstream_rq_xx"), {**ok, "envoy_response_code_class": "2"}
    )
    assert sum(xx) >= 5
    # histograms reach Prometheus at Envoy's stats flush (5 s)
    target = {"local_cluster": "web", "consul_destination_target": "api.default.dc1", "le": "+Inf"}
    wait_for(
        lambda: sum(find(metric_lines(mesh, "envoy_cluster_upstream_rq_time_bucket"), target)), 15
    )
    inbound = mesh.admin_get("api", "/stats/prometheus").splitlines()
    rows = [x for x in inbound if x.startswith("envoy_http_downstream_rq_xx{")]
    public = {"local_cluster": "api", "envoy_http_conn_manager_prefix": "public_listener"}
    assert sum(find(rows, {**public, "envoy_response_code_class": "2"})) >= 5


def test_upstream_listener_metrics_carry_the_upstream_service(mesh):
    assert mesh.call("up-api") == 200
    rows = [labels(x) for x in metric_lines(mesh, "envoy_http_downstream_rq_completed")]
    up = [r for r in rows if r.get("envoy_http_conn_manager_prefix") == "upstream"]
    assert {r["consul_upstream_service"] for r in up} == {"api"}
    assert {r["meshd_destination"] for r in up} == {"api"}


def test_access_logs_to_a_file_in_consuls_json_format(mesh, tmp_path: Path):
    log = tmp_path / "access.log"
    assert (
        set_proxy_defaults(mesh, AccessLogs={"Enabled": True, "Type": "file", "Path": str(log)})
        == 200
    )
    try:

        def logged() -> list[dict[str, Any]]:
            mesh.call("up-api", "/logged")
            if not log.exists():
                return []
            rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            rows = [r for r in rows if r.get("path") == "/logged"]
            # both sidecars (web's on the way out, api's on the way in) write to the file
            return rows if len({r["upstream_cluster"] for r in rows}) > 1 else []

        rows = wait_for(logged, 30)
        # every field of Consul's default format is there
        assert set(DEFAULT_JSON_FORMAT) <= set(rows[0]), rows[0]
        outbound = [r for r in rows if r["upstream_cluster"].startswith("api.default.dc1.")]
        assert outbound, rows
        assert outbound[0]["method"] == "GET" and outbound[0]["response_code"] == 200
        inbound = [r for r in rows if r["upstream_cluster"] == "local_app"]
        assert inbound and inbound[0]["response_code"] == 200, rows
    finally:
        clear_proxy_defaults(mesh)


def test_access_logs_off_again_stops_writing(mesh, tmp_path: Path):
    log = tmp_path / "access.log"
    assert (
        set_proxy_defaults(mesh, AccessLogs={"Enabled": True, "Type": "file", "Path": str(log)})
        == 200
    )
    wait_for(lambda: mesh.call("up-api") == 200 and log.exists() and log.stat().st_size > 0, 30)
    assert set_proxy_defaults(mesh, AccessLogs={"Enabled": False}) == 200
    try:
        # once the change is in, requests add nothing: several in a row leave the size alone
        def quiet() -> bool:
            before = log.stat().st_size
            for _ in range(3):
                mesh.call("up-api", "/after")
            return log.stat().st_size == before

        wait_for(quiet, 30)
        for _ in range(3):
            assert mesh.call("up-api", "/final") == 200
        assert "/final" not in log.read_text()
    finally:
        clear_proxy_defaults(mesh)


@pytest.mark.parametrize(
    ("logs", "reason"),
    [
        ({"Enabled": True, "Type": "file"}, "Path is required"),
        ({"Enabled": True, "Type": "syslog"}, "Type must be one of"),
        ({"Enabled": True, "Path": "/tmp/x"}, "only allowed"),
        ({"Enabled": True, "JSONFormat": "{", "Type": "stdout"}, "not JSON"),
        ({"Enabled": True, "JSONFormat": '{"a":"b"}', "TextFormat": "x"}, "not both"),
    ],
)
def test_bad_access_logs_are_refused_and_change_nothing(mesh, logs, reason):
    r = mesh.agent.put(
        "/v1/config", {"Kind": "proxy-defaults", "Name": "global", "AccessLogs": logs}
    )
    assert r.status == 400 and reason in r.body.decode(), r.body
    assert mesh.agent.get("/v1/config/proxy-defaults/global").status == 404


def test_traces_reach_a_zipkin_collector_with_the_callers_trace_id(mesh):
    (port,) = free_ports(1)
    spans: list[dict[str, Any]] = []

    async def collector(request: web.Request) -> web.Response:
        if request.path == "/api/v2/spans" and request.method == "POST":
            spans.extend(await request.json())
            return web.Response(status=202)
        return web.Response(status=404)

    mesh.apps.serve(port, collector)
    cfg = {"tracing": {"zipkin": f"127.0.0.1:{port}"}}
    assert set_proxy_defaults(mesh, Config=cfg) == 200
    try:
        url = f"http://127.0.0.1:{mesh.ports['up-api']}/traced"

        def traced() -> list[dict[str, Any]]:
            get(url, {"traceparent": TRACEPARENT})
            mine = [s for s in spans if s.get("traceId") == TRACE_ID]
            # each sidecar takes the new config and flushes its spans on its own schedule
            names = {s["localEndpoint"]["serviceName"] for s in mine}
            return mine if {"web", "api"} <= names else []

        try:
            mine = wait_for(traced, 40, interval=1)
        except AssertionError as e:  # the caller's sidecar must join the W3C trace, not only api's
            raise AssertionError(f"no span from both sidecars: {spans}") from e
        assert any(s.get("tags", {}).get("http.url", "").endswith("/traced") for s in mine)
        # the trace context goes on to the app, in both W3C and B3 form
        seen = {k.lower(): v for k, v in mesh.last_headers["api"].items()}
        assert seen["x-b3-traceid"] == TRACE_ID
        assert seen["traceparent"].split("-")[1] == TRACE_ID
    finally:
        clear_proxy_defaults(mesh)


def test_bad_tracing_config_is_refused(mesh):
    for cfg, reason in (
        ({"zipkin": "nohost"}, "host:port"),
        ({"zipkin": "a:1", "opentelemetry": "b:2"}, "exactly one"),
        ({"zipkin": "a:1", "sampling": 101}, "between 0 and 100"),
    ):
        r = mesh.agent.put(
            "/v1/config", {"Kind": "proxy-defaults", "Name": "global", "Config": {"tracing": cfg}}
        )
        assert r.status == 400 and reason in r.body.decode(), r.body
    assert mesh.agent.get("/v1/config/proxy-defaults/global").status == 404


def test_connect_envoy_refuses_a_bad_bootstrap_key_with_the_reason(mesh):
    (port,) = free_ports(1)
    body = {
        "Name": "odd",
        "Port": port,
        "Connect": {
            "SidecarService": {"Proxy": {"Config": {"envoy_stats_flush_interval": "5 seconds"}}}
        },
    }
    assert mesh.agent.put("/v1/agent/service/register", body).status == 200
    try:
        out = run_meshd(
            "connect", "envoy", "-sidecar-for=odd", "-bootstrap", http_addr=mesh.agent.http
        )
        assert out.returncode != 0
        assert "envoy_stats_flush_interval must be a duration" in out.stderr, out
        ok = run_meshd(
            "connect", "envoy", "-sidecar-for=web", "-bootstrap", http_addr=mesh.agent.http
        )
        assert ok.returncode == 0, ok
        tags = json.loads(ok.stdout)["stats_config"]["stats_tags"]
        assert {"tag_name": "consul.source.datacenter", "fixed_value": "dc1"} in tags
    finally:
        mesh.agent.put("/v1/agent/service/deregister/odd", {})


def test_a_sidecars_own_access_logs_and_tracing_are_checked_at_registration(mesh):
    (port,) = free_ports(1)

    def register(proxy: dict[str, Any]) -> Any:
        body = {"Name": "logged", "Port": port, "Connect": {"SidecarService": {"Proxy": proxy}}}
        return mesh.agent.put("/v1/agent/service/register", body)

    bad = register({"AccessLogs": {"Enabled": True, "Type": "file"}})
    assert bad.status == 400 and b"Path is required" in bad.body, bad.body
    bad = register({"Config": {"tracing": {"zipkin": "nowhere"}}})
    assert bad.status == 400 and b"host:port" in bad.body, bad.body
    assert mesh.agent.get("/v1/agent/service/logged").status == 404  # nothing registered
    ok = register({"access_logs": {"enabled": True, "type": "stderr"}})  # HCL-style names too
    assert ok.status == 200, ok.body
    try:
        proxy = mesh.agent.get("/v1/agent/service/logged-sidecar-proxy").json()["Proxy"]
        assert proxy["AccessLogs"] == {"Enabled": True, "Type": "stderr"}
    finally:
        mesh.agent.put("/v1/agent/service/deregister/logged", {})
