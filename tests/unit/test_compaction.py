"""Raft log compaction on a real on-disk Raft node: writes keep committing while a snapshot is
written, nothing acknowledged is lost across a restart, snapshots written by earlier versions
still load, and the journal survives a crash at any step of its truncation."""

from __future__ import annotations

import asyncio
import gzip
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode

from meshd.server import compaction
from meshd.server.raft import RaftNode, RaftSettings, _GroupCommit, reserve_port, staggered
from meshd.server.store import Store
from meshd.structs import KVOp, NodeService, Register


@asynccontextmanager
async def raft_node(data_dir: str, port: int, store: Store) -> AsyncIterator[RaftNode]:
    held = reserve_port("127.0.0.1") if port == 0 else None
    addr = f"127.0.0.1:{held.getsockname()[1] if held else port}"
    node = RaftNode(store, RaftSettings(self_addr=addr, peers=[], data_dir=data_dir))
    if held:
        held.close()
    try:
        for _ in range(200):
            if node.ready():
                break
            await asyncio.sleep(0.05)
        yield node
    finally:
        node.close()


def port_of(node: RaftNode) -> int:
    return int(node.settings.self_addr.rsplit(":", 1)[1])


async def until(pred: Callable[[], bool]) -> None:
    for _ in range(400):
        if pred():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("condition not reached")


def kv(i: int) -> KVOp:
    return KVOp(Verb="set", Key=f"k/{i}", Value=str(i).encode())


async def test_writes_during_compactions_are_all_kept_across_a_restart(tmp_path: Any) -> None:
    data = str(tmp_path)
    store = Store()
    acked: list[int] = []
    async with raft_node(data, 0, store) as node:
        port = port_of(node)
        for i in range(300):  # a catalog worth snapshotting
            svc = NodeService(ID=f"s{i}", Service=f"svc{i % 7}", Tags=["a"])
            await node.apply(Register(Node=f"n{i % 20}", Address="10.0.0.1", Service=svc))

        async def writer(first: int) -> None:
            for i in range(first, first + 400, 4):
                await node.apply(kv(i))
                acked.append(i)

        writers = [asyncio.create_task(writer(w)) for w in range(4)]
        assert node.snapshots is not None
        while not all(w.done() for w in writers):
            before = node.snapshots.written
            node._sync.forceLogCompaction()
            await until(
                lambda before=before: (
                    node.snapshots.written > before or all(w.done() for w in writers)
                )
            )
        await asyncio.gather(*writers)
        assert node.snapshots.written >= 2 and node.snapshots.failed == 0
        assert node.snapshots.bytes > 0
        index = store.index
    restarted = Store()
    async with raft_node(data, port, restarted):
        await until(lambda: restarted.index >= index)
        assert len(acked) == 400
        assert all(restarted.kv[f"k/{i}"].Value == str(i).encode() for i in acked)
        assert restarted.dump() == store.dump()


async def test_a_snapshot_in_the_earlier_format_still_loads(tmp_path: Any) -> None:
    """Before compaction moved off the Raft thread, pysyncobj wrote the file itself: a gzip of
    a protocol-2 pickle of ([its attributes, the store's bytes], last entry, the one before,
    the cluster). A server upgraded over such a data_dir must start from it."""
    old = Store()
    for i in range(50):
        old.apply(kv(i), i + 1)
    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    held = reserve_port("127.0.0.1")
    port = held.getsockname()[1]
    held.close()
    payload = (
        [{"_SyncObj__enabledCodeVersion": 0}, old.dump()],
        (b"\x00", 50, 1),
        (b"\x00", 49, 1),
        {TCPNode(f"127.0.0.1:{port}")},
    )
    with gzip.open(raft_dir / "snapshot.bin", "wb") as g:
        pysyncobj_pickle.dump(payload, g)  # pysyncobj's own writer (protocol 2)
    store = Store()
    async with raft_node(str(tmp_path), port, store) as node:
        await until(lambda: store.index >= 50)
        assert store.kv["k/49"].Value == b"49"
        await node.apply(kv(1000))  # and the cluster carries on from it
        assert store.kv["k/1000"].Value == b"1000"


