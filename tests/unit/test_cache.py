"""agent/cache.py: one blocking watch per query shared by every reader, refcounted, with change
notification; served by a real store and its real blocking queries (server/reads.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from meshd import queries as q
from meshd.agent.backend import ReadResult
from meshd.agent.cache import WatchCache
from meshd.server.reads import blocking_query
from meshd.server.store import Store
from meshd.structs import Command, KVOp, NodeService, Register

WEB = q.ServiceNodes(Service="web")


class StoreBackend:
    """The LocalBackend's read path without Raft: the store applies writes at increasing
    indexes, reads are the server's blocking queries. Counts what the cache asks for."""

    def __init__(self) -> None:
        self.store = Store()
        self.index = 0
        self.reads: Counter[q.Query] = Counter()
        self.in_flight: Counter[q.Query] = Counter()

    def write(self, cmd: Command) -> None:
        self.index += 1
        self.store.apply(cmd, self.index)

    def register(self, service: str, node: str = "n1", address: str = "10.0.0.1") -> None:
        svc = NodeService(ID=f"{service}-{node}", Service=service, Port=80)
        self.write(Register(Node=node, Address=address, Service=svc))

    async def read(
        self, query: q.Query, *, min_index: int = 0, wait: float = 0.0, consistency: str = ""
    ) -> ReadResult:
        self.reads[query] += 1
        self.in_flight[query] += 1
        try:
            deadline = asyncio.get_running_loop().time() + wait
            index, value = await blocking_query(self.store, query, min_index, deadline)
            return ReadResult(index, value)
        finally:
            self.in_flight[query] -= 1


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def backend() -> StoreBackend:
    return StoreBackend()


async def test_one_watch_per_query_shared_by_every_subscriber(backend: StoreBackend) -> None:
    backend.register("web")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    seen: list[q.Query] = []
    subs = [cache.subscribe(WEB, seen.append) for _ in range(3)]
    assert await subs[0].wait_ready(5)
    assert await cache.fetch(WEB) is not None  # a read joins the same watch
    await until(lambda: backend.in_flight[WEB] == 1, "the one blocking read")
    assert backend.reads[WEB] == 2  # the first answer, then the blocking read
    assert seen == [WEB] * 3
    assert [len(s.value) for s in subs] == [1, 1, 1]

    backend.register("web", node="n2", address="10.0.0.2")
    await until(lambda: len(seen) == 6, "every subscriber told of the change")
    assert all(len(s.value) == 2 for s in subs)
    await until(lambda: backend.in_flight[WEB] == 1, "the watch blocking again")
    assert backend.reads[WEB] == 3
    await cache.close()


async def test_changes_to_other_data_wake_nobody(backend: StoreBackend) -> None:
    backend.register("web")
    backend.register("db")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    seen: list[q.Query] = []
    sub = cache.subscribe(WEB, seen.append)
    assert await sub.wait_ready(5)
    await until(lambda: backend.in_flight[WEB] == 1, "the blocking read")
    stamp = cache.stamp(WEB)
    backend.write(KVOp(Verb="set", Key="k", Value=b"v"))
    backend.register("db", node="n2")
    await asyncio.sleep(0.05)  # give a wrong wake-up the chance to happen
    assert seen == [WEB] and cache.stamp(WEB) == stamp
    assert backend.reads[WEB] == 2
    await cache.close()


async def test_async_iteration_yields_current_then_each_change(backend: StoreBackend) -> None:
    backend.register("web")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    sub = cache.subscribe(WEB)
    values = aiter(sub)
    assert len(await anext(values)) == 1
    backend.register("web", node="n2")
    assert len(await asyncio.wait_for(anext(values), 5)) == 2
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await anext(values)
    await cache.close()


