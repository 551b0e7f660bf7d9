"""Tombstone GC on the real state machine: what a reap drops, and the leader's timing."""

from __future__ import annotations

import asyncio

from meshd import queries as q
from meshd.server import tombstones
from meshd.server.reads import blocking_query
from meshd.server.store import Store
from meshd.structs import KVOp, KVReap


def _kv(store: Store, index: int, verb: str, key: str) -> None:
    store.apply(KVOp(Verb=verb, Key=key, Value=b"v" if verb == "set" else b""), index)


def _prefix_index(store: Store, prefix: str) -> int:
    index, _ = asyncio.run(blocking_query(store, q.KVGet(Key=prefix, Recurse=True), 0, 0.0))
    return index


def test_reap_drops_only_old_tombstones_and_indexes_stay_monotonic() -> None:
    store = Store()
    for i in range(100):
        _kv(store, 2 * i + 1, "set", f"a/{i}")
        _kv(store, 2 * i + 2, "delete", f"a/{i}")
    _kv(store, 201, "set", "b/live")
    _kv(store, 202, "delete", "a/late")  # never existed: no tombstone
    _kv(store, 203, "set", "a/late")
    _kv(store, 204, "delete", "a/late")
    assert tombstones.count(store) == 101
    before = len(store.dump())
    a_index = _prefix_index(store, "a/")
    assert a_index == 204

    store.apply(KVReap(Index=200), 205)
    assert tombstones.count(store) == 1  # a/late was deleted after 200: kept
    assert len(store.dump()) < before / 2
    assert _prefix_index(store, "a/") >= a_index
    store.apply(KVReap(Index=204), 206)
    assert tombstones.count(store) == 0
    assert _prefix_index(store, "a/") == 206 and _prefix_index(store, "b/") == 206
    restored = Store()
    restored.load(store.dump())
    assert _prefix_index(restored, "a/") == 206 and tombstones.count(restored) == 0


def test_leader_proposes_a_reap_only_for_tombstones_older_than_the_ttl() -> None:
    store = Store()
    gc = tombstones.TombstoneGC(ttl=60.0)
    _kv(store, 1, "set", "k")
    _kv(store, 2, "delete", "k")
    assert gc.tick(store, 1000.0) == []  # index 2 seen at t=1000
    _kv(store, 3, "set", "j")
    _kv(store, 4, "delete", "j")
    assert gc.tick(store, 1030.0) == []  # index 4 seen at t=1030; nothing 60 s old yet
    assert gc.tick(store, 1060.0) == [KVReap(Index=2)]
    assert gc.tick(store, 1061.0) == []  # already proposed
    assert gc.tick(store, 1095.0) == [KVReap(Index=4)]
