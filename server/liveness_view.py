"""The leader's picture of every node's liveness, assembled from its servers' reports.

Each node is claimed by one server (the one it beats to). A claim that a node is alive or left
is taken from whichever server has the fresher word on it (a node moved); a claim that it failed
only from its current owner, since the server it left judges it silent. The server whose claim
lost is told to forget the node. A server that stops reporting (it died, or lost the leader)
leaves its nodes unowned: each gets a grace period of `failure_timeout` to turn up at another
server before the leader fails it, so a server's death does not fail its agents; a new leader
treats every node in the catalog the same way. Accepted changes become pending writes, which the
caller filters against the store and commits as one `NodeStatusBatch` per window.

Pure: time comes in as `now` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.liveness import REAPED, LivenessReply, LivenessReport, MemberSummary
from meshd.rpc import Member
from meshd.server.members import ALIVE, FAILED, LEFT
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, CoordinateUpdate, NodeStatus

UNOWNED = ""


@dataclass
class Claim:
    summary: MemberSummary
    server: str  # the owning server's node name; UNOWNED while waiting for one
    seen_at: float  # when the owner last heard the node (leader clock)
    deadline: float = 0.0  # unowned and alive: failed at this time unless claimed
    changed_at: float = 0.0  # when it turned failed or left (for reaping)


@dataclass
class LeaderView:
    self_name: str
    failure_timeout: float = 5.0
    reap_after: float = 72 * 3600.0
    claims: dict[str, Claim] = field(default_factory=dict)
    last_report: dict[str, float] = field(default_factory=dict)  # server -> when it reported
    full_from: set[str] = field(default_factory=set)  # servers that sent a full report to us
    forget: dict[str, set[str]] = field(default_factory=dict)  # server -> nodes to drop
    pending: dict[str, NodeStatus | None] = field(default_factory=dict)  # None: deregister
    coords: dict[str, CoordinateUpdate] = field(default_factory=dict)

    # ---- taking office ----------------------------------------------------------------

    def take_office(self, catalog: list[tuple[str, str, bool, int]], now: float) -> None:
        """Start from the catalog: (node, address, serfHealth passing, server port) of every
        node that has a `serfHealth`. Alive ones are unowned with a full grace period; nothing
        is written about a node unless its state turns out to differ from the store's."""
        self.claims.clear()
        self.last_report.clear()
        self.full_from.clear()
        self.forget.clear()
        self.pending.clear()
        for name, addr, passing, port in catalog:
            summary = MemberSummary(
                Node=name,
                Address=addr,
                Status=ALIVE if passing else FAILED,
                Role="consul" if port else "node",
                RPCAddr=f"{addr}:{port}" if port else "",
            )
            self.claims[name] = Claim(
                summary, UNOWNED, now, deadline=now + self.failure_timeout, changed_at=now
            )

    # ---- reports ----------------------------------------------------------------------

    def receive(self, report: LivenessReport, now: float) -> LivenessReply:
        server = report.Server
        self.last_report[server] = now
        if report.Full:
            self.full_from.add(server)
        for s in report.Members:
            if not self._accept(server, s, now):
                self.forget.setdefault(server, set()).add(s.Node)
        for c in report.Coords:
            if (claim := self.claims.get(c.Node)) is not None and claim.server == server:
                self.coords[c.Node] = c
        return LivenessReply(
            Forget=sorted(self.forget.pop(server, ())), NeedFull=server not in self.full_from
        )

    def _accept(self, server: str, s: MemberSummary, now: float) -> bool:
        """Take `server`'s word on a node, or refuse it (the node belongs elsewhere)."""
        cur = self.claims.get(s.Node)
        seen_at = now - s.Ago
        if cur is not None and cur.server != server:
            if s.Status in (ALIVE, LEFT):
                if cur.server != UNOWNED and cur.summary.Status == ALIVE and seen_at < cur.seen_at:
                    return False  # its owner heard from it more recently
            elif cur.summary.Status == ALIVE or cur.server != UNOWNED:
                return False  # only its owner fails it; an unowned one fails when its grace ends
            if cur.server != UNOWNED:
                self.forget.setdefault(cur.server, set()).add(s.Node)
        if cur is not None and cur.summary.Status == LEFT and s.Status == FAILED:
            return True  # a node that was made to leave is not brought back as failed
        if s.Status == REAPED:
            self.claims.pop(s.Node, None)
            self.pending[s.Node] = None
            return True
        old = cur.summary.Status if cur is not None else 0
        changed_at = now if s.Status != old else (cur.changed_at if cur else now)
        self.claims[s.Node] = Claim(s, server, seen_at, changed_at=changed_at)
        self._queue(s)
        return True

    def _queue(self, s: MemberSummary) -> None:
        if s.Status == LEFT:
            self.pending[s.Node] = None
            return
        self.pending[s.Node] = NodeStatus(
            Node=s.Node,
            Address=s.Address,
            Status=HEALTH_PASSING if s.Status == ALIVE else HEALTH_CRITICAL,
            ServerPort=server_port(s),
        )

    # ---- time -------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Servers silent for `failure_timeout` lose their nodes (each gets a grace period);
        unowned nodes past their grace fail; failed and left nodes nobody owns are reaped."""
        for server, at in list(self.last_report.items()):
            if server != self.self_name and now - at > self.failure_timeout:
                del self.last_report[server]
                self.full_from.discard(server)
                for claim in self.claims.values():
                    if claim.server == server:
                        claim.server = UNOWNED
                        claim.deadline = now + self.failure_timeout
        for name, claim in list(self.claims.items()):
            if claim.server != UNOWNED:
                continue
            st = claim.summary.Status
            if st == ALIVE and now > claim.deadline:
                claim.summary = _with_status(claim.summary, FAILED)
                claim.changed_at = now
                self._queue(claim.summary)
            elif st in (FAILED, LEFT) and now - claim.changed_at > self.reap_after:
                del self.claims[name]
                self.pending[name] = None

    # ---- operator ---------------------------------------------------------------------

    def force_leave(self, name: str, prune: bool) -> Claim | None:
        """Consul's force-leave: the node is written as left; its owner forgets it, so an
        agent that is in fact alive comes back with its next beat. None: unknown node."""
        claim = self.claims.get(name)
        if claim is None:
            return None
        if claim.server != UNOWNED:
            self.forget.setdefault(claim.server, set()).add(name)
        claim.summary = _with_status(claim.summary, LEFT)
        claim.server = UNOWNED
        self.pending[name] = None
        if prune:
            del self.claims[name]
        return claim

    def take_batch(self) -> tuple[list[NodeStatus], list[str]]:
        """The pending writes, once: (status updates, nodes to deregister)."""
        updates = [op for op in self.pending.values() if op is not None]
        gone = [name for name, op in self.pending.items() if op is None]
        self.pending.clear()
        return updates, gone

    def take_coordinates(self) -> list[CoordinateUpdate]:
        out = list(self.coords.values())
        self.coords.clear()
        return out

    def members(self, datacenter: str) -> list[Member]:
        return [
            Member(
                Name=c.summary.Node,
                Addr=c.summary.Address,
                Role=c.summary.Role,
                Status=c.summary.Status,
                Datacenter=c.summary.Datacenter or datacenter,
                RPCAddr=c.summary.RPCAddr,
                Server=c.server,
            )
            for _, c in sorted(self.claims.items())
        ]

    def owned_by(self, server: str) -> list[str]:
        return sorted(n for n, c in self.claims.items() if c.server == server)


def _with_status(s: MemberSummary, status: int) -> MemberSummary:
    return MemberSummary(
        Node=s.Node,
        Address=s.Address,
        Status=status,
        Role=s.Role,
        Datacenter=s.Datacenter,
        RPCAddr=s.RPCAddr,
        KeyFingerprints=s.KeyFingerprints,
        RaftAddr=s.RaftAddr,
    )


def server_port(s: MemberSummary) -> int:
    """The RPC port of a server member (0 for a client), for its `consul` service."""
    if s.Role != "consul" or ":" not in s.RPCAddr:
        return 0
    try:
        return int(s.RPCAddr.rsplit(":", 1)[1])
    except ValueError:
        return 0
