"""The agent's side of user events: pull them from the servers' ring, filter, keep the last 256.

One long-lived blocking read on the servers' event ring (`queries.Events`) per agent: after each
answer the agent asks for the events after the last LTime it saw, so an event committed while the
agent waits, or while it is reconnecting, is delivered on the next answer. Each agent applies the
node/service/tag filters itself against its own node name and local services, as Consul's agents
do with gossiped events; an event that does not match is dropped here and never listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from meshd import queries as q
from meshd.agent.backend import CatalogBackend
from meshd.structs import EventFire, EventsPage, NodeService, UserEvent

log = logging.getLogger("meshd.events")
KEEP = 256  # events each agent lists, as Consul's agents keep
WAIT = 300.0


def event_index(event_id: str) -> int:
    """Consul's X-Consul-Index for /v1/event/list: the two halves of the newest event's UUID
    XORed (its api client's IDToIndex); opaque, only ever compared for equality."""
    hexid = event_id.replace("-", "")
    if len(hexid) != 32:
        return 1
    try:
        return int(hexid[:16], 16) ^ int(hexid[16:], 16)
    except ValueError:
        return 1


def list_index(events: list[UserEvent]) -> int:
    """1 when there are none, which keeps a watch on an empty list from spinning (Consul)."""
    return event_index(events[-1].ID) if events else 1


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:  # the servers refuse bad patterns; an older entry must not stop the loop
        return False


def event_matches(ev: UserEvent, node: str, services: Iterable[NodeService]) -> bool:
    """Consul's shouldProcessUserEvent: the node filter on the node name, then (if set) some
    local service matching the service filter and, with a tag filter, one of its tags."""
    if ev.NodeFilter and not _search(ev.NodeFilter, node):
        return False
    if not ev.ServiceFilter:
        return True
    for svc in services:
        if not _search(ev.ServiceFilter, svc.Service):
            continue
        if not ev.TagFilter or any(_search(ev.TagFilter, t) for t in svc.Tags):
            return True
    return False


class EventReceiver:
    def __init__(
        self,
        backend: CatalogBackend,
        node: str,
        services: Callable[[], Iterable[NodeService]],
    ) -> None:
        self.backend = backend
        self.node = node
        self.services = services
        self.events: deque[UserEvent] = deque(maxlen=KEEP)
        self._ids: set[str] = set()
        self._seen = -1  # the ring's LTime this agent has read up to; -1: not yet positioned
        self._index = 0
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="user-events")

    async def positioned(self, timeout: float) -> None:
        """Wait until the receiver knows the ring's head; the agent waits for this before its
        HTTP API opens (bounded: servers may be down), so every event fired after the agent
        answers is delivered to it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def fire(self, ev: UserEvent) -> UserEvent:
        """Commit the event to the servers' ring; this agent takes it at once (if it matches),
        as a Consul agent receives its own event."""
        result: Any = await self.backend.write(EventFire(Event=ev))
        fired = result if isinstance(result, UserEvent) else msgspec.convert(result, UserEvent)
        self.ingest(fired)
        return fired

    def ingest(self, ev: UserEvent) -> None:
        if ev.ID in self._ids or not event_matches(ev, self.node, self.services()):
            return
        if len(self.events) == KEEP:
            self._ids.discard(self.events[0].ID)
        self.events.append(ev)
        self._ids.add(ev.ID)
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def waiter(self) -> asyncio.Event:
        """Set on the next change; take it before reading, so no change slips in between."""
        return self._wake

    def list(self, name: str = "") -> list[UserEvent]:
        return [e for e in self.events if not name or e.Name == name]

    async def _loop(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._poll()
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # servers away or no leader: keep the position, retry
                log.debug("events: %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _poll(self) -> None:
        if self._seen < 0:
            res = await self.backend.read(q.Events(After=-1))
            self._seen, self._index = _page(res.value).Head, res.index
            self._ready.set()
            return
        res = await self.backend.read(q.Events(After=self._seen), min_index=self._index, wait=WAIT)
        page = _page(res.value)
        if page.Head < self._seen:  # the servers' state was restored from a snapshot
            self._seen = page.Head
        if page.Events and page.Events[0].LTime > self._seen + 1:
            log.warning(
                "events: %d events left the servers' ring before this agent read them",
                page.Events[0].LTime - self._seen - 1,
            )
        for ev in page.Events:
            self._seen = max(self._seen, ev.LTime)
            self.ingest(ev)
        self._index = res.index


def _page(value: Any) -> EventsPage:
    return value if isinstance(value, EventsPage) else msgspec.convert(value, EventsPage)
