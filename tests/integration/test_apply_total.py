"""A committed entry the state machine cannot apply is a logged no-op, never a stall.

A real server (Raft journal on disk): entries that admission would refuse (undecodable bytes,
the `NodeMeta: {"k": 1}` registration of issue 8, a registration whose service is not one) are
proposed straight into Raft. Writes go on, and a restart on the same data dir replays past them
with every acknowledged write in place.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import pytest
from helpers import free_port

from meshd.server.cluster import Server, ServerSettings
from meshd.server.store import CommandError
from meshd.structs import KVOp, Register, encode_command

KEY = os.urandom(32)

POISON = [
    b"\xc1garbage",
    encode_command(Register(Node="poison", Address="1.2.3.4", NodeMeta={"k": 1})),  # type: ignore[dict-item]
    encode_command(Register(Node="poison", Address="1.2.3.4", Service="x")),  # type: ignore[arg-type]
]


async def _started(data_dir: str, ports: tuple[int, int]) -> Server:
    server = Server(
        ServerSettings(
            node_name="s1",
            datacenter="dc1",
            advertise="127.0.0.1",
            rpc_port=ports[0],
            raft_port=ports[1],
            data_dir=data_dir,
            key=KEY,
            password=base64.b64encode(KEY).decode(),
        )
    )
    await server.start()
    for _ in range(400):
        if server.raft is not None and server.raft.is_leader and server.store.mesh.roots:
            return server
        await asyncio.sleep(0.05)
    await server.close()
    raise AssertionError("the server did not become leader")


def _kv(server: Server) -> dict[str, bytes]:
    with server.store.lock:
        return {k: e.Value for k, e in server.store.kv.items() if e.Value is not None}


async def test_a_committed_bad_entry_is_skipped_now_and_on_replay(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ports = (free_port(), free_port())
    server = await _started(str(tmp_path), ports)
    acked: dict[str, bytes] = {}
    try:
        for i, raw in enumerate(POISON):
            assert server.raft is not None
            with pytest.raises(CommandError):
                await server.raft.apply_encoded(raw)
            key, value = f"after/{i}", str(i).encode()
            assert await server.write(KVOp(Verb="set", Key=key, Value=value)) is True
            acked[key] = value
        assert _kv(server).items() >= acked.items()
        assert "poison" not in server.store.nodes
    finally:
        await server.close()

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        server = await _started(str(tmp_path), ports)  # replays the journal, poison included
    try:
        skipped = caplog.text  # the replay met every bad entry again, and logged why it skipped
        assert skipped.count("is not a command this version knows") == len(POISON)
        assert "Expected `str`, got `int` - at `$.NodeMeta[...]`" in skipped
        assert _kv(server).items() >= acked.items()
        assert "poison" not in server.store.nodes
        assert await server.write(KVOp(Verb="set", Key="after/restart", Value=b"r")) is True
        assert _kv(server)["after/restart"] == b"r"
    finally:
        await server.close()
