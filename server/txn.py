"""Transactions (`/v1/txn`): many KV and catalog operations, all applied or none.

Apply runs every op in order against the live store (later ops see earlier ones, as in Consul's
memdb transaction) and collects each failing op's reason. If any op failed, a journal of what the
ops touched puts those rows back, and none of the watch topics fire: the entry still takes a Raft
index, but the state after it is the state before it, on every server alike. The journal saves a
node's rows (node, services, checks) or a key's entry the first time an op touches them, so the
cost is in proportion to the transaction, not to the store.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import msgspec

from meshd.server import sessions
from meshd.structs import (
    Deregister,
    HealthCheck,
    KVEntry,
    KVOp,
    Node,
    NodeService,
    Register,
    Txn,
    TxnCheckOp,
    TxnError,
    TxnKVOp,
    TxnNodeOp,
    TxnOp,
    TxnReply,
    TxnResult,
    TxnServiceOp,
)

if TYPE_CHECKING:
    from meshd.server.store import Store

replace = msgspec.structs.replace


class TxnOpError(Exception):
    """One op failed; its text is the `What` of the op's entry in `Errors`."""


def _q(s: str) -> str:
    """Go's %q, which Consul's messages use."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Journal:
    """The rows a transaction touched, as they were before it: what a rollback restores."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.nodes: dict[str, tuple[Node | None, dict[str, NodeService], dict[str, HealthCheck]]]
        self.nodes = {}
        self.kv: dict[str, KVEntry | None] = {}
        self.new_keys: set[str] = set()
        self.sessions: dict[str, Any] | None = None  # the session table, once an op may touch it

    def session_table(self) -> None:
        """Locks and invalidations change the session table (and the keys a session holds):
        copied whole, once, since it holds sessions, not data, and is small."""
        if self.sessions is not None:
            return
        t = self.store.sessions
        self.sessions = {
            name: (
                type(value)(value.default_factory, {k: set(v) for k, v in value.items()})
                if isinstance(value, defaultdict)
                else dict(value)
            )
            for name, value in vars(t).items()
        }

    def node(self, name: str) -> None:
        """A node's rows, and what invalidating its sessions would release."""
        if name not in self.nodes:
            table = self.store.sessions
            for sid in table.by_node.get(name, ()):
                self.session_table()
                for key in table.held.get(sid, ()):
                    self.key(key)
            s = self.store
            self.nodes[name] = (
                s.nodes.get(name),
                dict(s.services.get(name, {})),
                dict(s.checks.get(name, {})),
            )

    def key(self, key: str) -> None:
        if key in self.kv:
            return
        self.kv[key] = self.store.kv.get(key)
        keys = self.store.kv_keys
        i = bisect.bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            self.new_keys.add(key)

    def prefix(self, prefix: str) -> None:
        for key in self.store.kv_range(prefix):
            self.key(key)

    def op(self, op: TxnOp) -> None:
        if op.KV is not None:
            if op.KV.Verb in ("lock", "unlock"):
                self.session_table()
            if op.KV.Verb == "delete-tree":
                self.prefix(op.KV.Key)
            else:
                self.key(op.KV.Key)
        elif op.Node is not None:
            self.node(op.Node.Node.Node)
        elif op.Service is not None:
            self.node(op.Service.Node)
        elif op.Check is not None:
            self.node(op.Check.Check.Node)

    def rollback(self) -> None:
        s = self.store
        if self.sessions is not None:
            vars(s.sessions).update(self.sessions)
        for key, entry in self.kv.items():
            if entry is None:
                s.kv.pop(key, None)
            else:
                s.kv[key] = entry
        for key in self.new_keys:
            i = bisect.bisect_left(s.kv_keys, key)
            if i < len(s.kv_keys) and s.kv_keys[i] == key and key not in s.kv:
                del s.kv_keys[i]
        for name, (node, services, checks) in self.nodes.items():
            for svc in s.services.get(name, {}).values():
                s._unindex_service(name, svc)
            if node is None:
                s.nodes.pop(name, None)
            else:
                s.nodes[name] = node
            s.services.pop(name, None)
            s.checks.pop(name, None)
            if services:
                s.services[name] = services
            if checks:
                s.checks[name] = checks
            for svc in services.values():
                s._index_service(name, svc)


