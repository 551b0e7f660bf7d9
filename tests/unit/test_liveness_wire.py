"""The heartbeat frames, the placement of nodes on servers, and the batch entry's apply."""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest

from meshd.liveness import FrameError, open_frame, placement, seal_frame
from meshd.server.authority import CommandForbiddenError, Origin, admit
from meshd.server.liveness import status_differs
from meshd.server.store import CommandError, Store
from meshd.structs import (
    SERF_CHECK_ID,
    KVOp,
    NodeStatus,
    NodeStatusBatch,
    Register,
    Session,
    SessionOp,
)

KEY, OTHER = os.urandom(32), os.urandom(32)


def test_a_frame_opens_under_its_key_and_connection_only() -> None:
    frame = seal_frame(KEY, "conn-a", 7, b"body")
    assert open_frame([OTHER, KEY], "conn-a", 6, frame) == (7, b"body", KEY)
    with pytest.raises(FrameError, match="wrong cluster key"):
        open_frame([OTHER], "conn-a", 6, frame)
    with pytest.raises(FrameError, match="wrong cluster key"):  # moved to another connection
        open_frame([KEY], "conn-b", 6, frame)
    with pytest.raises(FrameError, match="out of sequence"):  # replayed on its own connection
        open_frame([KEY], "conn-a", 7, frame)
    with pytest.raises(FrameError, match="bad heartbeat frame"):
        open_frame([KEY], "conn-a", 0, b"\x01garbage")


def test_a_tampered_body_is_refused() -> None:
    frame = bytearray(seal_frame(KEY, "c", 1, b"alive"))
    frame[-1] ^= 1
    with pytest.raises(FrameError):
        open_frame([KEY], "c", 0, bytes(frame))


def test_placement_spreads_nodes_and_a_lost_server_moves_only_its_own() -> None:
    servers = ["10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300"]
    first = {f"node-{i}": placement(f"node-{i}", servers)[0] for i in range(3000)}
    shares = Counter(first.values())
    assert set(shares) == set(servers) and min(shares.values()) > 800
    after = {n: placement(n, servers[:2])[0] for n in first}
    moved = [n for n in first if after[n] != first[n]]
    assert moved and all(first[n] == servers[2] for n in moved)


def test_status_differs_only_when_the_store_says_otherwise() -> None:
    s = Store()
    up = NodeStatus(Node="n1", Address="10.0.0.1", Status="passing")
    assert status_differs(s, up)  # unknown node
    s.apply(up, 1)
    assert not status_differs(s, up)
    assert status_differs(s, NodeStatus(Node="n1", Address="10.0.0.1", Status="critical"))
    server = NodeStatus(Node="n1", Address="10.0.0.1", Status="passing", ServerPort=8300)
    assert status_differs(s, server)  # its `consul` service is missing
    s.apply(server, 2)
    assert not status_differs(s, server)


def test_a_batch_applies_every_node_even_past_one_that_cannot() -> None:
    s = Store()
    s.apply(Register(Node="gone", Address="10.0.0.9"), 1)
    batch = NodeStatusBatch(
        Updates=[
            NodeStatus(Node="a", Address="10.0.0.1", Status="passing"),
            NodeStatus(Node="b", Address="", Status="passing"),  # no address: cannot apply
            NodeStatus(Node="c", Address="10.0.0.3", Status="critical"),
        ],
        Deregisters=["gone", "never-there"],
    )
    assert s.apply(batch, 2) is True
    assert s.checks["a"]["serfHealth"].Status == "passing"
    assert s.checks["c"]["serfHealth"].Status == "critical"
    assert "b" not in s.nodes and "gone" not in s.nodes
    assert (s.status_batches, s.status_batch_nodes) == (1, 5)


def test_a_batch_is_refused_from_an_agent_and_checked_node_by_node() -> None:
    s = Store()
    good = NodeStatusBatch(Updates=[NodeStatus(Node="a", Address="10.0.0.1", Status="passing")])
    with pytest.raises(CommandForbiddenError, match="is issued only by servers"):
        admit(good, Origin.AGENT, s)
    assert admit(good, Origin.SERVER, s) == good
    bad = NodeStatusBatch(
        Updates=[
            NodeStatus(Node="a", Address="10.0.0.1", Status="passing"),
            NodeStatus(Node="b", Address="10.0.0.2", Status="sleepy"),
        ]
    )
    with pytest.raises(CommandError, match=r"Updates\[1\]: Status 'sleepy' is not one of"):
        admit(bad, Origin.SERVER, s)
    with pytest.raises(CommandError, match="Node"):
        admit(NodeStatusBatch(Deregisters=["bad\nname"]), Origin.SERVER, s)
    assert s.index == 0 and not s.nodes


def test_a_node_failed_in_a_batch_loses_its_sessions_and_locks() -> None:
    s = Store()
    index = 0

    def apply(cmd: object) -> None:
        nonlocal index
        index += 1
        assert not isinstance(s.apply(cmd, index), CommandError)  # type: ignore[arg-type]

    sids = {}
    for node in ("n1", "n2"):
        apply(NodeStatus(Node=node, Address="10.0.0.1", Status="passing"))
        sids[node] = str(uuid.uuid4())
        session = Session(ID=sids[node], Node=node, NodeChecks=[SERF_CHECK_ID])
        apply(SessionOp(Op="create", Session=session))
        apply(KVOp(Verb="lock", Key=f"lock/{node}", Value=b"v", Session=sids[node]))
    apply(NodeStatusBatch(Updates=[NodeStatus(Node="n1", Address="10.0.0.1", Status="critical")]))
    assert sids["n1"] not in s.sessions.sessions and s.kv["lock/n1"].Session == ""
    assert sids["n2"] in s.sessions.sessions and s.kv["lock/n2"].Session == sids["n2"]
