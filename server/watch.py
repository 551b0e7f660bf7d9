"""Per-topic wake-ups for blocking queries.

Topics are narrow ("svc:web", "node:n1", "kv:a/b") so that a write to one service wakes only the
readers of that service: Consul's issue #3890 (every blocking query woken by any change of a table)
is what this avoids. Writers run on pysyncobj's thread; waiters live on asyncio loops, so firing
goes through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class Waiter:
    """A one-shot wake-up; safe to fire from any thread, any number of times."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def fire(self) -> None:
        def _set() -> None:
            if not self.future.done():
                self.future.set_result(None)

        try:  # noqa: SIM105 - on every applied write: cheaper than suppress()
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # loop closed while a write was applying
            pass


class WatchSet:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._exact: dict[str, set[Waiter]] = defaultdict(set)
        self._prefix: dict[str, set[Waiter]] = defaultdict(set)
        self.closed = False

    def waiter_count(self) -> int:
        """Blocking queries waiting now (metrics; a scan, so only at scrape time)."""
        with self._lock:
            return len(set().union(*self._exact.values(), *self._prefix.values()))

    def close(self) -> None:
        """The server is stopping: wake every waiter now, and any added later at once, so that
        blocking queries answer instead of holding the shutdown for up to their wait time."""
        with self._lock:
            self.closed = True
            fire = set().union(*self._exact.values(), *self._prefix.values())
        for w in fire:
            w.fire()

    def add(self, waiter: Waiter, topics: list[str]) -> None:
        """Topics ending in '*' match every topic with that prefix (KV recurse reads)."""
        with self._lock:
            if self.closed:
                waiter.fire()
                return
            for t in topics:
                if t.endswith("*"):
                    self._prefix[t[:-1]].add(waiter)
                else:
                    self._exact[t].add(waiter)

    def remove(self, waiter: Waiter, topics: list[str]) -> None:
        with self._lock:
            for t in topics:
                table = self._prefix if t.endswith("*") else self._exact
                key = t[:-1] if t.endswith("*") else t
                s = table.get(key)
                if s is not None:
                    s.discard(waiter)
                    if not s:
                        del table[key]

    def notify(self, changed: set[str]) -> None:
        fire: set[Waiter] = set()
        with self._lock:
            for t in changed:
                s = self._exact.get(t)
                if s:
                    fire |= s
            if self._prefix:
                for p, s in self._prefix.items():
                    if any(t.startswith(p) for t in changed):
                        fire |= s
        for w in fire:
            w.fire()
