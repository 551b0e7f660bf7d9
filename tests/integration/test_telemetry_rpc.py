"""The telemetry RPC: only holders of the cluster key may add to the graph; bad bodies change
nothing."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import msgspec
from aiohttp import web
from helpers import free_port
from test_rpc_authority import KEY, Cluster, cluster  # noqa: F401 - the fixture

from meshd.server.cluster import Server, ServerSettings
from meshd.server.rpc import make_rpc_app
from meshd.server.telemetry import ForwardedReport, GraphRequest, graph_of
from meshd.telemetry import EdgeSample, SidecarReport, TelemetryReport

EDGE = EdgeSample(source="web", destination="api", protocol="http", interval_s=10, requests=50)
REPORT = ForwardedReport(
    Report=TelemetryReport(
        node="n1",
        sidecars=[
            SidecarReport(proxy_id="web-proxy", service="web", node="n1", at=0, edges=[EDGE])
        ],
    ),
    Forwarded=True,
)


def edges(c: Cluster) -> list[tuple[str, str]]:
    view = graph_of(c.server).view(now=float("inf"), window_s=float("inf"))
    return [(e["Source"], e["Destination"]) for e in view["Edges"]]


async def test_report_with_a_wrong_key_is_refused(cluster: Cluster) -> None:  # noqa: F811
    status, body = await cluster.post("/rpc/telemetry_report", REPORT, key=os.urandom(32))
    assert status == 403 and b"wrong cluster key" in body
    assert edges(cluster) == []


async def test_malformed_report_is_refused(cluster: Cluster) -> None:  # noqa: F811
    status, body = await cluster.post("/rpc/telemetry_report", {"Report": {"node": 5}})
    assert status == 400 and b"bad RPC body" in body
    assert edges(cluster) == []


async def test_report_shows_in_the_graph_rpc(cluster: Cluster) -> None:  # noqa: F811
    status, _ = await cluster.post("/rpc/telemetry_report", REPORT)
    assert status == 200
    assert edges(cluster) == [("web", "api")]
    status, body = await cluster.post("/rpc/telemetry_graph", GraphRequest(Window=30))
    assert status == 200
    view = msgspec.msgpack.decode(body)
    assert view["Edges"][0]["Metrics"]["RequestsPerSecond"] == 5.0


async def test_a_report_reaches_every_server(cluster: Cluster, tmp_path: Any) -> None:  # noqa: F811
    """Agents report to one server; it passes the report on once, so any server can answer."""
    other = Server(
        ServerSettings(
            node_name="s2",
            datacenter="dc1",
            advertise="127.0.0.1",
            rpc_port=free_port(),
            raft_port=free_port(),
            data_dir=str(tmp_path / "s2"),
            key=KEY,
            password=base64.b64encode(KEY).decode(),
        )
    )
    runner = web.AppRunner(make_rpc_app(other))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", other.s.rpc_port).start()
    try:
        cluster.server.known[other.raft_addr] = other.rpc_addr
        first = ForwardedReport(Report=REPORT.Report)  # from an agent: not yet forwarded
        status, _ = await cluster.post("/rpc/telemetry_report", first)
        assert status == 200
        for _ in range(100):
            if graph_of(other).edge_count():
                break
            await asyncio.sleep(0.05)
        view = graph_of(other).view(now=float("inf"), window_s=float("inf"))
        assert [(e["Source"], e["Destination"]) for e in view["Edges"]] == [("web", "api")]
        assert edges(cluster) == [("web", "api")]
    finally:
        await runner.cleanup()
