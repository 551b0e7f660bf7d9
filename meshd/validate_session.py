"""The rules of the session, transaction and user-event commands."""

from __future__ import annotations

import re

from meshd.durations import DurationError, parse_duration_seconds
from meshd.structs import (
    EventFire,
    KVOp,
    Register,
    SessionInvalidate,
    SessionOp,
    Txn,
    TxnOp,
)
from meshd.validate_catalog import check, kv, register, service
from meshd.validate_fields import Limits, ValidationError, name, regex

MAX_EVENT_PAYLOAD = 100 * 1024  # the HTTP API answers 413 above this
MAX_TXN_OPS = 64  # Consul's maxTxnOps before 1.14 (413 above)
TXN_KV_READS = (
    "get",
    "get-or-empty",
    "get-tree",
    "check-index",
    "check-session",
    "check-not-exists",
)
TXN_KV_VERBS = (
    "set",
    "cas",
    "lock",
    "unlock",
    "delete",
    "delete-tree",
    "delete-cas",
    *TXN_KV_READS,
)
TXN_CATALOG_VERBS = ("set", "cas", "get", "delete", "delete-cas")


def event_fire(cmd: EventFire, limits: Limits) -> None:
    ev = cmd.Event
    name(ev.ID, "event ID")
    name(ev.Name, "event name")
    if ev.Name.startswith("_"):
        raise ValidationError("event names starting with '_' are reserved for internal use")
    if len(ev.Payload or b"") > MAX_EVENT_PAYLOAD:
        raise ValidationError(f"event payload exceeds {MAX_EVENT_PAYLOAD} byte limit")
    regex(ev.NodeFilter, "node filter")
    regex(ev.ServiceFilter, "service filter")
    regex(ev.TagFilter, "tag filter")
    if ev.TagFilter and not ev.ServiceFilter:
        raise ValidationError("Cannot provide tag filter without service filter")


def _txn_verb(verb: str, verbs: tuple[str, ...], what: str) -> None:
    if verb not in verbs:
        raise ValidationError(f"unknown {what} verb {verb!r}")


def txn_op(op: TxnOp, limits: Limits) -> None:
    """One op of a transaction: exactly one kind, a known verb, and what that verb needs."""
    kinds = [k for k in (op.KV, op.Node, op.Service, op.Check) if k is not None]
    if len(kinds) != 1:
        raise ValidationError("an operation must have exactly one of KV, Node, Service, Check")
    writes = ("set", "cas")
    if op.KV is not None:
        _txn_verb(op.KV.Verb, TXN_KV_VERBS, "KV")
        key = op.KV.Key
        if not key and op.KV.Verb not in ("delete-tree", "get-tree"):  # prefix "" is all
            raise ValidationError("Missing key name")
        kv(KVOp(Verb="set", Key=key or "-", Value=op.KV.Value, Flags=op.KV.Flags), limits)
        if op.KV.Verb in ("lock", "unlock", "check-session") and not op.KV.Session:
            raise ValidationError(f"KV {op.KV.Verb} needs a Session")
        if op.KV.Index < 0:
            raise ValidationError("KV Index must not be negative")
    elif op.Node is not None:
        _txn_verb(op.Node.Verb, TXN_CATALOG_VERBS, "Node")
        n = op.Node.Node
        if op.Node.Verb in writes:
            register(
                Register(
                    Node=n.Node,
                    Address=n.Address or "-",
                    TaggedAddresses=n.TaggedAddresses,
                    NodeMeta=n.Meta,
                ),
                limits,
            )
        name(n.Node, "Node.Node")
    elif op.Service is not None:
        _txn_verb(op.Service.Verb, TXN_CATALOG_VERBS, "Service")
        name(op.Service.Node, "Node")
        if op.Service.Verb in writes:
            service(op.Service.Service)
        name(op.Service.Service.ID, "Service.ID")
    elif op.Check is not None:
        _txn_verb(op.Check.Verb, TXN_CATALOG_VERBS, "Check")
        c = op.Check.Check
        name(c.Node, "Check.Node")
        name(c.CheckID, "Check.CheckID")
        if op.Check.Verb in writes:
            check(c, c.Node)


def txn(t: Txn, limits: Limits) -> None:
    if not t.Ops:
        raise ValidationError("a transaction needs at least one operation")
    if len(t.Ops) > MAX_TXN_OPS:
        raise ValidationError(
            f"Transaction contains too many operations ({len(t.Ops)} > {MAX_TXN_OPS})"
        )
    for i, op in enumerate(t.Ops):
        try:
            txn_op(op, limits)
        except ValidationError as e:
            raise ValidationError(f"operation {i}: {e}") from None


def txn_is_read_only(t: Txn) -> bool:
    """Consul serves a transaction without writes as a read: no Raft entry."""
    return all(
        (op.KV is not None and op.KV.Verb in TXN_KV_READS)
        or any(o is not None and o.Verb == "get" for o in (op.Node, op.Service, op.Check))
        for op in t.Ops
    )


SESSION_OPS = ("create", "destroy")
SESSION_BEHAVIORS = ("release", "delete")
SESSION_TTL_MIN, SESSION_TTL_MAX = 10.0, 86400.0  # Consul's session_ttl_min and SessionTTLMax
MAX_LOCK_DELAY_NS = 60 * 10**9  # Consul's MaxLockDelay
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def session_ttl(ttl: str) -> float:
    """The TTL in seconds (0: none), refused outside Consul's bounds with Consul's wording."""
    if not ttl:
        return 0.0
    try:
        seconds = parse_duration_seconds(ttl)
    except DurationError as e:
        raise ValidationError(f"Session TTL '{ttl}' invalid: {e}") from None
    if seconds and not SESSION_TTL_MIN <= seconds <= SESSION_TTL_MAX:
        raise ValidationError(
            f"Invalid Session TTL '{int(seconds * 1e9)}', must be between [10s=24h0m0s]"
        )
    return seconds


def session_op(op: SessionOp, limits: Limits) -> None:
    if op.Op not in SESSION_OPS:
        raise ValidationError(f"unknown session op {op.Op!r}")
    s = op.Session
    if not _UUID_RE.match(s.ID):
        raise ValidationError(f"Session ID {s.ID!r} is not a UUID")
    if op.Op == "destroy":
        return
    name(s.Node, "Node")
    name(s.Name, "Name", required=False)
    if s.Behavior not in SESSION_BEHAVIORS:
        raise ValidationError(f"Invalid Behavior setting '{s.Behavior}'")
    session_ttl(s.TTL)
    if not 0 <= s.LockDelay <= MAX_LOCK_DELAY_NS:
        raise ValidationError("LockDelay must be between 0s and 60s")
    for c in [*s.NodeChecks, *(sc.ID for sc in s.ServiceChecks)]:
        name(c, "check ID")


def session_invalidate(op: SessionInvalidate, limits: Limits) -> None:
    name(op.ID, "ID")