async def test_last_subscriber_stops_the_watch_after_the_linger(backend: StoreBackend) -> None:
    backend.register("web")
    cache = WatchCache(backend, linger=0.05)  # type: ignore[arg-type]
    a, b = cache.subscribe(WEB), cache.subscribe(WEB)
    assert await a.wait_ready(5)
    a.close()
    await asyncio.sleep(0.1)
    assert cache.watching(WEB)  # b still holds it
    b.close()
    c = cache.subscribe(WEB)  # back within the linger: the same watch, no cold fetch
    assert c.ready and backend.reads[WEB] == 2
    c.close()
    await until(lambda: not cache.watching(WEB), "the watch to stop")
    await until(lambda: backend.in_flight[WEB] == 0, "the blocking read to be cancelled")
    assert cache.get(WEB) is None and len(cache) == 0
    await cache.close()


async def test_negative_answers_are_cached_briefly_and_not_watched(backend: StoreBackend) -> None:
    nope = q.ServiceNodes(Service="nope")
    cache = WatchCache(backend, negative_ttl=0.1)  # type: ignore[arg-type]
    assert await cache.fetch(nope) == (1, [])
    assert not cache.watching(nope) and backend.in_flight[nope] == 0
    assert await cache.fetch(nope) == (1, [])
    assert backend.reads[nope] == 1  # the second read was answered from the cache
    await until(lambda: cache.stamp(nope) is None, "the negative answer to expire")
    backend.register("nope")
    got = await cache.fetch(nope)
    assert got is not None and len(got[1]) == 1
    assert cache.watching(nope)  # an answer with data is watched while it is read
    await cache.close()


async def test_a_subscriber_turns_a_negative_answer_into_a_watch(backend: StoreBackend) -> None:
    nope = q.ServiceNodes(Service="later")
    backend.write(KVOp(Verb="set", Key="k", Value=b"v"))  # a store past index 1, as any is
    cache = WatchCache(backend, negative_ttl=0.05)  # type: ignore[arg-type]
    await cache.fetch(nope)
    seen: list[q.Query] = []
    sub = cache.subscribe(nope, seen.append)
    assert cache.watching(nope)
    await asyncio.sleep(0.1)  # past the negative ttl: a subscribed entry is kept
    backend.register("later")
    await until(lambda: bool(sub.value), "the registration to arrive")
    assert seen == [nope]
    await cache.close()


async def test_reads_lease_an_entry_until_unused_for_the_idle_ttl(backend: StoreBackend) -> None:
    backend.register("web")
    cache = WatchCache(backend, idle_ttl=0.05)  # type: ignore[arg-type]
    assert await cache.fetch(WEB) is not None
    for _ in range(6):  # read through three sweeps: kept
        await asyncio.sleep(0.025)
        assert cache.stamp(WEB) is not None
    assert cache.watching(WEB)
    await until(lambda: not cache.watching(WEB), "the unused lease to lapse")
    assert cache.stamp(WEB) is None
    await cache.close()


async def test_a_subscriber_callback_that_fails_does_not_starve_others(
    backend: StoreBackend,
) -> None:
    backend.register("web")
    cache = WatchCache(backend)  # type: ignore[arg-type]

    def broken(query: q.Query) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[q.Query] = []
    cache.subscribe(WEB, broken)
    sub = cache.subscribe(WEB, seen.append)
    assert await sub.wait_ready(5)
    assert seen == [WEB]
    await cache.close()


async def test_a_wake_up_with_an_equal_answer_tells_nobody(backend: StoreBackend) -> None:
    """A watch can be answered again with equal data: here the folded key list `a/` stays the
    same when a second key appears under it, though the index moves."""
    folded = q.KVKeys(Prefix="", Separator="/")
    backend.write(KVOp(Verb="set", Key="a/1", Value=b"v"))
    cache = WatchCache(backend)  # type: ignore[arg-type]
    seen: list[q.Query] = []
    sub = cache.subscribe(folded, seen.append)
    assert await sub.wait_ready(5)
    assert sub.value == ["a/"]
    stamp, index = cache.stamp(folded), sub.index
    backend.write(KVOp(Verb="set", Key="a/2", Value=b"v"))
    await until(lambda: sub.index > index, "the watch to be answered again")
    assert seen == [folded] and cache.stamp(folded) == stamp
    await cache.close()
