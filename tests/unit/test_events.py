"""User events: the servers' ring, the receiving agent's filters, Consul's list index."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from meshd import queries as q
from meshd.agent.backend import ReadResult
from meshd.agent.events import EventReceiver, event_index, event_matches, list_index
from meshd.server import events as ring_mod
from meshd.server.authority import Origin, admit
from meshd.server.reads import run_query
from meshd.server.store import CommandError, Store
from meshd.structs import EventFire, EventsPage, NodeService, Restore, UserEvent


def ev(name: str = "deploy", payload: bytes | None = None, **kw: Any) -> UserEvent:
    return UserEvent(ID=str(uuid.uuid4()), Name=name, Payload=payload, **kw)


def fire(store: Store, e: UserEvent, index: int) -> UserEvent:
    out = store.apply(admit(EventFire(Event=e), Origin.AGENT, store), index)
    assert isinstance(out, UserEvent)
    return out


def test_ring_orders_events_and_keeps_the_last_256() -> None:
    s = Store()
    fired = [fire(s, ev(f"e{i}"), i + 1) for i in range(300)]
    assert [e.LTime for e in fired] == list(range(1, 301))
    page = s.events.after(0)
    assert len(page.Events) == 256 and page.Events[0].Name == "e44" and page.Head == 300
    assert [e.Name for e in s.events.after(298).Events] == ["e298", "e299"]
    assert s.events.after(-1) == EventsPage(Head=300)


def test_ring_is_bounded_by_payload_bytes_but_keeps_the_newest() -> None:
    s = Store()
    big = b"x" * (100 * 1024)
    for i in range(60):
        fire(s, ev(payload=big), i + 1)
    assert s.events.bytes <= ring_mod.RING_BYTES
    assert s.events.events[-1].LTime == 60
    assert len(s.events.events) == ring_mod.RING_BYTES // len(big)


def test_ring_survives_a_snapshot_and_blocking_reads_see_fires() -> None:
    s = Store()
    fire(s, ev("a", b"1"), 5)
    restored = Store()
    restored.load(s.dump())
    assert restored.events.after(0).Events == s.events.after(0).Events
    index, page, topics = run_query(restored, q.Events(After=0))
    assert topics == ["events"] and index == 5 and page.Events[0].Payload == b"1"
    fire(restored, ev("b"), 6)
    assert run_query(restored, q.Events(After=1))[1].Events[0].LTime == 2


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (ev(payload=b"x" * (100 * 1024 + 1)), "payload exceeds"),
        (ev(TagFilter="v1"), "tag filter without service filter"),
        (ev(NodeFilter="("), "invalid node filter regexp"),
        (ev(name="_internal"), "reserved"),
        (ev(name=""), "event name is required"),
    ],
)
def test_bad_events_are_refused_before_raft(event: UserEvent, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        admit(EventFire(Event=event), Origin.AGENT, Store())


WEB = NodeService(ID="web-1", Service="web", Tags=["v2", "blue"])


@pytest.mark.parametrize(
    ("filters", "matches"),
    [
        ({}, True),
        ({"NodeFilter": "^node-a$"}, True),
        ({"NodeFilter": "node-b"}, False),
        ({"NodeFilter": "node"}, True),  # searched, not anchored (Go's MatchString)
        ({"ServiceFilter": "we"}, True),
        ({"ServiceFilter": "^db$"}, False),
        ({"ServiceFilter": "web", "TagFilter": "^v2$"}, True),
        ({"ServiceFilter": "web", "TagFilter": "^v3$"}, False),
        ({"NodeFilter": "node-a", "ServiceFilter": "db"}, False),
    ],
)
def test_receiving_agent_filters(filters: dict[str, str], matches: bool) -> None:
    assert event_matches(ev(**filters), "node-a", [WEB]) is matches


def test_list_index_is_consuls() -> None:
    eid = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c"
    assert event_index(eid) == 0xB54FE1107AF5CAFC ^ 0xD1FBAFC8BA432B1C
    assert list_index([]) == 1
    assert list_index([ev(), UserEvent(ID=eid, Name="x")]) == event_index(eid)


class FakeBackend:
    """Answers the receiver's reads from a real store (in-process, as on a server agent)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writes: list[Any] = []

    async def read(self, query: Any, *, min_index: int = 0, wait: float = 0.0, **kw: Any) -> Any:
        from meshd.server.reads import blocking_query

        loop = asyncio.get_running_loop()
        index, value = await blocking_query(self.store, query, min_index, loop.time() + wait)
        return ReadResult(index, value)

    async def write(self, cmd: Any) -> Any:
        self.writes.append(cmd)
        return self.store.apply(cmd, max(self.store.index, 0) + 1)


def test_receiver_takes_new_events_in_order_and_filters_them() -> None:
    async def main() -> None:
        store = Store()
        fire(store, ev("before-start"), 1)
        rx = EventReceiver(FakeBackend(store), "node-a", lambda: [WEB])  # type: ignore[arg-type]
        rx.start()
        await rx.positioned(5)
        try:
            mine = await rx.fire(ev("mine"))
            fire(store, ev("for-b", NodeFilter="^node-b$"), 3)
            fire(store, ev("for-web", ServiceFilter="web"), 4)
            for _ in range(100):
                if len(rx.list()) == 2:
                    break
                await asyncio.sleep(0.02)
            assert [e.Name for e in rx.list()] == ["mine", "for-web"]
            assert rx.list()[0].ID == mine.ID  # taken once, although also read from the ring
            assert [e.Name for e in rx.list("for-web")] == ["for-web"]
        finally:
            await rx.stop()

    asyncio.run(main())


def test_a_restored_snapshot_does_not_reuse_event_ltimes() -> None:
    s = Store()
    fire(s, ev("old"), 1)
    snap = s.dump()
    fire(s, ev("newer"), 2)
    fire(s, ev("newest"), 3)
    s.apply(Restore(Data=snap), 4)
    assert [e.Name for e in s.events.after(0).Events] == ["old"]
    assert fire(s, ev("after-restore"), 5).LTime == 4
