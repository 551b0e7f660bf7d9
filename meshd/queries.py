"""Catalog reads as values.

A read is a tagged struct rather than a method call so that the same read can be executed by the
local store (dev mode, servers) or shipped to a remote server by a client agent without a second
API; the store answers each with (index, rows) and the watch topics that can change it.
"""

from __future__ import annotations

import msgspec

from meshd.structs import TxnOp


class Services(msgspec.Struct, tag="services", frozen=True):
    pass


class ServiceNodes(msgspec.Struct, tag="service_nodes", frozen=True):
    """Instances of a service with their node and checks; `Connect` asks for its proxies."""

    Service: str
    Connect: bool = False


class Nodes(msgspec.Struct, tag="nodes", frozen=True):
    pass


class NodeInfo(msgspec.Struct, tag="node_info", frozen=True):
    """One node, its services and its checks."""

    Node: str


class ServiceChecks(msgspec.Struct, tag="service_checks", frozen=True):
    Service: str


class ChecksInState(msgspec.Struct, tag="checks_in_state", frozen=True):
    State: str


class KVGet(msgspec.Struct, tag="kv_get", frozen=True):
    Key: str
    Recurse: bool = False


class KVKeys(msgspec.Struct, tag="kv_keys", frozen=True):
    Prefix: str
    Separator: str = ""


class ConfigEntries(msgspec.Struct, tag="config_entries", frozen=True):
    """Entries of one kind (Name "" for all of that kind; Kind "" for every kind)."""

    Kind: str = ""
    Name: str = ""


class CARoots(msgspec.Struct, tag="ca_roots", frozen=True):
    pass


class TxnRead(msgspec.Struct, tag="txn_read", frozen=True):
    """A transaction of reads only (Consul's Txn.Read): answered without a Raft entry."""

    Ops: list[TxnOp]


class Events(msgspec.Struct, tag="events", frozen=True):
    """User events in the servers' ring after LTime `After` (negative: only the head)."""

    After: int = -1


class Sessions(msgspec.Struct, tag="sessions", frozen=True):
    """Sessions: one by ID, a node's, or (both empty) all of them."""

    ID: str = ""
    Node: str = ""


class ACLTokens(msgspec.Struct, tag="acl_tokens", frozen=True):
    """Tokens: one by AccessorID or by SecretID, or (both empty) all of them."""

    AccessorID: str = ""
    SecretID: str = ""


class ACLPolicies(msgspec.Struct, tag="acl_policies", frozen=True):
    ID: str = ""
    Name: str = ""


class ACLRoles(msgspec.Struct, tag="acl_roles", frozen=True):
    ID: str = ""
    Name: str = ""


class ACLAuthMethods(msgspec.Struct, tag="acl_auth_methods", frozen=True):
    """Auth methods: one by Name, or (empty) all of them."""

    Name: str = ""


class ACLBindingRules(msgspec.Struct, tag="acl_binding_rules", frozen=True):
    """Binding rules: one by ID, an auth method's, or (both empty) all of them."""

    ID: str = ""
    AuthMethod: str = ""


class ACLResolve(msgspec.Struct, tag="acl_resolve", frozen=True):
    """A token's accessor and resolved rules: the one read an agent's token cache makes."""

    SecretID: str


class AutopilotConfig(msgspec.Struct, tag="autopilot_config", frozen=True):
    pass


class Coordinates(msgspec.Struct, tag="coordinates", frozen=True):
    """Network coordinates of every node, or of one (`Node`)."""

    Node: str = ""


class PreparedQueries(msgspec.Struct, tag="prepared_queries", frozen=True):
    """Every prepared query definition, or one (`ID`)."""

    ID: str = ""


Query = (
    Services
    | ServiceNodes
    | Nodes
    | NodeInfo
    | ServiceChecks
    | ChecksInState
    | KVGet
    | KVKeys
    | ConfigEntries
    | CARoots
    | TxnRead
    | Events
    | Sessions
    | ACLTokens
    | ACLPolicies
    | ACLRoles
    | ACLResolve
    | ACLAuthMethods
    | ACLBindingRules
    | AutopilotConfig
    | Coordinates
    | PreparedQueries
)
