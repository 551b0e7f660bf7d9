"""The catalog's data model.

Attribute names are Consul's JSON field names on purpose: the same struct is the Raft payload,
the stored row and (after `msgspec.to_builtins`) the HTTP body, so there is no translation layer
in which a field could be renamed wrongly.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshd.acl.auth_model import ACLAuthMethodOp, ACLBindingRuleOp, ACLLogin, ACLLogout
from meshd.acl.model import ACLPolicyOp, ACLRoleOp, ACLTokenOp, ACLTokenReap


class Weights(msgspec.Struct, omit_defaults=False, gc=False):
    Passing: int = 1
    Warning: int = 1


class Node(msgspec.Struct, gc=False):
    Node: str
    Address: str
    ID: str = ""
    Datacenter: str = ""
    TaggedAddresses: dict[str, str] = {}
    Meta: dict[str, str] = {}
    CreateIndex: int = 0
    ModifyIndex: int = 0


class NodeService(msgspec.Struct, gc=False):
    ID: str
    Service: str
    Tags: list[str] = []
    Address: str = ""
    Port: int = 0
    Meta: dict[str, str] = {}
    Weights: Weights = msgspec.field(default_factory=Weights)
    EnableTagOverride: bool = False
    Kind: str = ""
    Proxy: dict[str, Any] | None = None
    Connect: dict[str, Any] | None = None
    TaggedAddresses: dict[str, Any] = {}  # name -> {"Address": str, "Port": int}
    Locality: dict[str, str] | None = None  # {"Region", "Zone"}, as Consul 1.17+
    Datacenter: str = ""
    CreateIndex: int = 0
    ModifyIndex: int = 0


class HealthCheck(msgspec.Struct, gc=False):
    Node: str
    CheckID: str
    Name: str
    Status: str = "critical"
    Notes: str = ""
    Output: str = ""
    ServiceID: str = ""
    ServiceName: str = ""
    ServiceTags: list[str] = []
    Type: str = ""
    Interval: str = ""
    Timeout: str = ""
    Definition: dict[str, Any] = {}
    CreateIndex: int = 0
    ModifyIndex: int = 0


class KVEntry(msgspec.Struct, gc=False):
    Key: str
    Value: bytes | None = None
    Flags: int = 0
    LockIndex: int = 0
    Session: str = ""
    CreateIndex: int = 0
    ModifyIndex: int = 0


HEALTH_PASSING = "passing"
HEALTH_WARNING = "warning"
HEALTH_CRITICAL = "critical"
HEALTH_MAINT = "maintenance"
HEALTH_STATES = (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL)
SERF_CHECK_ID = "serfHealth"
CONSUL_SERVICE = "consul"  # the service every server's node carries (port: server RPC)
NODE_MAINT_CHECK_ID = "_node_maintenance"


def service_maint_check_id(service_id: str) -> str:
    return f"_service_maintenance:{service_id}"


# --- Raft commands: tagged so one union decodes every log entry. -------------------------------


class Register(msgspec.Struct, tag="register"):
    """Catalog register: upsert a node and optionally one service and some checks."""

    Node: str
    Address: str
    ID: str = ""
    Datacenter: str = ""
    TaggedAddresses: dict[str, str] = {}
    NodeMeta: dict[str, str] = {}
    Service: NodeService | None = None
    Check: HealthCheck | None = None
    Checks: list[HealthCheck] = []
    SkipNodeUpdate: bool = False


class Deregister(msgspec.Struct, tag="deregister"):
    """Catalog deregister: the whole node, one service (and its checks) or one check."""

    Node: str
    ServiceID: str = ""
    CheckID: str = ""


class KVOp(msgspec.Struct, tag="kv"):
    """One KV verb; `Index` carries the CAS index for the *-cas verbs."""

    Verb: str  # set | cas | delete | delete-tree | delete-cas | lock | unlock
    Key: str
    Value: bytes | None = None
    Flags: int = 0
    Index: int = 0
    Session: str = ""  # lock / unlock: the session acquiring or releasing the key


class ServiceCheck(msgspec.Struct):
    """A service check a session depends on (Consul's `ServiceChecks` item)."""

    ID: str
    Namespace: str = ""


class Session(msgspec.Struct):
    """A session as Consul stores and shows it; `LockDelay` in nanoseconds, as its JSON."""

    ID: str
    Name: str = ""
    Node: str = ""
    LockDelay: int = 15_000_000_000
    Behavior: str = "release"  # release | delete: what invalidation does to the keys it holds
    TTL: str = ""
    NodeChecks: list[str] = []
    ServiceChecks: list[ServiceCheck] = []
    CreateIndex: int = 0
    ModifyIndex: int = 0


class SessionOp(msgspec.Struct, tag="session"):
    """Create or destroy a session (a user's request: Consul's Session.Apply)."""

    Op: str  # create | destroy
    Session: Session


class SessionInvalidate(msgspec.Struct, tag="session_invalidate"):
    """The leader's verdict that a session's TTL lapsed: only servers issue it."""

    ID: str
    Reason: str = ""


class Batch(msgspec.Struct, tag="batch"):
    """Several commands applied at one Raft index (anti-entropy pushes a node's diff at once)."""

    Ops: list[Register | Deregister | KVOp]


class Barrier(msgspec.Struct, tag="barrier"):
    """A no-op entry: its commit proves the leader still holds a quorum (consistent reads)."""


class Restore(msgspec.Struct, tag="restore"):
    """Replace the whole state with a snapshot taken by `meshd snapshot save`."""

    Data: bytes


class ConfigEntryOp(msgspec.Struct, tag="config_entry"):
    """Set (already validated by the server) or delete one config entry; CAS on ModifyIndex."""

    Op: str  # set | delete
    Kind: str
    Name: str
    Entry: dict[str, Any] = {}
    CASIndex: int = -1  # -1: unconditional


class IntentionOp(msgspec.Struct, tag="intention"):
    """Upsert or delete one source of a destination's service-intentions entry.

    Applied in the state machine as one step, so concurrent writers for one destination never
    lose each other's sources (the agent-side read-modify-write loop it replaces could).
    """

    Op: str  # upsert | delete
    Destination: str
    Source: str
    Fields: dict[str, Any] = {}  # Action, Description, Permissions, LegacyMeta
    MustNotExist: bool = False  # create: refuse when the pair already has an intention


class NodeStatus(msgspec.Struct, tag="node_status"):
    """The leader's liveness verdict on a node: its `serfHealth` check passing or critical."""

    Node: str
    Address: str
    Status: str
    Output: str = ""
    ServerPort: int = 0  # a server's RPC port: its node carries the `consul` service


class NodeStatusBatch(msgspec.Struct, tag="node_status_batch"):
    """Many nodes' liveness verdicts in one entry: the leader batches what its servers report
    (`NodeStatus` stays for replaying older logs). `Deregisters`: nodes that left or were
    reaped."""

    Updates: list[NodeStatus] = []
    Deregisters: list[str] = []


class CASetRoots(msgspec.Struct, tag="ca_roots"):
    """The CA state: cluster id (trust domain), roots (msgpack of server.ca.CARoot), config."""

    ClusterID: str
    Roots: bytes
    Config: dict[str, Any] = {}


class UserEvent(msgspec.Struct):
    """A user event (`meshd event`), in Consul's JSON shape; `LTime` is assigned by the servers."""

    ID: str
    Name: str
    Payload: bytes | None = None
    NodeFilter: str = ""
    ServiceFilter: str = ""
    TagFilter: str = ""
    Version: int = 1
    LTime: int = 0


class EventFire(msgspec.Struct, tag="event_fire"):
    """Append one user event to the servers' bounded ring; agents pull it from there."""

    Event: UserEvent


class EventsPage(msgspec.Struct):
    """An answer to `queries.Events`: the ring's newest LTime and the events after `After`."""

    Head: int
    Events: list[UserEvent] = []


# --- transactions (/v1/txn): each op is one of KV, Node, Service, Check, as Consul's TxnOp ----


class TxnKVOp(msgspec.Struct):
    Verb: str
    Key: str
    Value: bytes | None = None
    Flags: int = 0
    Index: int = 0
    Session: str = ""


class TxnNodeOp(msgspec.Struct):
    Verb: str
    Node: Node


class TxnServiceOp(msgspec.Struct):
    Verb: str
    Node: str
    Service: NodeService


class TxnCheckOp(msgspec.Struct):
    Verb: str
    Check: HealthCheck


class TxnOp(msgspec.Struct, omit_defaults=True):
    KV: TxnKVOp | None = None
    Node: TxnNodeOp | None = None
    Service: TxnServiceOp | None = None
    Check: TxnCheckOp | None = None


class Txn(msgspec.Struct, tag="txn"):
    """Operations applied all-or-nothing at one Raft index (server/txn.py)."""

    Ops: list[TxnOp]


class TxnResult(msgspec.Struct, omit_defaults=True):
    KV: KVEntry | None = None
    Node: Node | None = None
    Service: NodeService | None = None
    Check: HealthCheck | None = None


class TxnError(msgspec.Struct):
    OpIndex: int
    What: str


class TxnReply(msgspec.Struct):
    """What a transaction answered: `Errors` set means it was rolled back (HTTP 409)."""

    Results: list[TxnResult] | None = None
    Errors: list[TxnError] | None = None
    Index: int = 0


class AutopilotConfigOp(msgspec.Struct, tag="autopilot_config"):
    """Set the autopilot configuration (Consul's /v1/operator/autopilot/configuration)."""

    Config: dict[str, Any]
    CASIndex: int = -1  # -1: unconditional


class CoordinateUpdate(msgspec.Struct):
    Node: str
    Coord: dict[str, Any]  # Vec, Error, Adjustment, Height (meshd.coordinate)
    Segment: str = ""


class CoordinateBatch(msgspec.Struct, tag="coordinates"):
    """Nodes' network coordinates, written in batches (Consul's Coordinate.Update)."""

    Updates: list[CoordinateUpdate]


class PreparedQueryOp(msgspec.Struct, tag="prepared_query"):
    """Create/update (`set`) or `delete` one prepared query (Consul's /v1/query)."""

    Op: str
    ID: str
    Query: dict[str, Any] = {}  # the normalized definition (meshd.prepared_query)


class KeyringOp(msgspec.Struct, tag="keyring"):
    """Install, use (make primary) or remove a cluster key (Consul's /v1/operator/keyring).

    `Current` is the sender's ring when the replicated one is still empty (a cluster started
    with `encrypt` and never rotated), so the first install keeps the key in use."""

    Op: str
    Key: str
    Current: list[str] = []


class KVReap(msgspec.Struct, tag="kv_reap"):
    """The leader's tombstone GC: forget deleted keys whose deletion index is at most `Index`
    (Consul's TombstoneRequest reap)."""

    Index: int


Command = (
    Register
    | Deregister
    | KVOp
    | Batch
    | Barrier
    | Restore
    | ConfigEntryOp
    | IntentionOp
    | NodeStatus
    | NodeStatusBatch
    | CASetRoots
    | EventFire
    | Txn
    | SessionOp
    | SessionInvalidate
    | ACLTokenOp
    | ACLPolicyOp
    | ACLRoleOp
    | ACLAuthMethodOp
    | ACLBindingRuleOp
    | ACLLogin
    | ACLLogout
    | ACLTokenReap
    | AutopilotConfigOp
    | CoordinateBatch
    | PreparedQueryOp
    | KeyringOp
    | KVReap
)

_cmd_encoder = msgspec.msgpack.Encoder()
_cmd_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(cmd: Command) -> bytes:
    return _cmd_encoder.encode(cmd)


def decode_command(data: bytes) -> Command:
    return _cmd_decoder.decode(data)


class CheckServiceNode(msgspec.Struct):
    """One row of /v1/health/service: an instance with its node and every check that covers it."""

    Node: Node
    Service: NodeService
    Checks: list[HealthCheck] = []
