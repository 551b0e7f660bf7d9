"""A stopping server ends its blocking queries: they answer with what they have instead of
holding the process for their whole wait (up to ten minutes)."""

from __future__ import annotations

import asyncio

from meshd import queries as q
from meshd.server.reads import blocking_query
from meshd.server.store import Store
from meshd.structs import KVOp


def _store() -> Store:
    store = Store()
    store.apply(KVOp(Verb="set", Key="k", Value=b"v"), 1)
    return store


def test_a_waiting_query_answers_when_the_watches_close() -> None:
    async def run() -> tuple[int, object]:
        store = _store()
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(
            blocking_query(store, q.KVGet(Key="k"), 1, loop.time() + 600)
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()  # index 1 is current: it waits for a change
        store.watches.close()
        return await asyncio.wait_for(waiting, 5)

    index, value = asyncio.run(run())
    assert index == 1 and value


def test_a_query_after_close_does_not_wait() -> None:
    async def run() -> int:
        store = _store()
        store.watches.close()
        loop = asyncio.get_running_loop()
        index, _ = await asyncio.wait_for(
            blocking_query(store, q.KVGet(Key="k"), 1, loop.time() + 600), 5
        )
        return index

    assert asyncio.run(run()) == 1


def test_before_close_a_write_still_wakes_the_query() -> None:
    async def run() -> int:
        store = _store()
        loop = asyncio.get_running_loop()
        waiting = asyncio.ensure_future(
            blocking_query(store, q.KVGet(Key="k"), 1, loop.time() + 600)
        )
        await asyncio.sleep(0.05)
        store.apply(KVOp(Verb="set", Key="k", Value=b"w"), 2)
        index, _ = await asyncio.wait_for(waiting, 5)
        return index

    assert asyncio.run(run()) == 2
