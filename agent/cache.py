"""A client agent's in-memory view of the catalog, kept fresh by blocking queries.

DNS and frequent HTTP reads on a client agent are answered from here, never with an RPC per
query: the first read of a service starts a watch (a blocking query that returns only when that
service changes) and later reads are memory lookups. Watches of services nobody asked about for
`idle_ttl` stop, so an agent's memory follows what its host uses, not the catalog's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from meshd.agent.backend import CatalogBackend

log = logging.getLogger("meshd.cache")


@dataclass
class _Entry:
    value: Any = None
    index: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_used: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None


class CatalogCache:
    def __init__(
        self, backend: CatalogBackend, idle_ttl: float = 600.0, wait: float = 300.0
    ) -> None:
        self.backend = backend
        self.idle_ttl = idle_ttl
        self.wait = wait
        self._entries: dict[Any, _Entry] = {}
        self.version = 0  # moves whenever any cached answer changes (DNS answer cache key)

    def _entry(self, query: Any) -> _Entry:
        e = self._entries.get(query)
        if e is None:
            e = self._entries[query] = _Entry()
            e.task = asyncio.create_task(self._watch(query, e), name=f"watch {query}")
        e.last_used = time.monotonic()
        return e

    async def get(self, query: Any, timeout: float = 5.0) -> Any:
        e = self._entry(query)
        if not e.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(e.ready.wait(), timeout)
        return e.value

    async def get_indexed(self, query: Any, timeout: float = 5.0) -> tuple[int, Any] | None:
        """(index, value) once the watch has answered; None if it has not within `timeout`."""
        value = await self.get(query, timeout)
        e = self._entries.get(query)
        if e is None or not e.ready.is_set():
            return None
        return e.index, value

    def peek(self, query: Any) -> Any:
        e = self._entries.get(query)
        if e is None:
            return None
        e.last_used = time.monotonic()
        return e.value

    async def _watch(self, query: Any, e: _Entry) -> None:
        backoff = 0.1
        while True:
            if time.monotonic() - e.last_used > self.idle_ttl:
                self._entries.pop(query, None)
                return
            try:
                res = await self.backend.read(
                    query, min_index=e.index, wait=self.wait, consistency="stale"
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # servers down or electing: retry, keep the last view
                log.debug("watch %s: %s", query, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if res.index < e.index:  # a restored snapshot or a new leader: start over
                e.index = 0
            else:
                e.index = res.index
            e.value = res.value
            self.version += 1
            e.ready.set()

    async def close(self) -> None:
        for e in self._entries.values():
            if e.task:
                e.task.cancel()
        self._entries.clear()
