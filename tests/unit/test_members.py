"""Liveness state machines, driven with explicit times: each server's timers (`Membership`)
feeding the leader's view (`LeaderView`), whose pending writes are what Raft would get."""

from __future__ import annotations

from meshd.liveness import REAPED, LivenessReport
from meshd.rpc import Heartbeat
from meshd.server.liveness_view import LeaderView
from meshd.server.members import ALIVE, FAILED, LEFT, Membership

TIMEOUT = 5.0


def hb(node: str, leaving: bool = False, **kw: object) -> Heartbeat:
    return Heartbeat(Node=node, Address="10.0.0.1", Datacenter="dc1", Leaving=leaving, **kw)  # type: ignore[arg-type]


class Fleet:
    """Servers, each with its own timers, and the leader's view of what they report."""

    def __init__(self, *servers: str, reap_after: float = 100.0) -> None:
        self.members = {s: Membership(TIMEOUT, reap_after) for s in servers}
        self.view = LeaderView(servers[0], TIMEOUT, reap_after)
        self.full = set(servers)

    def step(self, now: float, silent: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """Every (non-silent) server judges and reports; the writes of this window:
        (node, "passing"/"critical"/"deregister")."""
        for name, m in self.members.items():
            if name in silent:
                continue
            m.tick(now)
            report = LivenessReport(
                Server=name,
                RaftAddr=name,
                Full=name in self.full,
                Members=m.changes(now, full=name in self.full),
                Coords=m.pending_coordinates(),
            )
            reply = self.view.receive(report, now)
            self.full.discard(name)
            if reply.NeedFull:
                self.full.add(name)
            for node in reply.Forget:
                m.forget(node)
        self.view.tick(now)
        for node in self.view.forget.pop(self.view.self_name, ()):
            self.members[self.view.self_name].forget(node)
        updates, gone = self.view.take_batch()
        return sorted([(u.Node, u.Status) for u in updates] + [(n, "deregister") for n in gone])


def test_writes_only_on_state_changes() -> None:
    f = Fleet("s1")
    m = f.members["s1"]
    m.heartbeat(hb("a"), now=0)
    assert f.step(0.5) == [("a", "passing")]
    for t in range(1, 5):  # heartbeats keep it alive: no more writes
        m.heartbeat(hb("a"), now=t)
        assert f.step(t + 0.5) == []
    assert f.step(10) == [("a", "critical")]
    assert m.nodes["a"].status == FAILED
    assert f.step(11) == []
    m.heartbeat(hb("a"), now=12)
    assert f.step(12) == [("a", "passing")]
    assert m.nodes["a"].status == ALIVE


def test_failed_nodes_are_reaped_after_reap_after() -> None:
    f = Fleet("s1")
    f.members["s1"].heartbeat(hb("b"), now=0)
    f.step(0)
    assert f.step(6) == [("b", "critical")]  # failed at 6
    assert f.step(50) == []
    assert f.step(107) == [("b", "deregister")]
    assert "b" not in f.members["s1"].nodes and "b" not in f.view.claims


def test_leave_deregisters_once_and_lists_left() -> None:
    f = Fleet("s1")
    f.members["s1"].heartbeat(hb("c"), now=0)
    f.step(0)
    f.members["s1"].heartbeat(hb("c", leaving=True), now=1)
    assert f.step(1) == [("c", "deregister")]
    assert f.step(2) == []
    assert [(x.Name, x.Status) for x in f.view.members("dc1")] == [("c", LEFT)]


def test_new_leader_gives_catalog_nodes_a_grace_period_and_writes_nothing_unchanged() -> None:
    f = Fleet("s1", "s2")
    f.view.take_office(
        [("d", "10.0.0.4", True, 0), ("e", "10.0.0.5", True, 0), ("x", "10.0.0.6", False, 0)],
        now=100,
    )
    f.members["s2"].heartbeat(hb("e"), now=100.5)
    # e reports in alive (the store already says so: the caller filters that write out)
    assert f.step(101) == [("e", "passing")]
    f.members["s2"].heartbeat(hb("e"), now=103)
    assert f.step(104) == []  # d is silent, but still in its grace period
    f.members["s2"].heartbeat(hb("e"), now=105)
    assert f.step(106) == [("d", "critical")]
    assert {m.Name: m.Status for m in f.view.members("dc1")} == {"d": FAILED, "e": 1, "x": FAILED}


def test_force_leave_deregisters_and_prune_forgets() -> None:
    f = Fleet("s1")
    m = f.members["s1"]
    for n in ("a", "b"):
        m.heartbeat(hb(n), now=0)
    f.step(0.5)
    assert f.view.force_leave("nobody", prune=False) is None
    assert f.view.force_leave("a", prune=False) is not None
    assert f.view.force_leave("b", prune=True) is not None
    assert f.step(1) == [("a", "deregister"), ("b", "deregister")]
    assert f.view.claims["a"].summary.Status == LEFT and "b" not in f.view.claims
    assert "a" not in m.nodes  # its owner forgot it ...
    m.heartbeat(hb("a"), now=2)  # ... so an agent that is in fact alive comes back
    assert f.step(2) == [("a", "passing")]


def test_a_node_that_moved_is_not_failed_by_the_server_it_left() -> None:
    f = Fleet("s1", "s2")
    f.members["s2"].heartbeat(hb("n"), now=0)
    assert f.step(0.2) == [("n", "passing")]
    for t in (1, 2, 3, 4, 5, 6, 7, 8):  # it moved to s1 at t=1; s2's timer runs out at 5
        f.members["s1"].heartbeat(hb("n"), now=t)
        assert f.step(t + 0.2) in ([], [("n", "passing")])  # the move itself writes nothing new
    assert f.view.claims["n"].server == "s1"
    assert "n" not in f.members["s2"].nodes  # told to forget it


def test_a_dead_servers_nodes_get_a_grace_period_to_attach_elsewhere() -> None:
    f = Fleet("s1", "s2")
    for n in ("moved", "died"):
        f.members["s2"].heartbeat(hb(n), now=0)
    f.step(0.2)
    # s2 dies at 1; "moved" re-attaches to s1 at 2; "died" died with its server
    for t in (2, 3, 4, 5, 6, 7, 8, 9, 10):
        f.members["s1"].heartbeat(hb("moved"), now=t)
        assert f.step(t + 0.5, silent=("s2",)) in ([], [("moved", "passing")])
    assert f.view.claims["died"].summary.Status == ALIVE  # unowned, within its grace
    assert f.step(12, silent=("s2",)) == [("died", "critical")]
    assert f.view.claims["moved"].server == "s1"


def test_transitions_of_many_nodes_in_one_window_are_one_batch() -> None:
    f = Fleet("s1", "s2")
    for i in range(5):
        f.members["s1" if i % 2 else "s2"].heartbeat(hb(f"n{i}"), now=0)
    assert len(f.step(0.2)) == 5
    assert f.step(6) == [(f"n{i}", "critical") for i in range(5)]  # one window, one batch


def test_server_status_carries_its_rpc_port_and_coordinates_pass_once() -> None:
    f = Fleet("s1")
    coord = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}
    f.members["s1"].heartbeat(hb("s1", Role="consul", RPCAddr="10.0.0.1:8300", Coord=coord), now=0)
    f.step(0)
    assert f.view.pending == {}
    f.members["s1"].heartbeat(hb("s9", Role="consul", RPCAddr="10.0.0.9:8300"), now=0)
    f.members["s1"].tick(0)
    f.view.receive(
        LivenessReport(Server="s1", RaftAddr="s1", Members=f.members["s1"].changes(0)), now=0
    )
    [status] = f.view.take_batch()[0]
    assert status.Node == "s9" and status.ServerPort == 8300
    assert [(u.Node, u.Coord) for u in f.view.take_coordinates()] == [("s1", coord)]
    assert f.members["s1"].pending_coordinates() == []  # unchanged since: nothing to send


