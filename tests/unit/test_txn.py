"""Transactions in the state machine: every verb, all-or-nothing, and the limits the servers
enforce before anything is proposed."""

from __future__ import annotations

import random
import uuid

import pytest

from meshd import queries as q
from meshd.server.authority import Origin, admit
from meshd.server.reads import run_query
from meshd.server.store import CommandError, Store
from meshd.structs import (
    HealthCheck,
    KVOp,
    Node,
    NodeService,
    Register,
    Session,
    SessionOp,
    Txn,
    TxnCheckOp,
    TxnKVOp,
    TxnNodeOp,
    TxnOp,
    TxnReply,
    TxnServiceOp,
)
from meshd.validate_session import txn_is_read_only


def kv(verb: str, key: str, value: bytes | None = None, **kw: object) -> TxnOp:
    return TxnOp(KV=TxnKVOp(Verb=verb, Key=key, Value=value, **kw))  # type: ignore[arg-type]


def node(verb: str, name: str, address: str = "10.0.0.9", index: int = 0) -> TxnOp:
    return TxnOp(
        Node=TxnNodeOp(Verb=verb, Node=Node(Node=name, Address=address, ModifyIndex=index))
    )


def svc(verb: str, node_name: str, sid: str, index: int = 0) -> TxnOp:
    return TxnOp(
        Service=TxnServiceOp(
            Verb=verb,
            Node=node_name,
            Service=NodeService(ID=sid, Service=sid, Port=80, ModifyIndex=index),
        )
    )


def chk(verb: str, node_name: str, cid: str, sid: str = "", index: int = 0) -> TxnOp:
    c = HealthCheck(
        Node=node_name, CheckID=cid, Name=cid, Status="passing", ServiceID=sid, ModifyIndex=index
    )
    return TxnOp(Check=TxnCheckOp(Verb=verb, Check=c))


def base() -> Store:
    s = Store()
    s.apply(
        Register(Node="n1", Address="10.0.0.1", Service=NodeService(ID="web", Service="web")), 1
    )
    s.apply(KVOp(Verb="set", Key="a/1", Value=b"one"), 2)
    s.apply(KVOp(Verb="set", Key="a/2", Value=b"two"), 3)
    return s


def content(s: Store) -> tuple[object, ...]:
    """Everything a reader can see, without the applied index (a refused txn still takes one)."""
    services = {n: dict(m) for n, m in s.services.items() if m}
    checks = {n: dict(m) for n, m in s.checks.items() if m}
    by_name = {k: set(v) for k, v in s.by_name.items()}
    return (dict(s.kv), list(s.kv_keys), dict(s.nodes), services, checks, by_name, dict(s.topics))


def run(store: Store, ops: list[TxnOp], index: int = 10) -> TxnReply:
    cmd = admit(Txn(Ops=ops), Origin.AGENT, store)
    reply = store.apply(cmd, index)
    assert isinstance(reply, TxnReply)
    return reply


def test_kv_writes_commit_together_and_results_blank_values() -> None:
    s = base()
    r = run(s, [kv("set", "b", b"x"), kv("cas", "a/1", b"uno", Index=2), kv("delete", "a/2")])
    assert r.Errors is None and r.Results is not None
    assert [res.KV.Key for res in r.Results if res.KV] == ["b", "a/1"]
    assert all(res.KV and res.KV.Value is None for res in r.Results)
    assert s.kv["b"].Value == b"x" and s.kv["a/1"].Value == b"uno" and "a/2" not in s.kv
    assert s.kv["a/1"].ModifyIndex == 10 and s.topics["kv:b"] == 10


def test_one_failing_op_rolls_back_every_change_and_fires_nothing() -> None:
    s = base()
    before = content(s)
    topics = dict(s.topics)
    r = run(
        s,
        [
            kv("set", "new", b"x"),
            kv("delete-tree", "a/"),
            node("set", "n2"),
            svc("set", "n2", "db"),
            chk("set", "n1", "c1", sid="web"),
            svc("delete", "n1", "web"),
            kv("cas", "a/1", b"y", Index=999),  # stale: the whole txn is refused
        ],
    )
    assert r.Results is None
    assert r.Errors is not None
    assert [(e.OpIndex, e.What) for e in r.Errors] == [
        (6, 'failed to set key "a/1", index is stale')
    ]
    assert content(s) == before
    assert dict(s.by_name) == {"web": {("n1", "web")}}
    assert s.topics == topics
    # a later read sees the old state
    _, value, _ = run_query(s, q.KVGet(Key="a/", Recurse=True))
    assert [e.Value for e in value] == [b"one", b"two"]


def test_every_failing_op_is_reported() -> None:
    s = base()
    r = run(s, [kv("get", "missing"), kv("check-not-exists", "a/1"), kv("set", "ok", b"1")])
    assert r.Errors is not None
    assert [(e.OpIndex, e.What) for e in r.Errors] == [
        (0, 'key "missing" doesn\'t exist'),
        (1, 'key "a/1" exists'),
    ]
    assert "ok" not in s.kv


