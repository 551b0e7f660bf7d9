"""The session and KV lock rules of the state machine (server/sessions.py), on a real Store."""

from __future__ import annotations

import uuid

import pytest

from meshd import queries as q
from meshd.server import sessions
from meshd.server.authority import CommandForbiddenError, Origin, admit
from meshd.server.reads import run_query
from meshd.server.store import CommandError, StateConflictError, Store
from meshd.structs import (
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    SERF_CHECK_ID,
    Deregister,
    HealthCheck,
    KVOp,
    NodeService,
    NodeStatus,
    Register,
    ServiceCheck,
    Session,
    SessionInvalidate,
    SessionOp,
)


class Log:
    """A store fed with increasing Raft indexes; apply errors are raised as the API sees them."""

    def __init__(self) -> None:
        self.store = Store()
        self.index = 0

    def apply(self, cmd: object) -> object:
        self.index += 1
        res = self.store.apply(cmd, self.index)  # type: ignore[arg-type]
        if isinstance(res, CommandError):
            raise res
        return res

    def node(self, name: str = "n1", serf: str = HEALTH_PASSING) -> None:
        check = HealthCheck(Node=name, CheckID=SERF_CHECK_ID, Name="serf", Status=serf)
        self.apply(Register(Node=name, Address="10.0.0.1", Check=check))

    def session(self, node: str = "n1", **kw: object) -> str:
        sid = str(uuid.uuid4())
        fields = {"NodeChecks": [SERF_CHECK_ID], **kw}
        self.apply(SessionOp(Op="create", Session=Session(ID=sid, Node=node, **fields)))  # type: ignore[arg-type]
        return sid

    def lock(self, key: str, sid: str, value: bytes = b"v", verb: str = "lock") -> object:
        return self.apply(KVOp(Verb=verb, Key=key, Value=value, Session=sid))


@pytest.fixture
def log() -> Log:
    lg = Log()
    lg.node()
    return lg


def test_acquire_release_and_lock_index(log: Log) -> None:
    a, b = log.session(), log.session()
    assert log.lock("k", a) is True
    e = log.store.kv["k"]
    assert (e.Session, e.LockIndex, e.Value) == (a, 1, b"v")
    assert log.lock("k", b) is False  # held by another session
    assert log.lock("k", a, b"v2") is True  # re-acquire by the holder: same LockIndex
    assert log.store.kv["k"].LockIndex == 1 and log.store.kv["k"].Value == b"v2"
    assert log.lock("k", b, verb="unlock") is False  # not the holder
    assert log.lock("k", a, b"v3", verb="unlock") is True
    e = log.store.kv["k"]
    assert (e.Session, e.LockIndex, e.Value) == ("", 1, b"v3")
    assert log.lock("k", b) is True
    assert log.store.kv["k"].LockIndex == 2


def test_plain_write_keeps_the_lock(log: Log) -> None:
    a = log.session()
    log.lock("k", a)
    log.apply(KVOp(Verb="set", Key="k", Value=b"other"))
    assert log.store.kv["k"].Session == a and log.store.kv["k"].LockIndex == 1


def test_acquire_with_unknown_session_is_a_state_error(log: Log) -> None:
    with pytest.raises(StateConflictError, match="invalid session"):
        log.lock("k", str(uuid.uuid4()))
    assert "k" not in log.store.kv


def test_destroy_releases_keys_and_starts_lock_delay(log: Log) -> None:
    a = log.session(LockDelay=5 * 10**9)
    log.lock("k", a)
    log.apply(SessionOp(Op="destroy", Session=Session(ID=a)))
    assert log.store.kv["k"].Session == ""
    assert a not in log.store.sessions.sessions
    assert sessions.lock_delayed(log.store, "k")
    deadline = log.store.sessions.lock_delays["k"]
    assert not sessions.lock_delayed(log.store, "k", now=deadline)
    with pytest.raises(StateConflictError):
        log.lock("k", a)  # an invalidated session cannot acquire


def test_zero_lock_delay_sets_no_delay(log: Log) -> None:
    a = log.session(LockDelay=0)
    log.lock("k", a)
    log.apply(SessionInvalidate(ID=a))
    assert not sessions.lock_delayed(log.store, "k")


def test_delete_behavior_deletes_held_keys(log: Log) -> None:
    a = log.session(Behavior="delete")
    log.lock("k1", a)
    log.lock("k2", a)
    log.apply(KVOp(Verb="set", Key="free", Value=b"x"))
    log.apply(SessionInvalidate(ID=a))
    assert set(log.store.kv) == {"free"}


def test_node_failure_invalidates_its_sessions(log: Log) -> None:
    a = log.session()
    log.lock("k", a)
    log.apply(NodeStatus(Node="n1", Address="10.0.0.1", Status=HEALTH_CRITICAL))
    assert a not in log.store.sessions.sessions
    assert log.store.kv["k"].Session == ""


def test_node_deregistration_invalidates_sessions_without_checks(log: Log) -> None:
    a = log.session(NodeChecks=[])
    log.apply(Deregister(Node="n1"))
    assert a not in log.store.sessions.sessions


