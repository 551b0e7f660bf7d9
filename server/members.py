"""Node liveness, held by the leader in memory.

Agents heartbeat to the leader; the leader keeps one timestamp per node and writes to Raft only
when a node changes state (alive -> failed, failed -> alive, left), as the design requires: no Raft
write per heartbeat. A new leader starts every known node as alive with a fresh timer (a grace
period), since heartbeat times are not replicated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from meshd.rpc import Heartbeat, Member
from meshd.structs import (
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    CoordinateUpdate,
    Deregister,
    NodeStatus,
)

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
    synced_status: int = 0  # the status last committed to Raft (0: never)
    raft_addr: str = ""  # servers only
    alive_since: float = field(default_factory=time.time)  # wall clock, for StableSince
    prune: bool = False  # force-leave -prune: forget the node once its leave is written
    coord: dict[str, Any] | None = None  # its network coordinate, as its last heartbeat said
    coord_dirty: bool = False  # not yet written to Raft
    key_fps: list[str] = field(default_factory=list)  # its keyring's fingerprints

    def server_port(self) -> int:
        """The RPC port of a server member (0 for a client), for its `consul` service."""
        if self.role != "consul" or ":" not in self.rpc_addr:
            return 0
        try:
            return int(self.rpc_addr.rsplit(":", 1)[1])
        except ValueError:
            return 0


class Membership:
    def __init__(self, failure_timeout: float = 5.0, reap_after: float = 72 * 3600.0) -> None:
        self.failure_timeout = failure_timeout
        self.reap_after = reap_after
        self.nodes: dict[str, NodeState] = {}

    def heartbeat(self, hb: Heartbeat, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        st = self.nodes.get(hb.Node)
        if st is None:
            st = self.nodes[hb.Node] = NodeState(
                hb.Node, hb.Address, hb.Datacenter, hb.Role, hb.RPCAddr
            )
        st.address, st.role, st.rpc_addr = hb.Address, hb.Role, hb.RPCAddr or st.rpc_addr
        st.raft_addr = hb.RaftAddr or st.raft_addr
        st.key_fps = list(hb.KeyFingerprints)
        if hb.Coord is not None and hb.Coord != st.coord:
            st.coord, st.coord_dirty = hb.Coord, True
        st.last_seen = now
        if hb.Leaving:
            st.status = LEFT
        elif st.status != ALIVE:
            st.status = ALIVE
            st.alive_since = time.time()
            st.prune = False

    def force_leave(self, name: str, prune: bool) -> NodeState | None:
        """Consul's force-leave: the node is marked left (its catalog entry goes on the next
        tick); `prune` also drops it from the member list. None when the node is unknown.
        An agent that is in fact alive comes back with its next heartbeat, as in Consul."""
        st = self.nodes.get(name)
        if st is None:
            return None
        st.status, st.prune = LEFT, prune
        return st

    def take_office(self, catalog_nodes: list[tuple[str, str]], now: float | None = None) -> None:
        """On becoming leader: every node gets a full grace period and its status is re-written.

        Nodes that heartbeated since Raft made us leader stay (clearing them would empty
        /v1/agent/members until their next beat); a timer from an earlier term is restarted,
        since its time was not replicated to us and may be arbitrarily stale.
        """
        now = time.monotonic() if now is None else now
        for st in self.nodes.values():
            st.last_seen = now
            st.synced_status = 0
            if st.status == FAILED:  # judged by an earlier term: it gets the grace period too
                st.status = ALIVE
        self.adopt(catalog_nodes, now)

    def adopt(self, names_and_addrs: list[tuple[str, str]], now: float | None = None) -> None:
        """On becoming leader: give catalog nodes we have no timer for a full grace period."""
        now = time.monotonic() if now is None else now
        for name, addr in names_and_addrs:
            if name not in self.nodes:
                self.nodes[name] = NodeState(name, addr, "", "node", last_seen=now, synced_status=0)

    def tick(self, now: float | None = None) -> list[NodeStatus | Deregister]:
        """Pure-ish: the Raft writes that the elapsed time calls for."""
        now = time.monotonic() if now is None else now
        ops: list[NodeStatus | Deregister] = []
        for name, st in list(self.nodes.items()):
            if st.status == ALIVE and now - st.last_seen > self.failure_timeout:
                st.status = FAILED
                st.failed_at = now
            if st.status == LEFT:
                if st.synced_status != LEFT:
                    ops.append(Deregister(Node=name))
                    st.synced_status = LEFT
                if st.prune:
                    del self.nodes[name]
                continue
            if st.status == FAILED and now - st.failed_at > self.reap_after:
                ops.append(Deregister(Node=name))
                del self.nodes[name]
                continue
            if st.status != st.synced_status:
                status = HEALTH_PASSING if st.status == ALIVE else HEALTH_CRITICAL
                ops.append(
                    NodeStatus(
                        Node=name, Address=st.address, Status=status, ServerPort=st.server_port()
                    )
                )
                st.synced_status = st.status
        return ops

    def pending_coordinates(self) -> list[CoordinateUpdate]:
        """The coordinates heard since the last batch, once each (Consul batches them too)."""
        out = []
        for st in self.nodes.values():
            if st.coord_dirty and st.coord is not None and st.status == ALIVE:
                out.append(CoordinateUpdate(Node=st.name, Coord=st.coord))
                st.coord_dirty = False
        return out

    def members(self, datacenter: str) -> list[Member]:
        return [
            Member(
                Name=s.name,
                Addr=s.address,
                Role=s.role,
                Status=s.status,
                Datacenter=s.datacenter or datacenter,
                RPCAddr=s.rpc_addr,
            )
            for s in sorted(self.nodes.values(), key=lambda s: s.name)
        ]