@pytest.mark.parametrize(
    ("op", "error"),
    [
        (kv("check-index", "a/1", Index=3), "current modify index 2 != 3"),
        (kv("check-index", "nope", Index=3), 'key "nope" doesn\'t exist'),
        (kv("check-session", "a/1", Session="s1"), 'current session "" != "s1"'),
        (kv("delete-cas", "a/1", Index=1), 'failed to delete key "a/1", index is stale'),
        (node("get", "nx"), 'node "nx" doesn\'t exist'),
        (node("cas", "n1", index=5), 'failed to set node "n1", index is stale'),
        (node("delete-cas", "n1", index=5), 'failed to delete node "n1", index is stale'),
        (svc("get", "n1", "db"), 'service "db" on node "n1" doesn\'t exist'),
        (svc("set", "nx", "db"), "Missing node registration"),
        (svc("cas", "n1", "web", index=7), 'failed to set service "web" on node "n1"'),
        (chk("get", "n1", "c9"), 'check "c9" on node "n1" doesn\'t exist'),
        (chk("set", "n1", "c9", sid="nosvc"), "Missing service registration"),
        (chk("delete-cas", "n1", "c9", index=1), 'failed to delete check "c9" on node "n1"'),
    ],
)
def test_each_precondition_refuses_with_consuls_reason(op: TxnOp, error: str) -> None:
    s = base()
    before = content(s)
    r = run(s, [kv("set", "side-effect", b"1"), op])
    assert r.Errors is not None and r.Errors[0].OpIndex == 1
    assert error in r.Errors[0].What
    assert content(s) == before


def test_reads_and_checks_return_entries() -> None:
    s = base()
    r = run(
        s,
        [
            kv("get", "a/1"),
            kv("get-tree", "a/"),
            kv("check-index", "a/1", Index=2),
            kv("check-not-exists", "zzz"),
            kv("get-or-empty", "zzz"),
            node("get", "n1"),
            svc("get", "n1", "web"),
        ],
    )
    assert r.Errors is None and r.Results is not None
    kvs = [res.KV for res in r.Results if res.KV]
    assert [(e.Key, e.Value) for e in kvs] == [
        ("a/1", b"one"),
        ("a/1", b"one"),
        ("a/2", b"two"),
        ("a/1", None),  # check-* blank the value, as Consul does
    ]
    assert r.Results[4].Node is not None and r.Results[4].Node.Address == "10.0.0.1"
    assert r.Results[5].Service is not None and r.Results[5].Service.ID == "web"


def test_catalog_writes_with_cas() -> None:
    s = base()
    r = run(
        s,
        [
            node("cas", "n2", index=0),  # 0: create only if absent
            svc("set", "n2", "db"),
            chk("set", "n2", "db-alive", sid="db"),
            svc("cas", "n1", "web", index=1),
        ],
    )
    assert r.Errors is None
    assert s.nodes["n2"].CreateIndex == 10
    assert s.checks["n2"]["db-alive"].ServiceName == "db"
    _, rows, _ = run_query(s, q.ServiceNodes(Service="db"))
    assert [(row.Node.Node, [c.CheckID for c in row.Checks]) for row in rows] == [
        ("n2", ["db-alive"])
    ]
    r = run(s, [svc("delete-cas", "n2", "db", index=10), node("delete", "n1")], index=11)
    assert r.Errors is None and r.Results == []
    assert "n1" not in s.nodes and "db" not in s.services["n2"]
    assert "web" not in s.by_name and "db" not in s.by_name


def test_a_rolled_back_node_delete_restores_its_services_and_indexes() -> None:
    s = base()
    r = run(s, [node("delete", "n1"), kv("get", "missing")])
    assert r.Errors is not None
    assert s.services["n1"]["web"].Service == "web"
    assert s.by_name["web"] == {("n1", "web")}
    _, rows, _ = run_query(s, q.ServiceNodes(Service="web"))
    assert len(rows) == 1


@pytest.mark.parametrize(
    ("ops", "error"),
    [
        ([kv("set", f"k{i}", b"") for i in range(65)], "too many operations (65 > 64)"),
        ([], "at least one operation"),
        ([TxnOp()], "exactly one of KV, Node, Service, Check"),
        ([kv("frobnicate", "k")], "unknown KV verb 'frobnicate'"),
        ([kv("set", "")], "Missing key name"),
        ([kv("lock", "k", b"")], "needs a Session"),
        ([kv("set", "k", b"x" * (512 * 1024 + 1))], "Value exceeds"),
        ([node("set", "bad node\x01")], "control characters"),
        ([svc("upsert", "n1", "web")], "unknown Service verb"),
    ],
)
def test_malformed_transactions_are_refused_before_raft(ops: list[TxnOp], error: str) -> None:
    s = base()
    with pytest.raises(CommandError, match=error.replace("(", r"\(").replace(")", r"\)")):
        admit(Txn(Ops=ops), Origin.AGENT, s)


