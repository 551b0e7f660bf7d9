"""Node liveness timers, held in memory by the server each node is attached to.

Every server keeps one timestamp per node that heartbeats to it and judges those nodes (alive,
failed after `failure_timeout` of silence, left, forgotten after `reap_after`). It never writes
to Raft itself: what changed since its last report goes to the leader as member summaries
(server/liveness.py), and the leader writes the verdicts, many nodes per entry. Heartbeats never
cause a Raft write; only a state change does.

The leader's own Membership also holds the servers' nodes: a server's agent always beats to the
leader, so a dead server is judged by another server, never by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from meshd.liveness import REAPED, MemberSummary
from meshd.rpc import Heartbeat
from meshd.structs import CoordinateUpdate

ALIVE, LEFT, FAILED = 1, 3, 4


@dataclass
class NodeState:
    name: str
    address: str
    datacenter: str
    role: str
    rpc_addr: str = ""
    last_seen: float = field(default_factory=time.monotonic)
    status: int = ALIVE
    failed_at: float = 0.0
    raft_addr: str = ""  # servers only
    alive_since: float = field(default_factory=time.time)  # wall clock, for StableSince
    coord: dict[str, Any] | None = None  # its network coordinate, as its last heartbeat said
    coord_dirty: bool = False  # not yet sent on
    key_fps: list[str] = field(default_factory=list)  # its keyring's fingerprints
    dirty: bool = True  # changed since the last report to the leader

    def summary(self, now: float) -> MemberSummary:
        return MemberSummary(
            Node=self.name,
            Address=self.address,
            Status=self.status,
            Role=self.role,
            Datacenter=self.datacenter,
            RPCAddr=self.rpc_addr,
            Ago=round(max(now - self.last_seen, 0.0), 3),
            KeyFingerprints=list(self.key_fps),
            RaftAddr=self.raft_addr,
        )


class Membership:
    def __init__(self, failure_timeout: float = 5.0, reap_after: float = 72 * 3600.0) -> None:
        self.failure_timeout = failure_timeout
        self.reap_after = reap_after
        self.nodes: dict[str, NodeState] = {}
        self._reaped: set[str] = set()  # forgotten since the last report

    def heartbeat(self, hb: Heartbeat, now: float | None = None) -> NodeState:
        now = time.monotonic() if now is None else now
        st = self.nodes.get(hb.Node)
        if st is None:
            st = self.nodes[hb.Node] = NodeState(
                hb.Node, hb.Address, hb.Datacenter, hb.Role, hb.RPCAddr
            )
            self._reaped.discard(hb.Node)
        seen = (st.address, st.role, st.rpc_addr, st.raft_addr, st.key_fps, st.datacenter)
        st.address, st.role, st.rpc_addr = hb.Address, hb.Role, hb.RPCAddr or st.rpc_addr
        st.raft_addr = hb.RaftAddr or st.raft_addr
        st.datacenter = hb.Datacenter or st.datacenter
        st.key_fps = list(hb.KeyFingerprints)
        if seen != (st.address, st.role, st.rpc_addr, st.raft_addr, st.key_fps, st.datacenter):
            st.dirty = True
        if hb.Coord is not None and hb.Coord != st.coord:
            st.coord, st.coord_dirty = hb.Coord, True
        st.last_seen = now
        if hb.Leaving:
            if st.status != LEFT:
                st.status, st.failed_at, st.dirty = LEFT, now, True
        elif st.status != ALIVE:
            st.status, st.dirty = ALIVE, True
            st.alive_since = time.time()
        return st

    def adopt_server(self, name: str, rpc_addr: str, alive: bool, now: float) -> None:
        """On taking office: a server in the catalog that has not beat to us yet. Alive ones get
        a full grace period; failed ones stay failed (autopilot may clean them up)."""
        if name in self.nodes:
            return
        addr = rpc_addr.rsplit(":", 1)[0]
        st = self.nodes[name] = NodeState(name, addr, "", "consul", rpc_addr, last_seen=now)
        if not alive:
            st.status, st.failed_at = FAILED, now

    def tick(self, now: float | None = None) -> None:
        """Judge the silent: failed after `failure_timeout`; failed and left nodes are
        forgotten after `reap_after`."""
        now = time.monotonic() if now is None else now
        for name, st in list(self.nodes.items()):
            if st.status == ALIVE and now - st.last_seen > self.failure_timeout:
                st.status, st.failed_at, st.dirty = FAILED, now, True
            elif st.status != ALIVE and now - st.failed_at > self.reap_after:
                del self.nodes[name]
                self._reaped.add(name)

    def changes(self, now: float | None = None, full: bool = False) -> list[MemberSummary]:
        """The summaries to report: what changed since the last call (everything if `full`)."""
        now = time.monotonic() if now is None else now
        out = []
        for st in self.nodes.values():
            if st.dirty or full:
                out.append(st.summary(now))
                st.dirty = False
        out += [MemberSummary(Node=n, Address="", Status=REAPED) for n in sorted(self._reaped)]
        self._reaped.clear()
        return out

    def unreport(self, summaries: list[MemberSummary]) -> None:
        """A report that did not reach the leader: forgotten nodes are told again (the next
        report is a full one, which covers every node still here)."""
        self._reaped.update(s.Node for s in summaries if s.Status == REAPED)

    def has_changes(self) -> bool:
        return bool(self._reaped) or any(st.dirty for st in self.nodes.values())

    def forget(self, name: str) -> None:
        """The leader says the node is another server's now (or was force-left): an agent that
        still beats here is a new arrival on its next beat."""
        self.nodes.pop(name, None)

    def drop_role(self, role: str) -> None:
        """On losing leadership: servers' agents beat to the new leader, not to us."""
        for name in [n for n, st in self.nodes.items() if st.role == role]:
            del self.nodes[name]

    def pending_coordinates(self) -> list[CoordinateUpdate]:
        """The coordinates heard since the last call, once each (Consul batches them too)."""
        out = []
        for st in self.nodes.values():
            if st.coord_dirty and st.coord is not None and st.status == ALIVE:
                out.append(CoordinateUpdate(Node=st.name, Coord=st.coord))
                st.coord_dirty = False
        return out
