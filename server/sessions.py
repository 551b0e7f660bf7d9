"""Sessions and KV locks: Consul's rules, applied inside the state machine.

Everything here that changes state runs in `Store.apply` (under the store lock) and is
deterministic: the same log gives the same sessions and locks on every server. The two things
that depend on time are kept out of the log's meaning: lock-delay (an in-memory deadline per key,
checked by the server before it proposes an acquire, as Consul's KVS endpoint does) and TTLs
(timers in the leader's memory, `SessionTimers`, which turn a lapse into a `SessionInvalidate`).

The KV lock rules (`kv_acquire`, `kv_release`, `kv_check_session`) are plain functions of the
store so that the transaction endpoint applies exactly the same rules as `?acquire=`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from meshd import queries as q
from meshd.structs import (
    HEALTH_CRITICAL,
    KVEntry,
    KVOp,
    Session,
    SessionInvalidate,
    SessionOp,
)
from meshd.validate_session import session_ttl

if TYPE_CHECKING:
    from meshd.server.store import Store

replace = msgspec.structs.replace
TOPIC = "tbl:sessions"


class SessionStateError(Exception):
    """A session or lock request the current state refuses (Consul answers these with 500).

    The store turns it into its `StateConflictError`; kept free of the store's import so this
    module does not import the store at run time.
    """


class SessionTable:
    """The replicated sessions, with the indexes invalidation needs, and the local lock delays."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_node: dict[str, set[str]] = defaultdict(set)
        self.by_check: dict[tuple[str, str], set[str]] = defaultdict(set)
        # keys each session may hold; checked against the key's Session before use, so a key
        # deleted or overwritten meanwhile needs no bookkeeping here
        self.held: dict[str, set[str]] = defaultdict(set)
        # key -> monotonic deadline: not replicated, each server's own clock (as Consul's)
        self.lock_delays: dict[str, float] = {}

    def add(self, s: Session) -> None:
        self.sessions[s.ID] = s
        self.by_node[s.Node].add(s.ID)
        for cid in check_ids(s):
            self.by_check[(s.Node, cid)].add(s.ID)

    def remove(self, sid: str) -> Session | None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return None
        _discard(self.by_node, s.Node, sid)
        for cid in check_ids(s):
            _discard(self.by_check, (s.Node, cid), sid)
        return s

    def dump(self) -> list[Session]:
        return list(self.sessions.values())

    def load(self, sessions: list[Session], kv: dict[str, KVEntry]) -> None:
        self.__init__()  # type: ignore[misc]
        for s in sessions:
            self.add(s)
        for key, e in kv.items():
            if e.Session:
                self.held[e.Session].add(key)