async def test_a_crash_between_snapshot_and_journal_truncation_loses_nothing(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysyncobj kept a journal on start only if it began exactly at the snapshot: a crash after
    the snapshot was renamed into place but before the journal was cut made it discard the
    entries written after the snapshot."""
    data = str(tmp_path)
    store = Store()
    monkeypatch.setattr(_GroupCommit, "deleteEntriesTo", lambda self, entry_to: None)
    async with raft_node(data, 0, store) as node:
        port = port_of(node)
        for i in range(40):
            await node.apply(kv(i))
        assert node.snapshots is not None
        node._sync.forceLogCompaction()
        await until(lambda: node.snapshots.written == 1)
        for i in range(40, 80):  # after the snapshot: only the journal has these
            await node.apply(kv(i))
        index = store.index
    monkeypatch.undo()
    restarted = Store()
    async with raft_node(data, port, restarted):
        await until(lambda: restarted.index >= index)
        assert sorted(restarted.kv) == sorted(f"k/{i}" for i in range(80))


CRASH_POINTS = ["add", "fsync", "link", "replace"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_journal_truncation_leaves_the_old_journal_or_the_new(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    path = str(tmp_path / "journal.bin")
    journal = FileJournal(path)
    entries = [(os.urandom(random.randrange(1, 300)), i + 1, 1) for i in range(200)]
    for e in entries:
        journal.add(*e)
    journal.flush()

    class CrashError(Exception):
        pass

    def crash(*args: Any, **kwargs: Any) -> None:
        raise CrashError

    if point == "add":  # half of the kept entries written to the new file
        real_add = FileJournal.add
        calls = {"n": 0}

        def add(self: FileJournal, *e: Any) -> None:
            calls["n"] += 1
            if calls["n"] > 25:
                raise CrashError
            real_add(self, *e)

        monkeypatch.setattr(FileJournal, "add", add)
    else:
        monkeypatch.setattr(compaction.os, point, crash)
    with pytest.raises(CrashError):
        compaction.rewrite_journal(journal, path, 150)
    monkeypatch.undo()
    reopened = FileJournal(path)
    assert [reopened[i] for i in range(len(reopened))] == entries
    # the same truncation, uninterrupted, keeps exactly the tail
    fresh = compaction.rewrite_journal(reopened, path, 150)
    assert [fresh[i] for i in range(len(fresh))] == entries[150:]
    assert [FileJournal(path)[i] for i in range(50)] == entries[150:]


async def test_a_journal_of_protocol_2_entries_replays_and_new_entries_are_smaller(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journals written before meshd switched pysyncobj to pickle protocol 5 still replay."""
    data = str(tmp_path)
    payload = bytes(range(256)) * 40  # high bytes, as msgpack headers are
    store = Store()
    monkeypatch.setattr(RaftNode, "__init__", _with_protocol(RaftNode.__init__, 2))
    async with raft_node(data, 0, store) as node:
        port = port_of(node)
        for i in range(20):
            await node.apply(KVOp(Verb="set", Key=f"old/{i}", Value=payload))
        old_size = _last_entries_bytes(node, 20)
    monkeypatch.undo()
    restarted = Store()
    async with raft_node(data, port, restarted) as node:
        await until(lambda: len(restarted.kv) == 20)
        for i in range(20):
            await node.apply(KVOp(Verb="set", Key=f"new/{i}", Value=payload))
        new_size = _last_entries_bytes(node, 20)
    assert all(restarted.kv[f"old/{i}"].Value == payload for i in range(20))
    again = Store()
    async with raft_node(data, port, again):
        await until(lambda: len(again.kv) == 40)
    assert again.dump() == restarted.dump()
    # what the journal, the memory and the wire hold per entry
    assert new_size < 0.8 * old_size, (new_size, old_size)


def _with_protocol(init: Callable[..., None], protocol: int) -> Callable[..., None]:
    def patched(self: RaftNode, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        setattr(pysyncobj_pickle, "__protocol", protocol)  # as pysyncobj ships it

    return patched


def _last_entries_bytes(node: RaftNode, count: int) -> int:
    log = node._raft_log
    return sum(len(log[i][0]) for i in range(len(log) - count, len(log)))


def test_each_server_draws_its_own_compaction_thresholds() -> None:
    """Servers of one cluster apply the same entries: equal thresholds made them all compact
    at the same moment. Each draws 1-1.5x the entries and 1-2x the interval configured."""
    drawn = [staggered((20000, 600.0), random.Random(seed)) for seed in range(30)]
    assert all(20000 <= e <= 30000 and 600.0 <= s <= 1200.0 for e, s in drawn)
    assert len({e for e, _ in drawn}) > 25
    assert staggered((1, 1.0))[0] >= 1
