"""Nodes' network coordinates in the replicated state (Consul's coordinates table).

Agents measure, the leader batches (one Raft write every few seconds, never one per heartbeat),
and every server answers reads. A coordinate for a node the catalog does not have is dropped,
as Consul drops it: coordinates live and die with their node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshd.structs import CoordinateBatch

if TYPE_CHECKING:
    from meshd.server.store import Store

TOPIC = "tbl:coordinates"


class CoordinateState:
    def __init__(self, nodes: dict[str, Any]) -> None:
        self._nodes = nodes  # the store's node table (live reference)
        self.coords: dict[tuple[str, str], dict[str, Any]] = {}

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {CoordinateBatch: self.apply}

    def apply(self, batch: CoordinateBatch, index: int, changed: set[str]) -> bool:
        # coordinates of nodes deregistered since the last batch go now (a node registered
        # again starts without its old position); deterministic, as every server applies it
        for key in [k for k in self.coords if k[0] not in self._nodes]:
            del self.coords[key]
        for u in batch.Updates:
            if u.Node in self._nodes:
                self.coords[(u.Node, u.Segment)] = dict(u.Coord)
                changed.add(TOPIC)
        return True

    def rows(self, node: str = "") -> list[dict[str, Any]]:
        return [
            {"Node": n, "Segment": seg, "Coord": c}
            for (n, seg), c in sorted(self.coords.items())
            if n in self._nodes and (not node or n == node)
        ]

    def dump(self) -> list[list[Any]]:
        return [[n, seg, c] for (n, seg), c in self.coords.items()]

    def load(self, data: list[list[Any]], nodes: dict[str, Any]) -> None:
        self._nodes = nodes
        self.coords = {(str(n), str(seg)): dict(c) for n, seg, c in data}


def read_coordinates(store: Store, query: Any) -> tuple[int, Any, list[str]]:
    topics = [TOPIC, "tbl:nodes"]
    index = max([store.topics.get(t, 0) for t in topics] + [1])
    return index, store.coordinates.rows(query.Node), topics


def read_autopilot(store: Store, query: Any) -> tuple[int, Any, list[str]]:
    ap = store.autopilot
    return max(ap.modify_index, 1), ap.to_json(), ["autopilot"]
