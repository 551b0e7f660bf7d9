"""With ACLs on, a telemetry report counts only with a token that has node:write on the
reporting node (the agent's own token, as for its catalog writes)."""

from __future__ import annotations

from typing import Any

from test_acl_rpc import KEY, MGMT, RPC, _agent_token, rpc  # noqa: F401 - the fixture

from meshd.rpc import AUTH_HEADER, encoder, sign
from meshd.server.telemetry import ForwardedReport, graph_of
from meshd.structs import NodeService, Register
from meshd.telemetry import EdgeSample, SidecarReport, TelemetryReport

EDGE = EdgeSample(source="web", destination="api", protocol="http", interval_s=10, requests=50)


def report(token: str) -> ForwardedReport:
    sc = SidecarReport(proxy_id="web-proxy", service="web", node="node-a", at=0, edges=[EDGE])
    return ForwardedReport(Report=TelemetryReport(node="node-a", sidecars=[sc]), Token=token)


async def post(rpc: RPC, payload: Any) -> tuple[int, bytes]:  # noqa: F811
    path = "/rpc/telemetry_report"
    body = encoder.encode(payload)
    resp = await rpc.client.post(path, data=body, headers={AUTH_HEADER: sign(KEY, path, body)})
    return resp.status, await resp.read()


def edge_count(rpc: RPC) -> int:  # noqa: F811
    return graph_of(rpc.server).edge_count()


async def test_report_needs_node_write_on_the_reporting_node(rpc: RPC) -> None:  # noqa: F811
    proxy = NodeService(
        ID="web-proxy",
        Service="web-sidecar-proxy",
        Port=21000,
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "web"},
    )
    reg = Register(Node="node-a", Address="10.0.0.1", Service=proxy)
    assert (await rpc.write(reg, MGMT)).Code == 0
    _, other_node = await _agent_token(rpc, "node-b")
    for token, reason in (
        ("", b"lacks node:write"),  # anonymous, default deny
        (other_node, b"lacks node:write"),
        ("not-a-token", b"ACL not found"),
    ):
        status, body = await post(rpc, report(token))
        assert status == 403 and reason in body, body
        assert edge_count(rpc) == 0
    _, own = await _agent_token(rpc, "node-a")
    status, body = await post(rpc, report(own))
    assert status == 200, body
    assert edge_count(rpc) == 1
