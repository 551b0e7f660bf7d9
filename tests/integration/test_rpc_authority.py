"""The servers' RPC write endpoint, signed with the cluster key as an agent signs it.

A real server (Raft journal on disk) behind the real `make_rpc_app`, on a real socket: a key
holder that bypasses the agent's checks still cannot propose a server-only command, nor a
command the servers' rules refuse, and the state does not change.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers import free_port

from meshd import queries as q
from meshd.agent.backend import RemoteBackend
from meshd.rpc import AUTH_HEADER, Heartbeat, WriteReply, WriteRequest, encoder, sign
from meshd.rpc_client import RPCClient
from meshd.server.authority import CommandForbiddenError
from meshd.server.cluster import Server, ServerSettings
from meshd.server.rpc import make_rpc_app
from meshd.server.store import CommandError, StateConflictError
from meshd.structs import (
    CASetRoots,
    HealthCheck,
    KVOp,
    NodeService,
    NodeStatus,
    Register,
    Restore,
    Session,
    SessionInvalidate,
    SessionOp,
)

KEY = os.urandom(32)


@dataclass
class Cluster:
    server: Server
    client: TestClient[Any, Any]

    async def post(self, path: str, payload: Any, key: bytes = KEY) -> tuple[int, bytes]:
        body = encoder.encode(payload)
        resp = await self.client.post(path, data=body, headers={AUTH_HEADER: sign(key, path, body)})
        return resp.status, await resp.read()

    async def write(self, cmd: Any, key: bytes = KEY) -> tuple[int, WriteReply | bytes]:
        status, data = await self.post("/rpc/write", WriteRequest(Command=cmd), key)
        if status != 200:
            return status, data
        return 200, msgspec.msgpack.decode(data, type=WriteReply)

    def state(self) -> bytes:
        """Everything the store holds except the index (the leader's own writes move it)."""
        s = self.server.store
        with s.lock:
            parts = [list(s.nodes.values()), dict(s.services), dict(s.checks)]
            return encoder.encode([*parts, list(s.kv.values()), s.mesh.dump()])


@pytest.fixture
async def cluster(tmp_path: Any) -> AsyncIterator[Cluster]:
    server = Server(
        ServerSettings(
            node_name="s1",
            datacenter="dc1",
            advertise="127.0.0.1",
            rpc_port=free_port(),
            raft_port=free_port(),
            data_dir=str(tmp_path),
            key=KEY,
            password=base64.b64encode(KEY).decode(),
        )
    )
    await server.start()
    client = TestClient(TestServer(make_rpc_app(server)))
    await client.start_server()
    try:
        for _ in range(200):  # a leader, and the CA it bootstraps on taking office
            if server.raft is not None and server.raft.is_leader and server.store.mesh.roots:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the server did not become leader with a CA")
        c = Cluster(server, client)
        status, reply = await c.write(KVOp(Verb="set", Key="before", Value=b"1"))
        assert status == 200 and isinstance(reply, WriteReply) and reply.Result is True
        yield c
    finally:
        await client.close()
        await server.close()


SERVER_ONLY = [
    CASetRoots(ClusterID="11111111-2222-3333-4444-555555555555", Roots=b"\x90"),
    Restore(Data=b""),  # filled in with a real snapshot of an empty store
    NodeStatus(Node="s1", Address="127.0.0.1", Status="critical"),
    SessionInvalidate(ID="5e2b0a7c-4b8f-4c1e-9e34-0b3f2c7a9d10"),
]


@pytest.mark.parametrize("cmd", SERVER_ONLY, ids=lambda c: type(c).__name__)
async def test_server_only_commands_are_refused_over_rpc(cluster: Cluster, cmd: Any) -> None:
    if isinstance(cmd, Restore):
        from meshd.server.store import Store

        cmd = Restore(Data=Store().dump())  # a valid snapshot: refused for who sent it
    before = cluster.state()
    status, reply = await cluster.write(cmd)
    assert status == 200 and isinstance(reply, WriteReply)
    assert reply.Code == 403
    tag = cmd.__struct_config__.tag
    assert reply.Error == f"command {tag!r} is issued only by servers"
    assert cluster.state() == before
    assert cluster.server.store.kv["before"].Value == b"1"


async def test_a_bad_registration_straight_to_the_server_is_refused(cluster: Cluster) -> None:
    """No agent in between: the server's own rules answer, with the reason, and nothing moves."""
    before = cluster.state()
    cases = [
        (
            Register(
                Node="n9",
                Address="10.0.0.9",
                Checks=[HealthCheck(Node="n9", CheckID="c", Name="c", ServiceID="nope")],
            ),
            'Unknown service ID "nope" for check ID "c"',
        ),
        (
            Register(
                Node="n9", Address="10.0.0.9", Service=NodeService(ID="w", Service="w", Port=-1)
            ),
            "Service.Port -1 is out of range",
        ),
        (
            Register(
                Node="n9",
                Address="10.0.0.9",
                Checks=[HealthCheck(Node="n9", CheckID="serfHealth", Name="s", Status="passing")],
            ),
            "'serfHealth' is maintained by the servers",
        ),
        (KVOp(Verb="set", Key="k", Value=b"x" * (512 * 1024 + 1)), "Value exceeds 524288"),
    ]
    for cmd, reason in cases:
        status, reply = await cluster.write(cmd)
        assert status == 200 and isinstance(reply, WriteReply), reply
        assert reply.Code == 400 and reason in reply.Error, reply
    # a field of the wrong type does not even decode
    status, body = await cluster.write(Register(Node="n9", Address="a", NodeMeta={"k": 1}))  # type: ignore[dict-item]
    assert status == 400 and b"Expected `str`, got `int`" in body  # type: ignore[operator]
    assert cluster.state() == before


async def test_a_heartbeat_with_a_bad_node_name_is_refused(cluster: Cluster) -> None:
    """The leader would turn it into a NodeStatus command: it must pass the same rules."""
    bad = Heartbeat(Node="evil\nnode", Address="10.0.0.5", Datacenter="dc1")
    status, body = await cluster.post("/rpc/heartbeat", bad)
    assert status == 400 and b"heartbeat refused: Node 'evil\\nnode' contains control" in body
    assert "evil\nnode" not in cluster.server.members.nodes
    good = Heartbeat(Node="fine", Address="10.0.0.5", Datacenter="dc1")
    assert (await cluster.post("/rpc/heartbeat", good))[0] == 200
    assert "fine" in cluster.server.members.nodes


async def test_wrong_key_is_refused(cluster: Cluster) -> None:
    before = cluster.state()
    status, body = await cluster.write(KVOp(Verb="set", Key="k", Value=b"v"), key=os.urandom(32))
    assert status == 403 and b"wrong cluster key" in body  # type: ignore[operator]
    assert cluster.state() == before


async def test_a_captured_request_replayed_is_refused_and_changes_nothing(
    cluster: Cluster,
) -> None:
    path = "/rpc/write"
    old = encoder.encode(WriteRequest(Command=KVOp(Verb="set", Key="k", Value=b"old")))
    captured = sign(KEY, path, old)
    first = await cluster.client.post(path, data=old, headers={AUTH_HEADER: captured})
    assert first.status == 200
    assert (await cluster.write(KVOp(Verb="set", Key="k", Value=b"new")))[0] == 200
    before = cluster.state()
    again = await cluster.client.post(path, data=old, headers={AUTH_HEADER: captured})
    assert again.status == 403 and b"replay" in await again.read()
    ts, nonce, mac = captured.split(":")
    for forged in (f"{ts}:{'0' * len(nonce)}:{mac}", f"{ts}:{mac}"):  # new nonce, or none
        resp = await cluster.client.post(path, data=old, headers={AUTH_HEADER: forged})
        assert resp.status == 403
    assert cluster.state() == before
    assert cluster.server.store.kv["k"].Value == b"new"


async def test_a_client_agent_gets_the_servers_typed_errors(cluster: Cluster) -> None:
    """The client agent's backend: 400s become CommandError (the HTTP API's 400 with the
    reason), a server-only command a CommandForbiddenError (403), a state conflict (an invalid
    session) a StateConflictError (500); session reads and renewals travel the same way."""
    port = cluster.client.server.port
    rpc = RPCClient([f"127.0.0.1:{port}"], KEY, default_port=port)
    backend = RemoteBackend(rpc)
    try:
        bad = Register(
            Node="n9",
            Address="10.0.0.9",
            Checks=[HealthCheck(Node="n9", CheckID="c", Name="c", ServiceID="nope")],
        )
        with pytest.raises(CommandError, match='Unknown service ID "nope"'):
            await backend.write(bad)
        with pytest.raises(CommandForbiddenError, match="'node_status' is issued only by servers"):
            await backend.write(NodeStatus(Node="s1", Address="127.0.0.1", Status="critical"))
        ok = Register(Node="n9", Address="10.0.0.9", Service=NodeService(ID="w", Service="w"))
        assert await backend.write(ok) is True
        assert "w" in cluster.server.store.services["n9"]
        ghost = "5e2b0a7c-4b8f-4c1e-9e34-0b3f2c7a9d10"
        with pytest.raises(StateConflictError, match=f'invalid session "{ghost}"'):
            await backend.write(KVOp(Verb="lock", Key="locked", Session=ghost))
        assert "locked" not in cluster.server.store.kv
        # sessions through a client agent: create, read, renew (at the leader), lock
        create = SessionOp(Op="create", Session=Session(ID=ghost, Node="n9", TTL="10s"))
        assert await backend.write(create) == ghost
        rows = (await backend.read(q.Sessions(Node="n9"))).value
        assert [(s.ID, s.TTL) for s in rows] == [(ghost, "10s")]
        assert [s.ID for s in await backend.renew_session(ghost)] == [ghost]
        assert await backend.renew_session(str(uuid.uuid4())) == []
        assert await backend.write(KVOp(Verb="lock", Key="locked", Session=ghost)) is True
    finally:
        await rpc.close()


async def test_restore_through_the_server_object_still_works(cluster: Cluster) -> None:
    """`meshd snapshot restore` on a server agent calls the server itself, not /rpc/write."""
    snap = cluster.server.store.dump()
    status, _ = await cluster.write(KVOp(Verb="set", Key="after", Value=b"2"))
    assert status == 200
    await cluster.server.restore(snap)
    assert "after" not in cluster.server.store.kv
    assert cluster.server.store.kv["before"].Value == b"1"
    with pytest.raises(CommandError, match="not a meshd snapshot"):
        await cluster.server.restore(b"garbage")
    assert cluster.server.store.kv["before"].Value == b"1"
