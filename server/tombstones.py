"""KV tombstone GC: deleted keys are forgotten once they can no longer matter.

A delete leaves a tombstone: the key stays in the sorted key index and its `kv:KEY` topic keeps
the deletion's Raft index, so a prefix read's index still moves forward after a key under it
went away (a blocking reader must wake on a delete, and an index must never go backwards).
Kept forever they grow the state and every snapshot without bound, so, as Consul's tombstone
GC, the leader proposes `KVReap(Index)` for tombstones older than a TTL and every server drops
those whose deletion index is at most `Index`.

Monotonic indexes survive the reap: the reap's own Raft index is recorded in the `tombstones`
topic, and a prefix read's index is never below it (server/reads.py), so any prefix that lost
a tombstone answers with an index above that tombstone's. The TTL only bounds how much state is
kept and how often prefix readers see that one extra index change.

The leader's clock is sampled as (time, applied index) pairs; nothing time-based enters the
replicated state, so every server applies the same reap. A new leader starts sampling afresh,
which only delays a reap.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from meshd.structs import KVReap

if TYPE_CHECKING:
    from meshd.server.store import Store

DEFAULT_TTL = 15 * 60.0  # Consul's TombstoneTTL
REAPED_TOPIC = "tombstones"  # Raft index of the last reap that removed anything


def _expired(store: Store, upto: int) -> list[str]:
    return [
        k for k in store.kv_keys if k not in store.kv and store.topics.get(f"kv:{k}", 0) <= upto
    ]


def count(store: Store) -> int:
    with store.lock:
        return sum(1 for k in store.kv_keys if k not in store.kv)


def reap(store: Store, cmd: KVReap, index: int, changed: set[str]) -> int:
    """Apply a reap (under the store lock): the number of tombstones dropped."""
    gone = set(_expired(store, cmd.Index))
    if gone:
        store.kv_keys = [k for k in store.kv_keys if k not in gone]
        for key in gone:
            store.topics.pop(f"kv:{key}", None)
        changed.add(REAPED_TOPIC)
    return len(gone)


class TombstoneGC:
    """The leader's side: which index is at least `ttl` old, and whether reaping up to it
    would drop anything."""

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        self.granularity = min(max(ttl / 30, 0.5), 30.0)  # Consul buckets by 30 s for 15 min
        self.samples: deque[tuple[float, int]] = deque()
        self.reaped_upto = 0

    def reset(self) -> None:
        self.samples.clear()
        self.reaped_upto = 0

    def tick(self, store: Store, now: float) -> list[KVReap]:
        if not self.samples or now - self.samples[-1][0] >= self.granularity:
            self.samples.append((now, store.index))
        upto = 0
        while self.samples and now - self.samples[0][0] >= self.ttl:
            upto = self.samples.popleft()[1]
        if upto <= self.reaped_upto:
            return []
        self.reaped_upto = upto
        with store.lock:
            due = bool(_expired(store, upto))
        return [KVReap(Index=upto)] if due else []
