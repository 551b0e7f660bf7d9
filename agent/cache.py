"""The agent's one cache of server watches, shared by DNS, the HTTP reads and the mesh.

As Consul's agent cache and proxycfg do, each distinct query (a `meshd.queries` value) has at
most one blocking watch on the servers however many readers want it, so an agent's RPC load
follows the distinct data its host uses, not the number of proxies, DNS clients or HTTP calls.

Two kinds of interest keep a watch running:

- a `Subscription` (the mesh): refcounted; when the last one closes the watch lingers for
  `linger` seconds, so a snapshot rebuild that drops and re-adds a query does not pay a cold
  fetch, and then stops;
- a read (`fetch`, DNS's `stamp`): leases the entry; a lease lapses when a whole `idle_ttl`
  passes without a read, so memory follows what the host asks for.

A read-only entry whose answer is empty is a negative answer: it is kept `negative_ttl` seconds
and not watched (DESIGN, known traps: a blocking watch per distinct DNS name lets a client
exhaust the agent's RPC pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from meshd import queries as q
from meshd.agent.backend import CatalogBackend

log = logging.getLogger("meshd.cache")

OnChange = Callable[[q.Query], None]


class _Entry:
    """One query's latest answer. `stamp` is 0 until the first answer and then moves (to a value
    unique in this cache) on every change, so a reader can hold a stamp to check freshness."""

    __slots__ = (
        "index",
        "leased",
        "query",
        "ready",
        "stamp",
        "subs",
        "task",
        "timer",
        "used",
        "value",
    )

    def __init__(self, query: q.Query) -> None:
        self.query = query
        self.value: Any = None
        self.index = 0
        self.stamp = 0
        self.ready = asyncio.Event()
        self.subs: set[Subscription] = set()
        self.leased = False
        self.used = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None


class Subscription:
    """One subscriber's interest in one query. `on_change` runs on every new answer; iterating
    (`async for value in sub`) yields the current answer, then each later one. `close()` releases
    the interest; the watch stops after the last subscriber (and reader) is gone."""

    __slots__ = ("_cache", "_entry", "_on_change", "_seen", "_wake", "closed")

    def __init__(self, cache: WatchCache, entry: _Entry, on_change: OnChange | None) -> None:
        self._cache = cache
        self._entry = entry
        self._on_change = on_change
        self._seen = 0
        self._wake: asyncio.Event | None = None
        self.closed = False

    @property
    def query(self) -> q.Query:
        return self._entry.query

    @property
    def ready(self) -> bool:
        return self._entry.stamp != 0

    @property
    def value(self) -> Any:
        """The latest answer (None before the first)."""
        return self._entry.value

    @property
    def index(self) -> int:
        return self._entry.index

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._entry.ready.wait(), timeout)
        return self.ready

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cache._unsubscribe(self)
            if self._wake is not None:
                self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        while not self.closed:
            entry = self._entry
            if entry.stamp and entry.stamp != self._seen:
                self._seen = entry.stamp
                return entry.value
            if self._wake is None:
                self._wake = asyncio.Event()
            self._wake.clear()
            await self._wake.wait()
        raise StopAsyncIteration

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change(self._entry.query)
            except Exception:  # one subscriber's bug must not starve the others
                log.exception("cache subscriber of %s failed", self._entry.query)
        if self._wake is not None:
            self._wake.set()


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict | tuple) and not value)


class WatchCache:
    """Entries keyed by query value; at most one watch task each. Reads are synchronous
    (`get`, `stamp`) or wait for a first answer (`fetch`); subscribers are told of changes."""

    def __init__(
        self,
        backend: CatalogBackend,
        *,
        wait: float = 300.0,
        linger: float = 10.0,
        idle_ttl: float = 600.0,
        negative_ttl: float = 5.0,
    ) -> None:
        self.backend = backend
        self.wait = wait
        self.linger = linger
        self.idle_ttl = idle_ttl
        self.negative_ttl = negative_ttl
        self._entries: dict[q.Query, _Entry] = {}
        self._stamps = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None

    # ---- interest -----------------------------------------------------------------------------

    def subscribe(self, query: q.Query, on_change: OnChange | None = None) -> Subscription:
        entry = self._entry(query)
        self._cancel_timer(entry)
        sub = Subscription(self, entry, on_change)
        entry.subs.add(sub)
        self._run(entry)
        return sub

    async def fetch(self, query: q.Query, timeout: float = 5.0) -> tuple[int, Any] | None:
        """(index, value) of `query`, waiting up to `timeout` for a first answer (None if none
        came: the servers are down or electing). Leases the entry so later reads are local."""
        entry = self._entry(query)
        entry.leased = entry.used = True
        if not entry.stamp:
            self._run(entry)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry.ready.wait(), timeout)
            if not entry.stamp:
                return None
        return entry.index, entry.value

    def get(self, query: q.Query) -> Any:
        """The current answer, synchronously; None when this cache holds none (yet)."""
        entry = self._entries.get(query)
        if entry is None:
            return None
        entry.used = True
        return entry.value

    def stamp(self, query: q.Query) -> int | None:
        """A number that changes whenever `query`'s answer does; None when this cache holds no
        answer for it (so a reader knows to `fetch` first). DNS's answer cache checks it."""
        entry = self._entries.get(query)
        if entry is None or not entry.stamp:
            return None
        entry.used = True
        return entry.stamp

    def watching(self, query: q.Query) -> bool:
        """Whether a watch for `query` is running (metrics and tests)."""
        entry = self._entries.get(query)
        return entry is not None and entry.task is not None

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        if self._sweeper is not None:
            tasks.append(self._sweeper)
        for entry in self._entries.values():
            self._cancel_timer(entry)
        self._entries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- lifecycle ----------------------------------------------------------------------------

    def _entry(self, query: q.Query) -> _Entry:
        entry = self._entries.get(query)
        if entry is None:
            entry = self._entries[query] = _Entry(query)
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep(), name="cache sweeper")
        return entry

    def _run(self, entry: _Entry) -> None:
        if entry.task is None:
            entry.task = asyncio.create_task(self._watch(entry), name=f"watch {entry.query}")

    def _cancel_timer(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _later(self, entry: _Entry, delay: float) -> None:
        self._cancel_timer(entry)
        if delay <= 0:
            self._expire(entry)
        else:
            entry.timer = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    def _unsubscribe(self, sub: Subscription) -> None:
        entry = sub._entry
        entry.subs.discard(sub)
        if not entry.subs and not entry.leased and self._entries.get(entry.query) is entry:
            self._later(entry, self.linger)

    def _expire(self, entry: _Entry) -> None:
        """Drop an entry nobody holds: no subscriber, and either no lease or a negative answer
        (which is not watched and lives `negative_ttl`)."""
        entry.timer = None
        if entry.subs or (entry.leased and entry.task is not None):
            return
        if self._entries.get(entry.query) is entry:
            del self._entries[entry.query]
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None

    async def _sweep(self) -> None:
        """Lapse the leases of entries nobody read for a whole `idle_ttl`."""
        while True:
            await asyncio.sleep(self.idle_ttl)
            for entry in list(self._entries.values()):
                if not entry.leased:
                    continue
                if entry.used:
                    entry.used = False
                    continue
                entry.leased = False
                if not entry.subs:
                    self._expire(entry)

    async def _watch(self, entry: _Entry) -> None:
        backoff = 0.1
        while True:
            try:
                res = await self.backend.read(
                    entry.query, min_index=entry.index, wait=self.wait, consistency="stale"
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # servers down or electing: retry, keep the last answer
                log.debug("watch %s: %s", entry.query, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            # a wake-up can carry an equal answer (a table index moved, a wildcard topic fired):
            # only a different answer is a change for readers
            changed = not entry.stamp or (res.index != entry.index and res.value != entry.value)
            # an index that went back (a restored snapshot, a new leader) starts over from 0
            entry.index = res.index if res.index >= entry.index else 0
            if changed:
                entry.value = res.value
                entry.stamp = next(self._stamps)
                entry.ready.set()
                for sub in list(entry.subs):
                    sub._notify()
            if not entry.subs and _empty(entry.value):
                entry.task = None  # a negative answer: cached briefly, never watched
                self._later(entry, self.negative_ttl)
                return