def test_service_check_critical_or_removed_invalidates(log: Log) -> None:
    svc = NodeService(ID="db", Service="db")
    chk = HealthCheck(Node="n1", CheckID="db-chk", Name="c", Status=HEALTH_PASSING, ServiceID="db")
    log.apply(Register(Node="n1", Address="10.0.0.1", Service=svc, Check=chk))
    a = log.session(ServiceChecks=[ServiceCheck(ID="db-chk")])
    b = log.session(ServiceChecks=[ServiceCheck(ID="db-chk")])
    unrelated = log.session()
    log.apply(Deregister(Node="n1", ServiceID="db"))  # drops the service's check
    assert a not in log.store.sessions.sessions and b not in log.store.sessions.sessions
    assert unrelated in log.store.sessions.sessions
    log.apply(Register(Node="n1", Address="10.0.0.1", Service=svc, Check=chk))
    c = log.session(ServiceChecks=[ServiceCheck(ID="db-chk")])
    critical = HealthCheck(
        Node="n1", CheckID="db-chk", Name="c", Status=HEALTH_CRITICAL, ServiceID="db"
    )
    log.apply(Register(Node="n1", Address="", Check=critical))
    assert c not in log.store.sessions.sessions


def test_warning_does_not_invalidate(log: Log) -> None:
    a = log.session()
    log.apply(NodeStatus(Node="n1", Address="10.0.0.1", Status="warning"))
    assert a in log.store.sessions.sessions


def test_create_refuses_missing_node_and_bad_checks(log: Log) -> None:
    with pytest.raises(StateConflictError, match="Missing node registration"):
        log.session(node="ghost")
    with pytest.raises(StateConflictError, match="Missing check 'nope' registration"):
        log.session(NodeChecks=["nope"])
    log.node("n2", serf=HEALTH_CRITICAL)
    with pytest.raises(StateConflictError, match="Check 'serfHealth' is in critical state"):
        log.session(node="n2")
    assert log.store.sessions.sessions == {}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"TTL": "5s"}, "Invalid Session TTL '5000000000', must be between"),
        ({"TTL": "86401s"}, "must be between"),
        ({"TTL": "soon"}, "Session TTL 'soon' invalid"),
        ({"Behavior": "keep"}, "Invalid Behavior setting 'keep'"),
        ({"LockDelay": 61 * 10**9}, "LockDelay must be between"),
    ],
)
def test_admit_refuses_bad_sessions(log: Log, fields: dict[str, object], reason: str) -> None:
    s = Session(ID=str(uuid.uuid4()), Node="n1", **fields)  # type: ignore[arg-type]
    with pytest.raises(CommandError, match=reason):
        admit(SessionOp(Op="create", Session=s), Origin.AGENT, log.store)


def test_admit_accepts_ttl_bounds(log: Log) -> None:
    for ttl in ("10s", "24h", ""):
        s = Session(ID=str(uuid.uuid4()), Node="n1", TTL=ttl)
        admit(SessionOp(Op="create", Session=s), Origin.AGENT, log.store)


def test_invalidation_is_issued_only_by_servers(log: Log) -> None:
    a = log.session()
    with pytest.raises(CommandForbiddenError):
        admit(SessionInvalidate(ID=a), Origin.AGENT, log.store)
    admit(SessionInvalidate(ID=a), Origin.SERVER, log.store)


def test_lock_without_session_is_refused_before_the_log(log: Log) -> None:
    with pytest.raises(CommandError, match="missing session"):
        admit(KVOp(Verb="lock", Key="k"), Origin.AGENT, log.store)


def test_check_session(log: Log) -> None:
    a, b = log.session(), log.session()
    log.lock("k", a)
    sessions.kv_check_session(log.store, "k", a)
    with pytest.raises(sessions.SessionStateError, match="failed session check"):
        sessions.kv_check_session(log.store, "k", b)


def test_reads_and_snapshot_round_trip(log: Log) -> None:
    a = log.session(Name="x")
    log.node("n2")
    b = log.session(node="n2")
    log.lock("k", a)
    _, rows, _ = run_query(log.store, q.Sessions(Node="n2"))
    assert [s.ID for s in rows] == [b]
    _, rows, _ = run_query(log.store, q.Sessions(ID=a))
    assert rows[0].Name == "x" and rows[0].CreateIndex > 0
    copy = Store()
    copy.load(log.store.dump())
    _, rows, _ = run_query(copy, q.Sessions())
    assert {s.ID for s in rows} == {a, b}
    copy.apply(SessionInvalidate(ID=a), log.index + 1)  # held keys were rebuilt from the KV
    assert copy.kv["k"].Session == ""


def test_ttl_timers(log: Log) -> None:
    a = log.session(TTL="10s")
    log.session()  # no TTL: never expires
    timers = sessions.SessionTimers()
    assert timers.tick(log.store, now=100.0) == []  # first sight: a full 2x TTL from now
    assert timers.tick(log.store, now=119.0) == []
    assert timers.renew(log.store, a, now=119.0) is not None
    assert timers.tick(log.store, now=138.0) == []
    assert timers.tick(log.store, now=139.5) == [SessionInvalidate(ID=a, Reason="TTL expired")]
    assert timers.renew(log.store, str(uuid.uuid4())) is None
    log.apply(SessionInvalidate(ID=a))
    assert timers.tick(log.store, now=200.0) == [] and timers.deadlines == {}
