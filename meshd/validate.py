"""The rules a command must pass before it may enter the replicated state.

Pure functions over the command structs, no I/O and no state. An agent runs them to refuse bad
input early, before it changes its local state; the servers run the very same code, and are the
authority, before anything is proposed to Raft: a committed entry that cannot be applied would
be replayed on every server forever. Limits follow Consul's where Consul has one, so data moves
between the two unchanged. Rules that need the state (a check's service exists on its node) and
the config-entry schema live on the server side (`meshd.server.authority`), which calls these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from meshd.acl.checks import RULES as ACL_RULES
from meshd.autopilot import AutopilotConfigError, normalize_config
from meshd.coordinate import Coordinate, CoordinateError
from meshd.durations import DurationError, parse_duration_seconds
from meshd.keyring import KeyringError, key_bytes
from meshd.prepared_query import PreparedQueryError, normalize
from meshd.structs import (
    HEALTH_STATES,
    SERF_CHECK_ID,
    AutopilotConfigOp,
    Barrier,
    Batch,
    CASetRoots,
    Command,
    ConfigEntryOp,
    CoordinateBatch,
    Deregister,
    EventFire,
    HealthCheck,
    IntentionOp,
    KeyringOp,
    KVOp,
    KVReap,
    NodeService,
    NodeStatus,
    PreparedQueryOp,
    Register,
    Restore,
    SessionInvalidate,
    SessionOp,
    Txn,
    TxnOp,
    decode_command,
    encode_command,
)


class ValidationError(ValueError):
    """A command the servers refuse; the text is the reason the user reads (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """Operator-tunable sizes (`limits` in the config); the rest are fixed below."""

    kv_max_value_size: int = 512 * 1024  # Consul's kv_max_value_size

    @classmethod
    def from_config(cls, limits: Mapping[str, int]) -> Limits:
        return cls(kv_max_value_size=int(limits.get("kv_max_value_size", cls.kv_max_value_size)))


MAX_NAME = 256  # node names, service names and IDs, check IDs, tags, addresses
MAX_KEY = 512  # KV keys
MAX_TEXT = 128 * 1024  # a check's Output and Notes: a status line, not a log
OUTPUT_MAX_SIZE = MAX_TEXT // 2  # an agent's OutputMaxSize: room left for its truncation note
MAX_BATCH = 4096  # commands in one Batch (anti-entropy of one node)
META_MAX_PAIRS = 64  # Consul's metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength
META_KEY_MAX = 128
META_VALUE_MAX = 512
DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9-]{1,63}$")  # Consul's test for a discoverable name
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
SERVICE_KINDS = (
    "",
    "connect-proxy",
    "mesh-gateway",
    "terminating-gateway",
    "ingress-gateway",
    "api-gateway",
)
KV_VERBS = ("set", "cas", "delete", "delete-tree", "delete-cas", "lock", "unlock")
CONFIG_OPS = ("set", "delete")
INTENTION_OPS = ("upsert", "delete")
INTENTION_FIELDS = ("Action", "Description", "Permissions", "LegacyMeta")
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


def typed(cmd: Command) -> Command:
    """The command as a server would decode it from the log: every field of its declared type.

    A struct built in-process is not type-checked (a NodeMeta value may be an int); a round trip
    through the log encoding checks all of it, once, before the entry exists.
    """
    try:
        return decode_command(encode_command(cmd))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError) as e:
        raise ValidationError(f"invalid {type(cmd).__name__}: {e}") from None


def name(value: str, what: str, *, required: bool = True, limit: int = MAX_NAME) -> None:
    """A printable identifier: no control characters, at most `limit` characters."""
    if not value:
        if required:
            raise ValidationError(f"{what} is required")
        return
    if len(value) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    if _CONTROL_RE.search(value):
        raise ValidationError(f"{what} {value!r} contains control characters")


