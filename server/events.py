"""User events: a short ring of recent events in the replicated state.

meshd has no gossip, so an event goes through Raft (one entry per `event fire`) into this ring,
bounded by count and by payload bytes. Every agent holds a blocking read on the ring (topic
`events`) and pulls what came after the last event it saw; the filters are applied by each
receiving agent against its own node and services (agent/events.py), as Consul's agents do.
Because the ring is part of the state, a leader change loses nothing, and an agent that was
briefly cut off catches up on reconnecting as long as the ring still holds what it missed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from meshd.structs import EventFire, EventsPage, UserEvent

RING_EVENTS = 256  # what each agent keeps, as Consul's agents do
RING_BYTES = 4 * 1024 * 1024  # payload bytes the servers keep (the newest event always stays)
TOPIC = "events"


class EventRing:
    def __init__(self) -> None:
        self.events: deque[UserEvent] = deque()
        self.ltime = 0  # Lamport-like clock: +1 per event, never moves back
        self.bytes = 0

    def apply(self, cmd: EventFire, index: int, changed: set[str]) -> UserEvent:
        self.ltime += 1
        ev = msgspec.structs.replace(cmd.Event, LTime=self.ltime)
        self.events.append(ev)
        self.bytes += len(ev.Payload or b"")
        while len(self.events) > RING_EVENTS or (self.bytes > RING_BYTES and len(self.events) > 1):
            old = self.events.popleft()
            self.bytes -= len(old.Payload or b"")
        changed.add(TOPIC)
        return ev

    def after(self, ltime: int) -> EventsPage:
        """Events newer than `ltime`; a negative `ltime` asks only for the head."""
        if ltime < 0:
            return EventsPage(Head=self.ltime)
        return EventsPage(Head=self.ltime, Events=[e for e in self.events if e.LTime > ltime])

    def dump(self) -> dict[str, Any]:
        return {"ltime": self.ltime, "events": msgspec.to_builtins(list(self.events))}

    def load(self, data: dict[str, Any]) -> None:
        """A snapshot's ring; the clock keeps the larger value so LTimes never repeat."""
        events = msgspec.convert(data.get("events", []), list[UserEvent])
        self.ltime = max(self.ltime, int(data.get("ltime", 0)))
        self.events = deque(events)
        self.bytes = sum(len(e.Payload or b"") for e in events)
