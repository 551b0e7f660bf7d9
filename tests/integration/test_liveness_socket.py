"""Heartbeats over the liveness socket, against a real server (Raft on disk, real sockets).

The agent's own `HeartbeatLink` talks to the server's `make_rpc_app`; a caller without the key,
a forged or replayed frame, and a report from a server that is not a Raft peer are refused and
change nothing.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from test_rpc_authority import KEY, Cluster, cluster  # noqa: F401 (the fixture)

from meshd.agent.liveness_client import HeartbeatLink
from meshd.liveness import (
    LIVENESS_PATH,
    REPORT_METHOD,
    LivenessReport,
    MemberSummary,
    placement,
    seal_frame,
)
from meshd.rpc import AUTH_HEADER, Heartbeat, encoder, sign
from meshd.rpc_client import RPCClient, RPCError


def _addr(c: Cluster) -> str:
    return f"127.0.0.1:{c.client.server.port}"


async def _passing(c: Cluster, node: str) -> bool:
    for _ in range(100):
        check = c.server.store.checks.get(node, {}).get("serfHealth")
        if check is not None and check.Status == "passing":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_heartbeats_over_the_socket_attach_the_node_to_this_server(
    cluster: Cluster,  # noqa: F811
) -> None:
    rpc = RPCClient([_addr(cluster)], KEY)
    link = HeartbeatLink(rpc, "sock-1")
    try:
        for _ in range(3):
            reply = await link.beat(Heartbeat(Node="sock-1", Address="10.0.0.7", Datacenter="dc1"))
            assert reply["Node"] == "s1" and reply["Self"] is False
        assert link.server == _addr(cluster)
        assert await _passing(cluster, "sock-1")
        members = {m.Name: m for m in await cluster.server.member_list()}
        assert members["sock-1"].Status == 1 and members["sock-1"].Server == "s1"
    finally:
        await link.close()
        await rpc.close()


async def test_a_socket_without_the_key_is_refused(cluster: Cluster) -> None:  # noqa: F811
    rpc = RPCClient([_addr(cluster)], b"\x01" * 32)
    link = HeartbeatLink(rpc, "intruder")
    try:
        with pytest.raises(RPCError, match="403"):
            await link.beat(Heartbeat(Node="intruder", Address="10.0.0.8", Datacenter="dc1"))
    finally:
        await link.close()
        await rpc.close()
    assert "intruder" not in cluster.server.members.nodes


async def test_a_forged_or_replayed_frame_closes_the_socket_and_records_nothing(
    cluster: Cluster,  # noqa: F811
) -> None:
    def beat(node: str) -> bytes:
        return encoder.encode(Heartbeat(Node=node, Address="10.0.0.9", Datacenter="dc1"))

    header = sign(KEY, LIVENESS_PATH, b"")
    conn = header.split(":")[1]
    ws = await cluster.client.ws_connect(LIVENESS_PATH, headers={AUTH_HEADER: header})
    await ws.send_bytes(seal_frame(KEY, conn, 1, beat("framed")))
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY
    await ws.send_bytes(seal_frame(KEY, conn, 1, beat("replayed")))  # the same sequence again
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and "out of sequence" in msg.extra
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # the upgrade request replayed
        await cluster.client.ws_connect(LIVENESS_PATH, headers={AUTH_HEADER: header})
    assert e.value.status == 403
    header = sign(KEY, LIVENESS_PATH, b"")
    ws = await cluster.client.ws_connect(LIVENESS_PATH, headers={AUTH_HEADER: header})
    await ws.send_bytes(seal_frame(b"\x02" * 32, header.split(":")[1], 1, beat("forged")))
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and "wrong cluster key" in msg.extra
    assert "framed" in cluster.server.members.nodes
    assert not {"replayed", "forged"} & set(cluster.server.members.nodes)


async def test_a_report_from_a_server_outside_raft_is_refused(cluster: Cluster) -> None:  # noqa: F811
    report = LivenessReport(
        Server="rogue",
        RaftAddr="10.9.9.9:8301",
        Full=True,
        Members=[MemberSummary(Node="victim", Address="10.0.0.5", Status=4)],
    )
    status, body = await cluster.post(f"/rpc/{REPORT_METHOD}", report)
    assert status == 403 and b"Raft peers only" in body
    assert "victim" not in cluster.server.store.nodes


async def test_a_server_that_accepts_but_never_answers_is_skipped(
    cluster: Cluster,  # noqa: F811
) -> None:
    """A paused server still accepts TCP (its listen backlog): the beat moves on to the next
    server instead of waiting on it, and the silent one is not tried first again."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent_addr = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    servers = [silent_addr, _addr(cluster)]
    node = next(f"n{i}" for i in range(1000) if placement(f"n{i}", servers)[0] == silent_addr)
    rpc = RPCClient(servers, KEY)
    link = HeartbeatLink(rpc, node)
    try:
        reply = await link.beat(Heartbeat(Node=node, Address="10.0.0.7", Datacenter="dc1"))
        assert reply["Node"] == "s1" and link.server == _addr(cluster)
        assert link.order()[0] == _addr(cluster)
        assert node in cluster.server.members.nodes
    finally:
        await link.close()
        await rpc.close()
        silent.close()