def dns_safe(value: str) -> bool:
    """Whether a service name can be looked up in DNS. Consul registers a name that is not
    (and logs a warning), so the servers accept it too: refusing it would break tools that
    register such names against Consul today."""
    return bool(DNS_LABEL_RE.match(value))


def service_name(value: str, what: str) -> None:
    """Service names and IDs: printable, bounded; any alphabet Consul accepts."""
    name(value, what)


def meta(values: Mapping[str, str], what: str) -> None:
    """Consul's metadata rules (ValidateMetadata), so entries stay portable to Consul."""
    if len(values) > META_MAX_PAIRS:
        raise ValidationError(f"{what} has more than {META_MAX_PAIRS} key/value pairs")
    for key, value in values.items():
        if not key:
            raise ValidationError(f"{what}: key cannot be blank")
        if len(key) > META_KEY_MAX:
            raise ValidationError(f"{what}: key {key[:20]!r}... is longer than {META_KEY_MAX}")
        if not _META_KEY_RE.match(key):
            raise ValidationError(f"{what}: key {key!r} contains invalid characters")
        if len(value) > META_VALUE_MAX:
            raise ValidationError(f"{what}: value of {key!r} is longer than {META_VALUE_MAX}")


def address(value: str, what: str) -> None:
    name(value, what, required=False)
    if any(ch.isspace() for ch in value):
        raise ValidationError(f"{what} {value!r} contains whitespace")