def _discard(index: dict[Any, set[str]], key: Any, sid: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(sid)
        if not members:
            del index[key]


def check_ids(s: Session) -> list[str]:
    return [*s.NodeChecks, *(c.ID for c in s.ServiceChecks)]


# ---- sessions ---------------------------------------------------------------------------------


def create(store: Store, s: Session, index: int, changed: set[str]) -> str:
    """Consul's rules: the node is registered, every check exists and is not critical."""
    table = store.sessions
    if s.ID in table.sessions:
        raise SessionStateError(f"Session ID {s.ID} already exists")
    if s.Node not in store.nodes:
        raise SessionStateError("Missing node registration")
    checks = store.checks.get(s.Node, {})
    for cid in check_ids(s):
        c = checks.get(cid)
        if c is None:
            raise SessionStateError(f"Missing check '{cid}' registration")
        if c.Status == HEALTH_CRITICAL:
            raise SessionStateError(f"Check '{cid}' is in {c.Status} state")
    table.add(replace(s, CreateIndex=index, ModifyIndex=index))
    changed.add(TOPIC)
    return s.ID


def invalidate(store: Store, sid: str, index: int, changed: set[str]) -> bool:
    """Drop a session and release (or delete) every key it holds, starting their lock delay."""
    table = store.sessions
    s = table.remove(sid)
    if s is None:
        return False
    changed.add(TOPIC)
    now = time.monotonic()
    for key in sorted(table.held.pop(sid, ())):
        e = store.kv.get(key)
        if e is None or e.Session != sid:
            continue
        if s.Behavior == "delete":
            del store.kv[key]
        else:
            store.kv[key] = replace(e, Session="", ModifyIndex=index)
        changed.update((f"kv:{key}", "tbl:kv"))
        if s.LockDelay > 0:
            table.lock_delays[key] = now + s.LockDelay / 1e9
    return True


def _invalidate_all(store: Store, sids: set[str] | None, index: int, changed: set[str]) -> None:
    for sid in sorted(sids or ()):
        invalidate(store, sid, index, changed)


def check_changed(
    store: Store, node: str, check_id: str, status: str, index: int, changed: set[str]
) -> None:
    """A check went critical: the sessions that depend on it end in the same apply."""
    if status == HEALTH_CRITICAL:
        _invalidate_all(
            store, set(store.sessions.by_check.get((node, check_id), ())), index, changed
        )


def check_removed(store: Store, node: str, check_id: str, index: int, changed: set[str]) -> None:
    _invalidate_all(store, set(store.sessions.by_check.get((node, check_id), ())), index, changed)


def node_removed(store: Store, node: str, index: int, changed: set[str]) -> None:
    _invalidate_all(store, set(store.sessions.by_node.get(node, ())), index, changed)


def apply_session(store: Store, op: SessionOp, index: int, changed: set[str]) -> Any:
    if op.Op == "create":
        return create(store, op.Session, index, changed)
    if op.Op == "destroy":
        invalidate(store, op.Session.ID, index, changed)
        return True
    raise SessionStateError(f"unknown session op {op.Op!r}")


def apply_invalidate(store: Store, op: SessionInvalidate, index: int, changed: set[str]) -> bool:
    return invalidate(store, op.ID, index, changed)


def handlers(store: Store) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
    """The commands this part of the state applies, for the store's dispatch table."""
    return {
        SessionOp: lambda op, index, changed: apply_session(store, op, index, changed),
        SessionInvalidate: lambda op, index, changed: apply_invalidate(store, op, index, changed),
    }


# ---- KV locks ---------------------------------------------------------------------------------


def _live_session(store: Store, sid: str) -> Session:
    if not sid:
        raise SessionStateError("missing session")
    s = store.sessions.sessions.get(sid)
    if s is None:
        raise SessionStateError(f'invalid session "{sid}"')
    return s


def _put(store: Store, entry: KVEntry, index: int, changed: set[str]) -> None:
    old = store.kv.get(entry.Key)
    store.kv[entry.Key] = replace(
        entry, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index
    )
    store.kv_index_key(entry.Key)
    changed.update((f"kv:{entry.Key}", "tbl:kv"))


def kv_acquire(
    store: Store,
    key: str,
    value: bytes | None,
    flags: int,
    session: str,
    index: int,
    changed: set[str],
) -> bool:
    """`?acquire=`: take the key for `session` unless another session holds it.

    Re-acquiring a held lock updates the value and keeps LockIndex; a new holder increments it.
    Lock-delay is not checked here (it is time, not state): see `lock_delayed`.
    """
    _live_session(store, session)
    old = store.kv.get(key)
    if old is not None and old.Session and old.Session != session:
        return False
    if old is not None and old.Session == session:
        lock_index = old.LockIndex
    else:
        lock_index = (old.LockIndex if old else 0) + 1
    entry = KVEntry(Key=key, Value=value, Flags=flags, LockIndex=lock_index, Session=session)
    _put(store, entry, index, changed)
    store.sessions.held[session].add(key)
    return True


def kv_release(
    store: Store,
    key: str,
    value: bytes | None,
    flags: int,
    session: str,
    index: int,
    changed: set[str],
) -> bool:
    """`?release=`: give the key up (writing the value) if `session` holds it, else false."""
    if not session:
        raise SessionStateError("missing session")
    old = store.kv.get(key)
    if old is None or old.Session != session:
        return False
    entry = KVEntry(Key=key, Value=value, Flags=flags, LockIndex=old.LockIndex)
    _put(store, entry, index, changed)
    held = store.sessions.held.get(session)
    if held is not None:
        held.discard(key)
    return True


def kv_check_session(store: Store, key: str, session: str) -> None:
    """A transaction's `check-session`: the key exists and `session` holds it."""
    e = store.kv.get(key)
    if e is None:
        raise SessionStateError(f'key "{key}" does not exist')
    if e.Session != session:
        raise SessionStateError(
            f'failed session check for key "{key}", current session "{e.Session}" != "{session}"'
        )


def apply_kv_lock(store: Store, op: KVOp, index: int, changed: set[str]) -> bool:
    """The store's entry point for the `lock` / `unlock` KV verbs."""
    fn = kv_acquire if op.Verb == "lock" else kv_release
    return fn(store, op.Key, op.Value, op.Flags, op.Session, index, changed)


def lock_delayed(store: Store, key: str, now: float | None = None) -> bool:
    """Whether an acquire of `key` must be refused now (false, not an error), as Consul does
    before proposing: invalidated holders get `LockDelay` to notice before a new one starts."""
    deadline = store.sessions.lock_delays.get(key)
    if deadline is None:
        return False
    if (time.monotonic() if now is None else now) >= deadline:
        store.sessions.lock_delays.pop(key, None)
        return False
    return True


# ---- reads ------------------------------------------------------------------------------------


def read_sessions(store: Store, query: q.Sessions) -> tuple[int, list[Session], list[str]]:
    """`/v1/session/info|node|list`: every session, one by ID, or a node's."""
    table = store.sessions
    if query.ID:
        s = table.sessions.get(query.ID)
        rows = [s] if s else []
    elif query.Node:
        rows = [table.sessions[sid] for sid in table.by_node.get(query.Node, ())]
    else:
        rows = list(table.sessions.values())
    rows.sort(key=lambda s: (s.CreateIndex, s.ID))
    return max(store.topics.get(TOPIC, 0), 1), rows, [TOPIC]


# ---- TTLs, on the leader ----------------------------------------------------------------------


class SessionTimers:
    """TTL deadlines held by the leader in memory, as liveness is: renewals write nothing.

    A session this leader has no timer for (created since, or inherited from the previous
    leader) gets a full timer from the moment it is first seen, so a leader change only ever
    delays an expiry, never brings one forward.
    """

    RETRY = 1.0  # seconds before re-issuing an invalidation that did not commit
    # Consul's SessionTTLMultiplier: a session lapses 2x TTL after its last renew. Clients count
    # on it (Patroni asks for half its own TTL for that reason), so it is kept.
    MULTIPLIER = 2.0

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}

    def reset(self) -> None:
        self.deadlines.clear()

    def renew(self, store: Store, sid: str, now: float | None = None) -> Session | None:
        now = time.monotonic() if now is None else now
        with store.lock:
            s = store.sessions.sessions.get(sid)
        if s is None:
            return None
        ttl = session_ttl(s.TTL)
        if ttl:
            self.deadlines[sid] = now + ttl * self.MULTIPLIER
        return s

    def tick(self, store: Store, now: float | None = None) -> list[SessionInvalidate]:
        now = time.monotonic() if now is None else now
        with store.lock:
            ttls = {sid: s.TTL for sid, s in store.sessions.sessions.items() if s.TTL}
        ops: list[SessionInvalidate] = []
        for sid in list(self.deadlines):
            if sid not in ttls:
                del self.deadlines[sid]
        for sid, ttl in ttls.items():
            deadline = self.deadlines.get(sid)
            if deadline is None:
                seconds = session_ttl(ttl)
                if seconds:
                    self.deadlines[sid] = now + seconds * self.MULTIPLIER
                continue
            if now >= deadline:
                ops.append(SessionInvalidate(ID=sid, Reason="TTL expired"))
                self.deadlines[sid] = now + self.RETRY
        return ops
