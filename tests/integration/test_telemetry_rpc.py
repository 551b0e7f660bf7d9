"""The telemetry RPC: only holders of the cluster key may add to the graph; bad bodies change
nothing."""

from __future__ import annotations

import os

import msgspec
from test_rpc_authority import Cluster, cluster  # noqa: F401 - the fixture

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
