"""The store's snapshot format, and an encoder that can run beside the Raft thread.

A snapshot is taken in two steps. `SnapshotView` is a point-in-time copy made under the store's
lock: only the top-level tables are copied (their values are structs the store never mutates,
and a node's rows are copied by the store the first time they change after a view was taken),
so taking it costs O(nodes), not O(rows). `encode` then turns the view into the same msgpack
bytes `msgspec.msgpack.encode(_Snapshot(...))` gives, but row by row with a pause every few
thousand rows: msgspec holds the GIL for a whole call, and one call over 200,000 rows would stall
the Raft thread and the event loop as long as the old in-line dump did.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from meshd.structs import HealthCheck, KVEntry, Node, NodeService, Session

_YIELD_EVERY = 1000  # rows encoded between two GIL hand-overs (~1-1.5 ms of work)
# a real sleep, not sleep(0): a thread releasing the GIL and asking for it again at once
# usually gets it back before a waiting thread is scheduled
_PAUSE = 0.0002


class SnapshotData(msgspec.Struct):
    """What a snapshot holds; field order is the wire order (msgpack map, by name)."""

    index: int
    nodes: list[Node]
    services: list[tuple[str, NodeService]]
    checks: list[HealthCheck]
    kv: list[KVEntry]
    topics: dict[str, int]
    mesh: dict[str, Any] = {}
    events: dict[str, Any] = {}
    sessions: list[Session] = []
    acl: dict[str, Any] = {}
    autopilot: dict[str, Any] = {}
    coordinates: list[list[Any]] = []
    prepared_queries: list[dict[str, Any]] = []
    keyring: dict[str, Any] = {}


_FIELDS: tuple[str, ...] = SnapshotData.__struct_fields__
_ROW_TABLES = ("nodes", "services", "checks", "kv", "topics")
# the store's sub-states, each with a `dump()` small enough to take on the Raft thread
SMALL_TABLES = _FIELDS[len(_ROW_TABLES) + 1 :]


class _Rows(dict[str, Any]):
    """One node's services or checks, stamped with the snapshot generation it was made in."""

    __slots__ = ("gen",)
    gen: int


def writable_rows(table: dict[str, dict[str, Any]], node: str, gen: int) -> dict[str, Any]:
    """`table[node]`, safe to change: a `SnapshotView` shares every node's rows with the
    store, so the first change to a node's rows after a view was taken (generation `gen`)
    copies them; later changes in the same generation write in place. Taking a view thus
    copies no rows, and a view stays unchanged while it is encoded on another thread."""
    rows = table.get(node)
    if type(rows) is not _Rows or rows.gen != gen:
        rows = _Rows(rows or ())
        rows.gen = gen
        table[node] = rows
    return rows


class SnapshotView(msgspec.Struct):
    """A consistent copy of the store at `index`, cheap to take; `encode` serialises it.

    `services` and `checks` map a node to its rows (the store's own per-node dicts, which it
    copies before changing them again); the small tables are already in their dump form.
    """

    index: int
    nodes: dict[str, Node]
    services: dict[str, Mapping[str, NodeService]]
    checks: dict[str, Mapping[str, HealthCheck]]
    kv: dict[str, KVEntry]
    topics: dict[str, int]
    small: dict[str, Any]


def _header(n: int, fix: int, short: bytes, long: bytes) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 1 << 16:
        return short + n.to_bytes(2, "big")
    return long + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    return _header(n, 0x90, b"\xdc", b"\xdd")


def _map_header(n: int) -> bytes:
    return _header(n, 0x80, b"\xde", b"\xdf")


class _Writer:
    """Appends msgpack to one buffer, handing the GIL over every `_YIELD_EVERY` rows."""

    def __init__(self, pause: bool) -> None:
        self.enc = msgspec.msgpack.Encoder()
        self.out = bytearray()
        self.pause = pause
        self._rows = 0

    def value(self, obj: Any) -> None:
        self.enc.encode_into(obj, self.out, -1)

    def row(self) -> None:
        self._rows += 1
        if self.pause and self._rows % _YIELD_EVERY == 0:
            time.sleep(_PAUSE)  # releases the GIL: a waiting Raft or event-loop thread runs now

    def array(self, rows: Iterable[Any], n: int) -> None:
        self.out += _array_header(n)
        for r in rows:
            self.value(r)
            self.row()

    def pairs(self, table: Mapping[str, Mapping[str, Any]]) -> None:
        """`[(node, row), ...]`, as the `services` field is stored."""
        self.out += _array_header(_count(table))
        for node, rows in table.items():
            prefix = b"\x92" + self.enc.encode(node)
            for r in rows.values():
                self.out += prefix
                self.value(r)
                self.row()

    def mapping(self, d: Mapping[str, Any]) -> None:
        self.out += _map_header(len(d))
        for k, v in d.items():
            self.value(k)
            self.value(v)
            self.row()


def encode(view: SnapshotView, *, pause: bool = True) -> bytes:
    """The view as snapshot bytes (readable as `SnapshotData`). `pause=False` when nothing
    else needs the GIL meanwhile (a test, dev mode's in-line compaction)."""
    return bytes(encode_buffer(view, pause=pause))


def encode_buffer(view: SnapshotView, *, pause: bool = True) -> bytearray:
    """`encode` without the final copy (~90 MB at 200,000 instances): what the snapshot writer
    pickles; a bytearray decodes wherever bytes do, in older versions too."""
    w = _Writer(pause)
    w.out += _map_header(len(_FIELDS))
    for name in _FIELDS:
        w.value(name)
        if name == "index":
            w.value(view.index)
        elif name == "services":
            w.pairs(view.services)
        elif name == "checks":
            w.array((c for m in view.checks.values() for c in m.values()), _count(view.checks))
        elif name == "topics":
            w.mapping(view.topics)
        elif name in _ROW_TABLES:  # nodes, kv
            table: dict[str, Any] = getattr(view, name)
            w.array(table.values(), len(table))
        else:
            w.value(view.small[name])
    return w.out


def _count(table: Mapping[str, Mapping[str, Any]]) -> int:
    return sum(len(m) for m in table.values())


def decode(data: bytes) -> SnapshotData:
    return msgspec.msgpack.decode(data, type=SnapshotData)
