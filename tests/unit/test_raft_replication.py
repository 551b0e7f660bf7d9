"""Three real Raft nodes on loopback under concurrent writes: every entry crosses to a follower
once, so no follower ever truncates entries it has applied (pysyncobj logs that as critical:
"state machine may have diverged"), and all three stores end equal."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import pytest

from meshd.server.raft import RaftNode, RaftSettings, reserve_port
from meshd.server.store import Store
from meshd.structs import Batch, HealthCheck, KVOp, NodeService, Register


def _register(j: int) -> Register:
    sid = f"inst-{j}"
    return Register(
        Node=f"n{j % 20}",
        Address="10.0.0.1",
        Service=NodeService(ID=sid, Service=f"svc-{j % 7}", Port=j),
        Check=HealthCheck(Node=f"n{j % 20}", CheckID=f"c-{j}", Name="alive", ServiceID=sid),
    )


async def _until(pred: Any, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if pred():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not reached: {what}")


@pytest.mark.timeout(90)
async def test_concurrent_writes_reach_followers_once_and_stores_agree(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pysyncobj")
    held = [reserve_port("127.0.0.1") for _ in range(3)]
    addrs = [f"127.0.0.1:{h.getsockname()[1]}" for h in held]
    stores = [Store() for _ in addrs]
    key = base64.b64encode(os.urandom(32)).decode()  # servers with peers always have one
    nodes = []
    for i, addr in enumerate(addrs):
        (tmp_path / str(i)).mkdir()
        peers = [a for a in addrs if a != addr]
        data = str(tmp_path / str(i))
        settings = RaftSettings(self_addr=addr, peers=peers, data_dir=data, password=key)
        nodes.append(RaftNode(stores[i], settings))
    for h in held:
        h.close()
    try:
        await _until(lambda: any(n.is_leader for n in nodes), "a leader", 800)
        leader = next(n for n in nodes if n.is_leader)
        slots = asyncio.Semaphore(16)

        async def write(cmd: Any) -> None:
            async with slots:
                await leader.apply(cmd)

        # small entries many at a time, and entries larger than one append-entries batch
        for _ in range(3):
            small = [write(KVOp(Verb="set", Key=f"k/{i}", Value=b"v" * 100)) for i in range(400)]
            large = [
                write(Batch(Ops=[_register(j) for j in range(b, b + 400)]))
                for b in range(0, 4000, 400)
            ]
            await asyncio.gather(*small, *large)
        index = leader.store.index
        await _until(lambda: all(s.index >= index for s in stores), "followers caught up")
        for s in stores:
            assert len(s.kv) == 400 and sum(len(r) for r in s.services.values()) == 4000
        alarms = [
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("pysyncobj")
            and (r.levelno >= logging.ERROR or "truncating" in r.getMessage())
        ]
        assert alarms == []
    finally:
        for n in nodes:
            n.close()
