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


def test_force_leave_deregisters_and_prune_forgets():
    m = Membership(failure_timeout=5, reap_after=100)
    for n in ("a", "b"):
        m.heartbeat(hb(n), now=0)
    m.tick(now=0.5)
    assert m.force_leave("nobody", prune=False) is None
    assert m.force_leave("a", prune=False) is not None
    assert m.force_leave("b", prune=True) is not None
    ops = m.tick(now=1)
    assert sorted(op.Node for op in ops if isinstance(op, Deregister)) == ["a", "b"]
    assert m.nodes["a"].status == LEFT and "b" not in m.nodes
    m.heartbeat(hb("a"), now=2)  # an agent that is in fact alive comes back
    assert serf_status(m.tick(now=2)) == [("a", "passing")]


def test_taking_office_keeps_members_that_already_beat():
    m = Membership(failure_timeout=5, reap_after=100)
    m.heartbeat(hb("a"), now=0)
    m.tick(now=0)
    m.take_office([("a", "10.0.0.1"), ("c", "10.0.0.3")], now=50)
    assert sorted(m.nodes) == ["a", "c"]
    assert serf_status(m.tick(now=51)) == [("a", "passing"), ("c", "passing")]  # not failed


def test_server_status_carries_its_rpc_port_and_coordinates_batch_once():
    m = Membership(failure_timeout=5, reap_after=100)
    coord = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}
    m.heartbeat(
        Heartbeat(
            Node="s1",
            Address="10.0.0.1",
            Datacenter="dc1",
            Role="consul",
            RPCAddr="10.0.0.1:8300",
            Coord=coord,
        ),
        now=0,
    )
    [status] = [op for op in m.tick(now=0) if isinstance(op, NodeStatus)]
    assert status.ServerPort == 8300
    assert [(u.Node, u.Coord) for u in m.pending_coordinates()] == [("s1", coord)]
    assert m.pending_coordinates() == []  # unchanged since: nothing to write