def test_a_stale_failed_word_does_not_fail_a_node_a_new_leader_is_waiting_for() -> None:
    """After a leader change, the server a node left says "failed" before the server it moved
    to says "alive": the node keeps its grace period and nothing is written."""
    f = Fleet("s1", "s2", "s3")
    f.view.take_office([("n", "10.0.0.4", True, 0)], now=100)
    f.members["s2"].heartbeat(hb("n"), now=90)  # it left s2 long ago ...
    f.members["s3"].heartbeat(hb("n"), now=100.5)  # ... and beats to s3
    f.members["s2"].tick(100)
    assert f.members["s2"].nodes["n"].status == FAILED
    assert f.step(101, silent=("s3",)) == []  # s2's word comes first: refused
    assert "n" not in f.members["s2"].nodes
    assert f.step(101.5) == [("n", "passing")]  # the store already says so: filtered out
    assert f.view.claims["n"].server == "s3"


def test_a_new_leader_times_the_servers_of_the_catalog_itself() -> None:
    """Autopilot judges servers by the leader's own timers: a server that never beats to the
    new leader fails after its grace period, one already failed stays failed."""
    m = Membership(TIMEOUT, 100)
    m.adopt_server("s2", "10.0.0.2:8300", alive=True, now=10)
    m.adopt_server("s3", "10.0.0.3:8300", alive=False, now=10)
    m.tick(14)
    assert (m.nodes["s2"].status, m.nodes["s3"].status) == (ALIVE, FAILED)
    assert m.nodes["s2"].rpc_addr == "10.0.0.2:8300" and m.nodes["s2"].role == "consul"
    m.tick(16)
    assert m.nodes["s2"].status == FAILED


def test_a_forgotten_node_is_told_again_when_the_report_is_lost() -> None:
    m = Membership(TIMEOUT, reap_after=10)
    m.heartbeat(hb("r"), now=0)
    m.tick(6)  # failed
    m.tick(17)  # forgotten
    lost = m.changes(17)
    assert [(s.Node, s.Status) for s in lost] == [("r", REAPED)]
    assert m.changes(18) == []
    m.unreport(lost)
    assert [(s.Node, s.Status) for s in m.changes(19)] == [("r", REAPED)]