# ---- KV -------------------------------------------------------------------------------------


def _blank(e: KVEntry) -> TxnResult:
    return TxnResult(KV=replace(e, Value=None))


def _kv(store: Store, op: TxnKVOp, index: int, changed: set[str]) -> list[TxnResult]:
    verb, key = op.Verb, op.Key
    cur = store.kv.get(key)
    if verb in ("get", "get-or-empty"):
        if cur is None and verb == "get":
            raise TxnOpError(f"key {_q(key)} doesn't exist")
        return [TxnResult(KV=cur)] if cur is not None else []
    if verb == "get-tree":
        return [TxnResult(KV=store.kv[k]) for k in store.kv_range(key) if k in store.kv]
    if verb.startswith("check-"):
        return _kv_check(cur, op)
    ok = store._kv(
        KVOp(
            Verb=verb, Key=key, Value=op.Value, Flags=op.Flags, Index=op.Index, Session=op.Session
        ),
        index,
        changed,
    )
    if not ok:
        raise TxnOpError(_KV_FAILED[verb].format(key=_q(key)))
    if verb in ("set", "cas", "lock", "unlock"):
        return [_blank(store.kv[key])]
    return []


# Consul's reasons when a conditional KV write does not happen
_KV_FAILED = {
    "cas": "failed to set key {key}, index is stale",
    "delete-cas": "failed to delete key {key}, index is stale",
    "lock": "failed to lock key {key}, lock is already held",
    "unlock": "failed to unlock key {key}, lock isn't held, or is held by another session",
}


def _kv_check(cur: KVEntry | None, op: TxnKVOp) -> list[TxnResult]:
    key = op.Key
    if op.Verb == "check-not-exists":
        if cur is not None:
            raise TxnOpError(f"key {_q(key)} exists")
        return []
    if cur is None:
        raise TxnOpError(f"key {_q(key)} doesn't exist")
    if op.Verb == "check-index" and cur.ModifyIndex != op.Index:
        raise TxnOpError(f"current modify index {cur.ModifyIndex} != {op.Index}")
    if op.Verb == "check-session" and cur.Session != op.Session:
        raise TxnOpError(
            f"failed session check for key {_q(key)}, current session {_q(cur.Session)} != "
            f"{_q(op.Session)}"
        )
    return [_blank(cur)]


# ---- catalog --------------------------------------------------------------------------------


def _cas_index(current: int, given: int, what: str, verb: str) -> None:
    """Consul's CAS: the given ModifyIndex must be the current one (0: must not exist)."""
    if current != given:
        action = "set" if verb == "cas" else "delete"
        raise TxnOpError(f"failed to {action} {what}, index is stale")


def _node(store: Store, op: TxnNodeOp, index: int, changed: set[str]) -> list[TxnResult]:
    n = op.Node
    cur = store.nodes.get(n.Node)
    what = f"node {_q(n.Node)}"
    if op.Verb == "get":
        if cur is None:
            raise TxnOpError(f"{what} doesn't exist")
        return [TxnResult(Node=cur)]
    if op.Verb in ("cas", "delete-cas"):
        if op.Verb == "delete-cas" and cur is None:
            raise TxnOpError(f"failed to delete {what}, index is stale")
        _cas_index(cur.ModifyIndex if cur else 0, n.ModifyIndex, what, op.Verb)
    if op.Verb in ("delete", "delete-cas"):
        store._deregister(Deregister(Node=n.Node), index, changed)
        return []
    reg = Register(
        Node=n.Node,
        Address=n.Address,
        ID=n.ID,
        Datacenter=n.Datacenter,
        TaggedAddresses=n.TaggedAddresses,
        NodeMeta=n.Meta,
    )
    store._register(reg, index, changed)
    return [TxnResult(Node=store.nodes[n.Node])]


def _need_node(store: Store, node: str) -> None:
    if node not in store.nodes:
        raise TxnOpError("Missing node registration")