def service(svc: NodeService, where: str = "Service") -> None:
    service_name(svc.Service, f"{where}.Service")
    service_name(svc.ID, f"{where}.ID")
    for tag in svc.Tags:
        name(tag, f"{where}.Tags entry")
    address(svc.Address, f"{where}.Address")
    for key, ta in svc.TaggedAddresses.items():
        name(key, f"{where}.TaggedAddresses key")
        if not isinstance(ta, dict) or set(ta) - {"Address", "Port"}:
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}] must be {{Address, Port}}")
        if not isinstance(ta.get("Address", ""), str):
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}].Address must be a string")
        port = ta.get("Port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValidationError(f"{where}.TaggedAddresses[{key!r}].Port must be a port number")
    if svc.Locality is not None and set(svc.Locality) - {"Region", "Zone"}:
        raise ValidationError(f"{where}.Locality holds only Region and Zone")
    if not 0 <= svc.Port <= 65535:
        raise ValidationError(f"{where}.Port {svc.Port} is out of range 0-65535")
    if svc.Weights.Passing < 1:
        raise ValidationError(f"{where}.Weights.Passing must be greater than 0")
    if svc.Weights.Warning < 0:
        raise ValidationError(f"{where}.Weights.Warning must not be negative")
    if svc.Kind not in SERVICE_KINDS:
        raise ValidationError(f"{where}.Kind {svc.Kind!r} is not a service kind")
    if svc.Kind == "connect-proxy":
        dest = (svc.Proxy or {}).get("DestinationServiceName")
        if not isinstance(dest, str) or not dest:
            raise ValidationError(
                f"{where}.Proxy.DestinationServiceName must be set for a connect-proxy"
            )
    upstreams(svc.Proxy, f"{where}.Proxy.Upstreams")
    meta(svc.Meta, f"{where}.Meta")


def upstreams(proxy: dict[str, Any] | None, where: str) -> None:
    """An upstream without a destination cannot be configured; refusing it here keeps it from
    reaching the sidecar snapshot builder, where it would stop config for the other proxies."""
    ups = (proxy or {}).get("Upstreams")
    if ups is None:
        return
    if not isinstance(ups, list):
        raise ValidationError(f"{where} must be a list")
    for i, up in enumerate(ups):
        if not isinstance(up, dict):
            raise ValidationError(f"{where}[{i}] must be an object")
        dest = up.get("DestinationName")
        if not isinstance(dest, str) or not dest:
            raise ValidationError(f"{where}[{i}].DestinationName is required")


def check(c: HealthCheck, node: str, where: str = "Check") -> None:
    name(c.CheckID, f"{where}.CheckID")
    if c.CheckID == SERF_CHECK_ID:
        raise ValidationError(f"{where}.CheckID {SERF_CHECK_ID!r} is maintained by the servers")
    name(c.Name, f"{where}.Name", required=False)
    if c.Node and c.Node != node:
        raise ValidationError(f"{where}.Node {c.Node!r} does not match the node {node!r}")
    if c.Status not in HEALTH_STATES:
        raise ValidationError(
            f"{where}.Status {c.Status!r} is not one of {', '.join(HEALTH_STATES)}"
        )
    name(c.ServiceID, f"{where}.ServiceID", required=False)
    for field, text in (("Output", c.Output), ("Notes", c.Notes)):
        if len(text) > MAX_TEXT:
            raise ValidationError(f"{where}.{field} is longer than {MAX_TEXT} characters")


def register(r: Register, limits: Limits) -> None:
    name(r.Node, "Node")
    address(r.Address, "Address")
    for key, value in r.TaggedAddresses.items():
        name(key, "TaggedAddresses key")
        address(value, f"TaggedAddresses[{key!r}]")
    meta(r.NodeMeta, "NodeMeta")
    if r.Service is not None:
        service(r.Service)
    checks = [*([r.Check] if r.Check else []), *r.Checks]
    seen: set[str] = set()
    for i, c in enumerate(checks):
        check(c, r.Node, f"Checks[{i}]")
        if c.CheckID in seen:
            raise ValidationError(f"Checks[{i}].CheckID {c.CheckID!r} appears more than once")
        seen.add(c.CheckID)


def deregister(d: Deregister, limits: Limits) -> None:
    name(d.Node, "Node")
    name(d.ServiceID, "ServiceID", required=False)
    name(d.CheckID, "CheckID", required=False)


def kv(op: KVOp, limits: Limits) -> None:
    if op.Verb not in KV_VERBS:
        raise ValidationError(f"unknown KV verb {op.Verb!r}")
    if len(op.Key) > MAX_KEY:
        raise ValidationError(f"KV key is longer than {MAX_KEY} characters")
    if "\x00" in op.Key:
        raise ValidationError("KV key contains a NUL character")
    if not op.Key and op.Verb != "delete-tree":
        raise ValidationError("Missing key name")
    size = len(op.Value or b"")
    if size > limits.kv_max_value_size:
        raise ValidationError(f"Value exceeds {limits.kv_max_value_size} byte limit")
    if not 0 <= op.Flags < 2**64:
        raise ValidationError(f"KV flags {op.Flags} are not an unsigned 64-bit number")
    if op.Index < 0:
        raise ValidationError("KV CAS index must not be negative")
    if op.Verb in ("lock", "unlock") and not op.Session:
        raise ValidationError("missing session")


def batch(b: Batch, limits: Limits) -> None:
    if len(b.Ops) > MAX_BATCH:
        raise ValidationError(f"a batch holds at most {MAX_BATCH} commands, got {len(b.Ops)}")
    for i, op in enumerate(b.Ops):
        try:
            validate(op, limits)
        except ValidationError as e:
            raise ValidationError(f"Ops[{i}]: {e}") from None


def config_entry(op: ConfigEntryOp, limits: Limits) -> None:
    if op.Op not in CONFIG_OPS:
        raise ValidationError(f"unknown config entry op {op.Op!r}")
    name(op.Kind, "Kind")
    name(op.Name, "Name")
    if op.CASIndex < -1:
        raise ValidationError("CAS index must not be negative")


def intention(op: IntentionOp, limits: Limits) -> None:
    if op.Op not in INTENTION_OPS:
        raise ValidationError(f"unknown intention op {op.Op!r}")
    name(op.Source, "SourceName")
    name(op.Destination, "DestinationName")
    unknown = sorted(set(op.Fields) - set(INTENTION_FIELDS))
    if unknown:
        raise ValidationError(f"unknown intention field {unknown[0]!r}")


def node_status(s: NodeStatus, limits: Limits) -> None:
    name(s.Node, "Node")
    address(s.Address, "Address")
    if s.Status not in HEALTH_STATES:
        raise ValidationError(f"Status {s.Status!r} is not one of {', '.join(HEALTH_STATES)}")
    if not 0 <= s.ServerPort <= 65535:
        raise ValidationError(f"ServerPort {s.ServerPort} is out of range 0-65535")


def ca_roots(c: CASetRoots, limits: Limits) -> None:
    name(c.ClusterID, "ClusterID")
    if not c.Roots:
        raise ValidationError("CA roots are required")


def restore(r: Restore, limits: Limits) -> None:
    if not r.Data:
        raise ValidationError("snapshot is empty")


def regex(value: str, what: str) -> None:
    name(value, what, required=False)
    try:
        re.compile(value)
    except re.error as e:
        raise ValidationError(f"invalid {what} regexp {value!r}: {e}") from None


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


def autopilot_config(op: AutopilotConfigOp, limits: Limits) -> None:
    if op.CASIndex < -1:
        raise ValidationError("CAS index must not be negative")
    try:
        normalize_config(op.Config)
    except AutopilotConfigError as e:
        raise ValidationError(str(e)) from None


MAX_COORDINATES = 1024  # updates in one batch (the leader writes every few seconds)


def coordinates(b: CoordinateBatch, limits: Limits) -> None:
    if len(b.Updates) > MAX_COORDINATES:
        raise ValidationError(f"a coordinate batch holds at most {MAX_COORDINATES} updates")
    for u in b.Updates:
        name(u.Node, "Node")
        name(u.Segment, "Segment", required=False)
        try:
            Coordinate.from_json(u.Coord)
        except CoordinateError as e:
            raise ValidationError(f"coordinate of {u.Node!r}: {e}") from None


def prepared_query(op: PreparedQueryOp, limits: Limits) -> None:
    if op.Op not in ("set", "delete"):
        raise ValidationError(f"unknown prepared query op {op.Op!r}")
    name(op.ID, "ID")
    if op.Op == "set":
        try:
            normalize(op.Query, op.ID)
        except PreparedQueryError as e:
            raise ValidationError(str(e)) from None


def keyring(op: KeyringOp, limits: Limits) -> None:
    if op.Op not in ("install", "use", "remove"):
        raise ValidationError(f"unknown keyring op {op.Op!r}")
    try:
        for key in [op.Key, *op.Current]:
            key_bytes(key)
    except KeyringError as e:
        raise ValidationError(str(e)) from None


def kv_reap(cmd: Any, limits: Limits) -> None:
    if not 0 <= cmd.Index < 2**63:
        raise ValidationError(f"reap index {cmd.Index} is out of range")


def _nothing(cmd: Any, limits: Limits) -> None:
    """A barrier carries no data."""


RULES: dict[type[Any], Callable[[Any, Limits], None]] = {
    Register: register,
    Deregister: deregister,
    KVOp: kv,
    Batch: batch,
    Barrier: _nothing,
    Restore: restore,
    ConfigEntryOp: config_entry,
    IntentionOp: intention,
    NodeStatus: node_status,
    CASetRoots: ca_roots,
    EventFire: event_fire,
    Txn: txn,
    SessionOp: session_op,
    SessionInvalidate: session_invalidate,
    **ACL_RULES,  # tokens, policies, roles: meshd/acl/checks.py
    AutopilotConfigOp: autopilot_config,
    CoordinateBatch: coordinates,
    PreparedQueryOp: prepared_query,
    KeyringOp: keyring,
    KVReap: kv_reap,
}


def validate(cmd: Command, limits: Limits | None = None) -> None:
    """Refuse `cmd` with the reason, or return: the stateless rules of its command type."""
    rule = RULES.get(type(cmd))
    if rule is None:
        raise ValidationError(f"unknown command {type(cmd).__name__}")
    rule(cmd, limits or Limits())
