"""The store's snapshot view and its read indexes, against a random write history.

A view must stay exactly what the store held when it was taken while later writes change the
same nodes' rows (it is encoded on another thread), and its bytes must be what encoding the
whole state in one call gives. The indexes behind /v1/catalog/services (tags per service) and
/v1/health/state/{critical,warning} (checks not passing) must always equal a full scan.
"""

from __future__ import annotations

import random

import msgspec
import pytest

from meshd import queries as q
from meshd.server import snapshot
from meshd.server.reads import run_query
from meshd.server.store import Store
from meshd.structs import (
    Deregister,
    HealthCheck,
    KVOp,
    NodeService,
    Register,
    Restore,
    Txn,
    TxnNodeOp,
    TxnOp,
    TxnServiceOp,
)

TAGS = ["a", "b", "c", "primary", "v2"]


def random_command(rng: random.Random) -> object:
    node = f"n{rng.randrange(12)}"
    sid = f"s{rng.randrange(8)}"
    kind = rng.random()
    if kind < 0.45:
        svc = NodeService(
            ID=sid,
            Service=f"svc{rng.randrange(5)}",
            Tags=rng.sample(TAGS, rng.randrange(4)) + (["a"] if rng.random() < 0.1 else []),
            Port=rng.randrange(1, 9),
        )
        check = HealthCheck(
            Node=node,
            CheckID=f"c-{sid}",
            Name="c",
            Status=rng.choice(["passing", "critical", "warning"]),
            ServiceID=sid,
        )
        return Register(Node=node, Address="10.0.0.1", Service=svc, Check=check)
    if kind < 0.55:
        status = rng.choice(["passing", "passing", "critical"])
        check = HealthCheck(Node=node, CheckID="serfHealth", Name="serf", Status=status)
        return Register(Node=node, Address=f"10.0.0.{rng.randrange(3)}", Check=check)
    if kind < 0.7:
        return Deregister(Node=node, ServiceID=sid)
    if kind < 0.75:
        return Deregister(Node=node, CheckID=f"c-{sid}")
    if kind < 0.8:
        return Deregister(Node=node)
    if kind < 0.9:
        return KVOp(Verb=rng.choice(["set", "delete"]), Key=f"k/{rng.randrange(20)}", Value=b"v")
    # a transaction that fails half-way: rolled back, the indexes must be as before
    bad = TxnOp(Node=TxnNodeOp(Verb="delete-cas", Node=_node(node, index=999_999)))
    upsert = TxnOp(
        Service=TxnServiceOp(Verb="set", Node=node, Service=NodeService(ID=sid, Service="tx"))
    )
    return Txn(Ops=[upsert, bad])


def _node(name: str, index: int) -> object:
    from meshd.structs import Node

    return Node(Node=name, Address="10.0.0.1", ModifyIndex=index)


def reference_bytes(s: Store) -> bytes:
    """The whole state encoded in one msgspec call: what the chunked encoder must produce."""
    view = s.snapshot_view()
    data = snapshot.SnapshotData(
        index=view.index,
        nodes=list(view.nodes.values()),
        services=[(n, x) for n, m in view.services.items() for x in m.values()],
        checks=[c for m in view.checks.values() for c in m.values()],
        kv=list(view.kv.values()),
        topics=view.topics,
        **view.small,
    )
    return msgspec.msgpack.encode(data)


def scanned_services(s: Store) -> dict[str, list[str]]:
    names: dict[str, set[str]] = {}
    for m in s.services.values():
        for svc in m.values():
            names.setdefault(svc.Service, set()).update(svc.Tags)
    return {k: sorted(v) for k, v in sorted(names.items())}


@pytest.mark.parametrize("seed", range(6))
def test_a_view_keeps_its_moment_while_writes_continue(seed: int) -> None:
    rng = random.Random(seed)
    s = Store()
    index = 1
    for _ in range(150):
        s.apply(random_command(rng), index)  # type: ignore[arg-type]
        index += 1
    view = s.snapshot_view()
    expected = reference_bytes(s)
    for _ in range(150):  # these change rows the view shares
        s.apply(random_command(rng), index)  # type: ignore[arg-type]
        index += 1
    encoded = snapshot.encode(view)
    assert encoded == expected
    # and it loads back into the state it was taken from
    restored = Store()
    restored.load(encoded)
    assert reference_bytes(restored) == expected


@pytest.mark.parametrize("seed", range(6))
def test_catalog_services_index_matches_a_full_scan(seed: int) -> None:
    rng = random.Random(100 + seed)
    s = Store()
    saved = b""
    for index in range(1, 400):
        s.apply(random_command(rng), index)  # type: ignore[arg-type]
        _, value, _ = run_query(s, q.Services())
        assert value == scanned_services(s)
        if index == 200:
            saved = s.dump()
    # a restore replaces everything: the index is rebuilt from the snapshot
    s.apply(Restore(Data=saved), 400)
    restored = Store()
    restored.load(saved)
    assert run_query(s, q.Services())[1] == scanned_services(s) == scanned_services(restored)
    assert run_query(restored, q.Services())[1] == scanned_services(restored)


def test_a_tag_change_drops_the_old_tag_only_when_no_instance_carries_it() -> None:
    s = Store()

    def reg(index: int, sid: str, tags: list[str]) -> None:
        svc = NodeService(ID=sid, Service="web", Tags=tags)
        s.apply(Register(Node="n1", Address="10.0.0.1", Service=svc), index)

    reg(1, "w1", ["blue", "v1"])
    reg(2, "w2", ["v1"])
    reg(3, "w1", ["green"])
    assert run_query(s, q.Services())[1] == {"web": ["green", "v1"]}
    reg(4, "w2", [])
    assert run_query(s, q.Services())[1] == {"web": ["green"]}
    s.apply(Deregister(Node="n1"), 5)
    assert run_query(s, q.Services())[1] == {}


def scanned_checks(s: Store, state: str) -> list[tuple[str, str, str]]:
    rows = [
        (c.Node, c.CheckID, c.Status)
        for m in s.checks.values()
        for c in m.values()
        if state == "any" or c.Status == state
    ]
    return sorted(rows)


@pytest.mark.parametrize("seed", range(6))
def test_health_state_answers_match_a_full_scan(seed: int) -> None:
    rng = random.Random(200 + seed)
    s = Store()
    saved = b""
    for index in range(1, 400):
        s.apply(random_command(rng), index)  # type: ignore[arg-type]
        for state in ("critical", "warning", "passing", "any"):
            rows = run_query(s, q.ChecksInState(State=state))[1]
            assert [(c.Node, c.CheckID, c.Status) for c in rows] == scanned_checks(s, state)
        if index == 200:
            saved = s.dump()
    s.apply(Restore(Data=saved), 400)
    for state in ("critical", "warning"):
        rows = run_query(s, q.ChecksInState(State=state))[1]
        assert [(c.Node, c.CheckID, c.Status) for c in rows] == scanned_checks(s, state)