def _service(store: Store, op: TxnServiceOp, index: int, changed: set[str]) -> list[TxnResult]:
    sid = op.Service.ID
    cur = store.services.get(op.Node, {}).get(sid)
    what = f"service {_q(sid)} on node {_q(op.Node)}"
    if op.Verb == "get":
        if cur is None:
            raise TxnOpError(f"{what} doesn't exist")
        return [TxnResult(Service=cur)]
    if op.Verb in ("cas", "delete-cas"):
        if op.Verb == "delete-cas" and cur is None:
            raise TxnOpError(f"failed to delete {what}, index is stale")
        _cas_index(cur.ModifyIndex if cur else 0, op.Service.ModifyIndex, what, op.Verb)
    if op.Verb in ("delete", "delete-cas"):
        store._deregister(Deregister(Node=op.Node, ServiceID=sid), index, changed)
        return []
    _need_node(store, op.Node)
    svc = replace(op.Service, CreateIndex=0, ModifyIndex=0)
    store._put_service(op.Node, svc, index, changed)
    return [TxnResult(Service=store.services[op.Node][sid])]


def _check(store: Store, op: TxnCheckOp, index: int, changed: set[str]) -> list[TxnResult]:
    c = op.Check
    cur = store.checks.get(c.Node, {}).get(c.CheckID)
    what = f"check {_q(c.CheckID)} on node {_q(c.Node)}"
    if op.Verb == "get":
        if cur is None:
            raise TxnOpError(f"{what} doesn't exist")
        return [TxnResult(Check=cur)]
    if op.Verb in ("cas", "delete-cas"):
        if op.Verb == "delete-cas" and cur is None:
            raise TxnOpError(f"failed to delete {what}, index is stale")
        _cas_index(cur.ModifyIndex if cur else 0, c.ModifyIndex, what, op.Verb)
    if op.Verb in ("delete", "delete-cas"):
        store._deregister(Deregister(Node=c.Node, CheckID=c.CheckID), index, changed)
        return []
    _need_node(store, c.Node)
    if c.ServiceID and c.ServiceID not in store.services.get(c.Node, {}):
        raise TxnOpError("Missing service registration")
    store._put_check(c.Node, replace(c, CreateIndex=0, ModifyIndex=0), index, changed)
    return [TxnResult(Check=store.checks[c.Node][c.CheckID])]


def _dispatch(store: Store, op: TxnOp, index: int, changed: set[str]) -> list[TxnResult]:
    from meshd.server.store import CommandError

    try:
        if op.KV is not None:
            return _kv(store, op.KV, index, changed)
        if op.Node is not None:
            return _node(store, op.Node, index, changed)
        if op.Service is not None:
            return _service(store, op.Service, index, changed)
        if op.Check is not None:
            return _check(store, op.Check, index, changed)
    except (CommandError, sessions.SessionStateError) as e:
        raise TxnOpError(str(e)) from None
    raise TxnOpError("an operation must have exactly one of KV, Node, Service, Check")


def _run(store: Store, ops: list[TxnOp], index: int, changed: set[str]) -> TxnReply:
    results: list[TxnResult] = []
    errors: list[TxnError] = []
    for i, op in enumerate(ops):
        try:
            results.extend(_dispatch(store, op, index, changed))
        except TxnOpError as e:
            errors.append(TxnError(OpIndex=i, What=str(e)))
    if errors:
        return TxnReply(Errors=errors, Index=index)
    return TxnReply(Results=results, Index=index)


def apply_txn(store: Store, txn: Txn, index: int, changed: set[str]) -> TxnReply:
    """The state machine's handler: all ops or none; only a committed txn's topics fire."""
    journal = _Journal(store)
    for op in txn.Ops:
        journal.op(op)
    mine: set[str] = set()
    try:
        reply = _run(store, txn.Ops, index, mine)
    except Exception:
        journal.rollback()
        raise
    if reply.Errors:
        journal.rollback()
    else:
        changed |= mine
    return reply


def read_txn(store: Store, ops: list[TxnOp]) -> TxnReply:
    """A transaction of reads only, served from this server's state without a Raft entry.

    Read verbs never write, so `changed` stays empty and there is nothing to roll back."""
    return _run(store, ops, store.index, set())


def result_value(reply: Any) -> TxnReply:
    """A reply as it comes back from a local apply (the struct) or over RPC (plain data)."""
    return reply if isinstance(reply, TxnReply) else msgspec.convert(reply, TxnReply)
