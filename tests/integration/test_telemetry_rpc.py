"""The telemetry RPC: only holders of the cluster key may add to the graph, and only about the
sidecars registered on the reporting node (with ACLs on, with node:write on it); refused and bad
bodies change nothing."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import msgspec
import pytest
from aiohttp import web
from helpers import free_port
from test_rpc_authority import KEY, Cluster, cluster  # noqa: F401 - the fixture

from meshd.server.cluster import Server, ServerSettings
from meshd.server.rpc import make_rpc_app
from meshd.server.telemetry import ForwardedReport, GraphRequest, graph_of
from meshd.structs import NodeService, Register
from meshd.telemetry import EdgeSample, InboundSample, SidecarReport, TelemetryReport

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


def sidecar(node: str, proxy_id: str = "web-proxy", service: str = "web") -> Register:
    """`proxy_id`, the sidecar of `service`, registered on `node`."""
    return Register(
        Node=node,
        Address="10.0.0.1",
        Service=NodeService(
            ID=proxy_id,
            Service=f"{service}-sidecar-proxy",
            Port=21000,
            Kind="connect-proxy",
            Proxy={"DestinationServiceName": service},
        ),
    )


@pytest.fixture
async def registered(cluster: Cluster) -> Cluster:  # noqa: F811
    """n1 runs web's sidecar (web-proxy); n2 runs api's (api-proxy)."""
    for cmd in (sidecar("n1"), sidecar("n2", "api-proxy", "api")):
        status, reply = await cluster.write(cmd)
        assert status == 200 and reply.Code == 0, reply  # type: ignore[union-attr]
    return cluster


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


async def test_report_shows_in_the_graph_rpc(registered: Cluster) -> None:
    status, _ = await registered.post("/rpc/telemetry_report", REPORT)
    assert status == 200
    assert edges(registered) == [("web", "api")]
    status, body = await registered.post("/rpc/telemetry_graph", GraphRequest(Window=30))
    assert status == 200
    view = msgspec.msgpack.decode(body)
    assert view["Edges"][0]["Metrics"]["RequestsPerSecond"] == 5.0


async def test_a_report_reaches_every_server(registered: Cluster, tmp_path: Any) -> None:
    """Agents report to one server; it passes the report on once, so any server can answer
    (and checks it again against its own catalog, here given the same sidecar)."""
    c = registered
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
    other.store.apply(sidecar("n1"), 1)
    runner = web.AppRunner(make_rpc_app(other))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", other.s.rpc_port).start()
    try:
        c.server.known[other.raft_addr] = other.rpc_addr
        first = ForwardedReport(Report=REPORT.Report)  # from an agent: not yet forwarded
        status, _ = await c.post("/rpc/telemetry_report", first)
        assert status == 200
        for _ in range(100):
            if graph_of(other).edge_count():
                break
            await asyncio.sleep(0.05)
        view = graph_of(other).view(now=float("inf"), window_s=float("inf"))
        assert [(e["Source"], e["Destination"]) for e in view["Edges"]] == [("web", "api")]
        assert edges(c) == [("web", "api")]
    finally:
        await runner.cleanup()


def report(node: str, *sidecars: SidecarReport) -> ForwardedReport:
    return ForwardedReport(Report=TelemetryReport(node=node, sidecars=list(sidecars)))


@pytest.mark.parametrize(
    ("forged", "reason"),
    [
        # n2 speaks for web's sidecar, which runs on n1
        (
            report("n2", SidecarReport(proxy_id="web-proxy", service="web", node="n2", at=0)),
            b"no sidecar 'web-proxy' is registered on that node",
        ),
        # n1 names its own sidecar but claims it fronts api
        (
            report("n1", SidecarReport(proxy_id="web-proxy", service="api", node="n1", at=0)),
            b"fronts 'web', not 'api'",
        ),
        # n1's sidecar reports an edge that starts at another service
        (
            report(
                "n1",
                SidecarReport(
                    proxy_id="web-proxy",
                    service="web",
                    node="n1",
                    at=0,
                    edges=[
                        EDGE,
                        EdgeSample(source="api", destination="db", protocol="tcp", interval_s=10),
                    ],
                ),
            ),
            b"reports traffic of another service (api)",
        ),
        # ... or inbound traffic of another service
        (
            report(
                "n1",
                SidecarReport(
                    proxy_id="web-proxy",
                    service="web",
                    node="n1",
                    at=0,
                    inbound=InboundSample(service="api", protocol="http", interval_s=10),
                ),
            ),
            b"reports traffic of another service (api)",
        ),
        # a node the catalog does not know at all
        (
            report(
                "ghost",
                SidecarReport(proxy_id="web-proxy", service="web", node="ghost", at=0),
            ),
            b"no sidecar 'web-proxy'",
        ),
    ],
)
async def test_a_forged_report_is_refused_and_changes_nothing(
    registered: Cluster, forged: ForwardedReport, reason: bytes
) -> None:
    status, body = await registered.post("/rpc/telemetry_report", forged)
    assert status == 403 and reason in body, body
    assert edges(registered) == []
    assert (
        graph_of(registered.server).view(now=float("inf"), window_s=float("inf"))["Services"] == []
    )
