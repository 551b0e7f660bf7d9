"""The leader's liveness state machine, driven with explicit times."""

from meshd.rpc import Heartbeat
from meshd.server.members import ALIVE, FAILED, LEFT, Membership
from meshd.structs import Deregister, NodeStatus


def hb(node: str, leaving: bool = False) -> Heartbeat:
    return Heartbeat(Node=node, Address="10.0.0.1", Datacenter="dc1", Leaving=leaving)


def serf_status(ops):
    return [(op.Node, op.Status) for op in ops if isinstance(op, NodeStatus)]


def test_writes_only_on_state_changes():
    m = Membership(failure_timeout=5, reap_after=100)
    m.heartbeat(hb("a"), now=0)
    assert serf_status(m.tick(now=0.5)) == [("a", "passing")]
    for t in range(1, 5):  # heartbeats keep it alive: no more writes
        m.heartbeat(hb("a"), now=t)
        assert m.tick(now=t + 0.5) == []
    assert serf_status(m.tick(now=10)) == [("a", "critical")]
    assert m.nodes["a"].status == FAILED
    assert m.tick(now=11) == []
    m.heartbeat(hb("a"), now=12)
    assert serf_status(m.tick(now=12)) == [("a", "passing")]
    assert m.nodes["a"].status == ALIVE


def test_failed_nodes_are_reaped_after_reap_after():
    m = Membership(failure_timeout=5, reap_after=100)
    m.heartbeat(hb("b"), now=0)
    m.tick(now=0)
    m.tick(now=6)  # failed at 6
    assert m.tick(now=50) == []
    ops = m.tick(now=107)
    assert ops == [Deregister(Node="b")] and "b" not in m.nodes


def test_leave_deregisters_once_and_lists_left():
    m = Membership(failure_timeout=5, reap_after=100)
    m.heartbeat(hb("c"), now=0)
    m.tick(now=0)
    m.heartbeat(hb("c", leaving=True), now=1)
    assert m.tick(now=1) == [Deregister(Node="c")]
    assert m.tick(now=2) == []
    assert [(x.Name, x.Status) for x in m.members("dc1")] == [("c", LEFT)]


def test_new_leader_grace_period():
    m = Membership(failure_timeout=5, reap_after=100)
    m.adopt([("d", "10.0.0.4")], now=100)
    # adopted nodes are alive for a full timeout before anything is written about them
    assert serf_status(m.tick(now=104)) == [("d", "passing")]
    assert serf_status(m.tick(now=106)) == [("d", "critical")]
