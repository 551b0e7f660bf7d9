"""What the servers accept into the replicated state, and from whom.

Every command passes `admit` before it is proposed to Raft: the origin table (an agent over RPC
may not send what only a server decides), the stateless rules shared with agents
(`meshd.validate`), the config-entry schema, and the checks that need the current state (a
check's service exists on its node). `ORIGINS` is the seam ACL enforcement plugs into next: one
row per command type, not a test scattered through the handlers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec

from meshd import validate
from meshd.acl.auth_model import ACLAuthMethodOp, ACLBindingRuleOp, ACLLogin, ACLLogout
from meshd.acl.checks import ValidationError as ACLValidationError
from meshd.acl.model import ACLPolicyOp, ACLRoleOp, ACLTokenOp, ACLTokenReap
from meshd.chain import CHAIN_KINDS, ChainError, check_chains
from meshd.config_entries import KINDS, ConfigEntryError, normalize_entry
from meshd.prepared_query import PreparedQueryError, check_unique
from meshd.prepared_query import normalize as normalize_query
from meshd.server.acl_expiry import check_token_expiry
from meshd.server.acl_state import BootstrapDoneError
from meshd.server.ca import CARoot
from meshd.server.mesh_state import INTENTIONS, CommandRejectedError, intention_entry
from meshd.server.store import CommandError, CommandForbiddenError, Store
from meshd.structs import (
    AutopilotConfigOp,
    Barrier,
    Batch,
    CASetRoots,
    Command,
    ConfigEntryOp,
    CoordinateBatch,
    Deregister,
    EventFire,
    IntentionOp,
    KeyringOp,
    KVOp,
    KVReap,
    NodeStatus,
    NodeStatusBatch,
    PreparedQueryOp,
    Register,
    Restore,
    SessionInvalidate,
    SessionOp,
    Txn,
)


class Origin(enum.Enum):
    AGENT = "agent"  # any holder of the cluster key, over /rpc/write (and every HTTP API write)
    SERVER = "server"  # a server's own decision, proposed in-process, never over RPC


_ANY = frozenset(Origin)
_SERVERS = frozenset({Origin.SERVER})

ORIGINS: dict[type[Any], frozenset[Origin]] = {
    Register: _ANY,  # services, checks, nodes (Consul's catalog register)
    Deregister: _ANY,
    KVOp: _ANY,
    Batch: _ANY,  # anti-entropy's diff; every op in it is checked too
    Barrier: _ANY,
    ConfigEntryOp: _ANY,
    IntentionOp: _ANY,
    EventFire: _ANY,  # user events (`meshd event`)
    Txn: _ANY,  # /v1/txn; every op is checked by meshd.validate_session.txn
    NodeStatus: _SERVERS,  # liveness verdicts of the leader (serfHealth)
    NodeStatusBatch: _SERVERS,  # the same, many nodes per entry
    CASetRoots: _SERVERS,  # CA roots and rotation: the CA key never comes from outside
    Restore: _SERVERS,  # replaces the whole state: only via a server's snapshot restore
    SessionOp: _ANY,  # a user's create / destroy
    SessionInvalidate: _SERVERS,  # the leader's TTL verdict
    ACLTokenOp: _ANY,  # ACL writes need acl:write on the caller's token (and bootstrap, none)
    ACLPolicyOp: _ANY,
    ACLRoleOp: _ANY,
    ACLAuthMethodOp: _ANY,
    ACLBindingRuleOp: _ANY,
    ACLLogin: frozenset(),  # exchanged for an ACLTokenOp before admission (server/acl_login.py)
    ACLLogout: frozenset(),
    AutopilotConfigOp: _ANY,  # an operator's, through any agent's HTTP API
    CoordinateBatch: _ANY,  # the leader's batches, and /v1/coordinate/update from agents
    PreparedQueryOp: _ANY,
    KeyringOp: _ANY,  # an operator's rotation, through any agent's HTTP API
    KVReap: _SERVERS,  # the leader's tombstone GC
    ACLTokenReap: _SERVERS,  # the leader drops expired tokens (server/acl_expiry.py)
}


def command_tag(cmd: msgspec.Struct) -> str:
    """The name a command has in the log (its msgspec tag), which is what errors show."""
    tag = cmd.__struct_config__.tag
    return str(tag) if tag is not None else type(cmd).__name__


def check_origin(cmd: Command, origin: Origin) -> None:
    allowed = ORIGINS.get(type(cmd))
    if allowed is None:
        raise CommandError(f"unknown command {type(cmd).__name__}")
    if origin not in allowed:
        raise CommandForbiddenError(f"command {command_tag(cmd)!r} is issued only by servers")
    if isinstance(cmd, Batch):
        for op in cmd.Ops:
            check_origin(op, origin)


def check_command(
    cmd: Command, limits: validate.Limits | None = None, *, decoded: bool = False
) -> Command:
    """The stateless checks, returning the command to propose (config entries normalised).

    Agents call this too, for an early error; the server's call in `admit` is the one that
    counts. `decoded`: the command was just decoded from an RPC body against its types, so the
    round trip that type-checks a struct built in-process would only repeat that work.
    """
    try:
        if not decoded:
            cmd = validate.typed(cmd)
        validate.validate(cmd, limits)
        return _normalise(cmd)
    except (
        validate.ValidationError,
        ACLValidationError,
        ConfigEntryError,
        CommandRejectedError,
        PreparedQueryError,
    ) as e:
        raise CommandError(str(e)) from None


def _config_entry(cmd: ConfigEntryOp) -> Command:
    """The server stores its own normalised form of the entry, not what the agent sent."""
    if cmd.Kind not in KINDS:
        raise validate.ValidationError(f"invalid config entry kind: {cmd.Kind}")
    if cmd.Op != "set":
        return cmd
    entry = normalize_entry(cmd.Entry)
    if (entry["Kind"], entry["Name"]) != (cmd.Kind, cmd.Name):
        raise validate.ValidationError(
            f"the entry is {entry['Kind']}/{entry['Name']}, the command names {cmd.Kind}/{cmd.Name}"
        )
    return msgspec.structs.replace(cmd, Entry=entry)


def _intention(cmd: IntentionOp) -> Command:
    if cmd.Op == "upsert":  # the one source, checked as the state machine will store it
        intention_entry(cmd.Destination, [{"Name": cmd.Source, **cmd.Fields}])
    return cmd


def _ca_roots(cmd: CASetRoots) -> Command:
    try:
        roots = msgspec.msgpack.decode(cmd.Roots, type=list[CARoot])
    except msgspec.DecodeError as e:
        raise validate.ValidationError(f"bad CA roots: {e}") from None
    if sum(1 for r in roots if r.Active) != 1:
        raise validate.ValidationError("exactly one CA root must be active")
    return cmd


def _restore(cmd: Restore) -> Command:
    Store.check_snapshot(cmd.Data)
    return cmd


# the server-side schema of the commands that have one beyond `meshd.validate`
def _prepared_query(cmd: PreparedQueryOp) -> Command:
    """The server stores the normalized definition (every field, Consul's names)."""
    if cmd.Op != "set":
        return cmd
    return msgspec.structs.replace(cmd, Query=normalize_query(cmd.Query, cmd.ID))


_SCHEMA: dict[type[Any], Callable[[Any], Command]] = {
    PreparedQueryOp: _prepared_query,
    ConfigEntryOp: _config_entry,
    IntentionOp: _intention,
    CASetRoots: _ca_roots,
    Restore: _restore,
}


def _normalise(cmd: Command) -> Command:
    schema = _SCHEMA.get(type(cmd))
    return schema(cmd) if schema is not None else cmd


def check_references(cmd: Command, store: Store) -> None:
    """The checks against the current state; apply repeats the decisive ones, since the state
    may move between here and the commit."""
    with store.lock:
        if isinstance(cmd, Batch):
            added: dict[str, set[str]] = {}
            for i, op in enumerate(cmd.Ops):
                try:
                    _references(op, store, added)
                except CommandError as e:
                    raise CommandError(f"Ops[{i}]: {e}") from None
        else:
            _references(cmd, store, {})


def _register_refs(cmd: Register, store: Store, added: dict[str, set[str]]) -> None:
    """`added`: services registered by earlier commands of the same batch, per node."""
    known = added.setdefault(cmd.Node, set())
    if not cmd.Address and cmd.Node not in store.nodes and not known:
        raise CommandError("Must provide node and address")
    if cmd.Service is not None:
        known.add(cmd.Service.ID)
    services = store.services.get(cmd.Node, {})
    for c in [*([cmd.Check] if cmd.Check else []), *cmd.Checks]:
        sid = c.ServiceID
        if sid and sid not in known and sid not in services:
            raise CommandError(f'Unknown service ID "{sid}" for check ID "{c.CheckID}"')


def _ca_roots_refs(cmd: CASetRoots, store: Store, added: dict[str, set[str]]) -> None:
    current = store.mesh.cluster_id
    if current and cmd.ClusterID != current:
        raise CommandError("the cluster id (trust domain) cannot change")


def _intention_refs(cmd: IntentionOp, store: Store, added: dict[str, set[str]]) -> None:
    if cmd.Op != "upsert" or not cmd.MustNotExist:
        return
    entry = store.mesh.entries.get((INTENTIONS, cmd.Destination)) or {}
    if any(s.get("Name") == cmd.Source for s in entry.get("Sources", [])):
        raise CommandError(f"an intention from {cmd.Source} to {cmd.Destination} already exists")


def _config_entry_refs(cmd: ConfigEntryOp, store: Store, added: dict[str, set[str]]) -> None:
    """Consul compiles every discovery chain the write touches against the proposed state: a
    split to a missing subset or a loop is refused now, not discovered by the proxies."""
    if cmd.Kind not in CHAIN_KINDS:
        return
    proposed = dict(store.mesh.entries)
    if cmd.Op == "set":
        proposed[(cmd.Kind, cmd.Name)] = cmd.Entry
    else:
        proposed.pop((cmd.Kind, cmd.Name), None)
    try:
        check_chains(proposed)
    except ChainError as e:
        raise CommandError(str(e)) from None


def _acl_refs(cmd: Any, store: Store, added: dict[str, set[str]]) -> None:
    try:
        store.acl.check(cmd)
        if isinstance(cmd, ACLTokenOp):
            check_token_expiry(cmd, store.acl)
    except BootstrapDoneError as e:
        raise CommandForbiddenError(f"Permission denied: {e}") from None
    except CommandRejectedError as e:
        raise CommandError(str(e)) from None


def _prepared_query_refs(cmd: PreparedQueryOp, store: Store, added: dict[str, set[str]]) -> None:
    if cmd.Op == "set":
        try:
            check_unique(cmd.Query, list(store.prepared_queries.queries.values()))
        except PreparedQueryError as e:
            raise CommandError(str(e)) from None


_REFERENCES: dict[type[Any], Callable[[Any, Store, dict[str, set[str]]], None]] = {
    ACLTokenOp: _acl_refs,
    ACLPolicyOp: _acl_refs,
    ACLRoleOp: _acl_refs,
    ACLAuthMethodOp: _acl_refs,
    ACLBindingRuleOp: _acl_refs,
    PreparedQueryOp: _prepared_query_refs,
    Register: _register_refs,
    CASetRoots: _ca_roots_refs,
    IntentionOp: _intention_refs,
    ConfigEntryOp: _config_entry_refs,
}


def _references(cmd: Command, store: Store, added: dict[str, set[str]]) -> None:
    check = _REFERENCES.get(type(cmd))
    if check is not None:
        check(cmd, store, added)


def admit(
    cmd: Command,
    origin: Origin,
    store: Store,
    limits: validate.Limits | None = None,
    *,
    decoded: bool = False,
) -> Command:
    """Everything a command must pass before it is proposed; returns what to propose."""
    check_origin(cmd, origin)
    cmd = check_command(cmd, limits, decoded=decoded)
    check_references(cmd, store)
    return cmd