def test_read_only_detection_and_read_path() -> None:
    assert txn_is_read_only(Txn(Ops=[kv("get", "a"), node("get", "n1")]))
    assert not txn_is_read_only(Txn(Ops=[kv("get", "a"), kv("delete", "a")]))
    s = base()
    index, reply, _ = run_query(s, q.TxnRead(Ops=[kv("get", "a/2"), kv("get", "gone")]))
    assert index == 3
    assert reply.Errors is not None and reply.Errors[0].OpIndex == 1


# ---- sessions: lock, unlock, check-session ----------------------------------------------------


def with_session(s: Store, node_name: str = "n1", behavior: str = "release") -> str:
    sid = str(uuid.uuid4())
    sess = Session(ID=sid, Node=node_name, NodeChecks=[], Behavior=behavior)
    reply = s.apply(SessionOp(Op="create", Session=sess), 5)
    assert reply == sid, reply
    return sid


def test_lock_unlock_and_check_session() -> None:
    s = base()
    sid = with_session(s)
    r = run(
        s, [kv("lock", "leader", b"me", Session=sid), kv("check-session", "leader", Session=sid)]
    )
    assert r.Errors is None and r.Results is not None
    lock = r.Results[0].KV
    assert lock is not None and lock.Session == sid and lock.LockIndex == 1 and lock.Value is None
    other = with_session(s)
    r = run(s, [kv("lock", "leader", b"you", Session=other)], index=11)
    assert r.Errors is not None
    assert r.Errors[0].What == 'failed to lock key "leader", lock is already held'
    r = run(s, [kv("unlock", "leader", b"bye", Session=other)], index=12)
    assert r.Errors is not None and "lock isn't held" in r.Errors[0].What
    r = run(s, [kv("check-session", "leader", Session=other)], index=13)
    assert r.Errors is not None and f'current session "{sid}" != "{other}"' in r.Errors[0].What
    r = run(s, [kv("unlock", "leader", b"bye", Session=sid)], index=14)
    assert r.Errors is None and s.kv["leader"].Session == "" and s.kv["leader"].Value == b"bye"


def test_lock_with_an_unknown_session_fails_the_txn() -> None:
    s = base()
    before = content(s)
    r = run(s, [kv("set", "x", b"1"), kv("lock", "k", b"v", Session=str(uuid.uuid4()))])
    assert r.Errors is not None and "invalid session" in r.Errors[0].What
    assert content(s) == before


def test_rolled_back_unlock_keeps_the_session_holding_the_key() -> None:
    """A refused txn that released a lock must leave the lock, and the session's claim on it,
    so that invalidating the session later still releases the key."""
    s = base()
    sid = with_session(s)
    assert run(s, [kv("lock", "leader", b"me", Session=sid)]).Errors is None
    r = run(s, [kv("unlock", "leader", b"", Session=sid), kv("get", "missing")], index=11)
    assert r.Errors is not None
    assert s.kv["leader"].Session == sid
    s.apply(SessionOp(Op="destroy", Session=Session(ID=sid)), 12)
    assert s.kv["leader"].Session == ""


def test_rolled_back_node_delete_keeps_its_sessions_and_their_locks() -> None:
    s = base()
    sid = with_session(s, behavior="delete")
    assert run(s, [kv("lock", "leader", b"me", Session=sid)]).Errors is None
    before = content(s)
    r = run(s, [node("delete", "n1"), kv("get", "missing")], index=11)
    assert r.Errors is not None
    assert content(s) == before
    assert sid in s.sessions.sessions and s.kv["leader"].Session == sid
    # committed, the same delete invalidates the session, which deletes its key
    assert run(s, [node("delete", "n1")], index=12).Errors is None
    assert sid not in s.sessions.sessions and "leader" not in s.kv


def _random_op(rng: random.Random) -> TxnOp:
    key = f"k/{rng.randrange(6)}"
    n = f"n{rng.randrange(3)}"
    sid = f"s{rng.randrange(3)}"
    return rng.choice(
        [
            kv("set", key, b"v%d" % rng.randrange(9)),
            kv("delete", key),
            kv("delete-tree", "k/"),
            kv("cas", key, b"c", Index=0),
            node("set", n, address=f"10.1.0.{rng.randrange(9)}"),
            node("delete", n),
            svc("set", n, sid),
            svc("delete", n, sid),
            chk("set", n, f"c-{sid}", sid=sid),
            chk("set", n, "node-check"),
            chk("delete", n, f"c-{sid}"),
        ]
    )


def test_any_refused_transaction_leaves_everything_as_it_was() -> None:
    """Random mixes of KV and catalog ops, each followed by a failing op: the state after
    equals the state before, whatever the ops touched (fixed seed: reproducible)."""
    rng = random.Random(9)
    s = base()
    index = 10
    for _ in range(300):
        ops = [_random_op(rng) for _ in range(rng.randrange(1, 8))]
        if rng.random() < 0.5:  # commit some, so the state the next ones see varies
            index += 1
            s.apply(Txn(Ops=ops), index)
            continue
        before = content(s)
        index += 1
        reply = s.apply(Txn(Ops=[*ops, kv("get", "never")]), index)
        assert isinstance(reply, TxnReply) and reply.Errors is not None
        assert content(s) == before
