"""The rules a command must pass before it may enter the replicated state.

Pure functions over the command structs, no I/O and no state. An agent runs them to refuse bad
input early, before it changes its local state; the servers run the very same code, and are the
authority, before anything is proposed to Raft: a committed entry that cannot be applied would
be replayed on every server forever. Limits follow Consul's where Consul has one, so data moves
between the two unchanged. Rules that need the state (a check's service exists on its node) and
the config-entry schema live on the server side (`meshd.server.authority`), which calls these.

This module holds the rule table; the rules live in `validate_fields` (the shared field rules),
`validate_catalog`, `validate_session` and `validate_mesh`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from meshd.acl.auth_checks import RULES as ACL_AUTH_RULES
from meshd.acl.checks import RULES as ACL_RULES
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
    decode_command,
    encode_command,
)
from meshd.validate_catalog import (
    deregister,
    kv,
    kv_reap,
    node_status,
    node_status_batch,
    register,
)
from meshd.validate_fields import MAX_TEXT, Limits, ValidationError, name
from meshd.validate_mesh import (
    autopilot_config,
    ca_roots,
    config_entry,
    coordinates,
    intention,
    keyring,
    prepared_query,
    restore,
)
from meshd.validate_session import event_fire, session_invalidate, session_op, txn

__all__ = [  # the rule table, and the names imported from many places (defined in validate_fields)
    "MAX_BATCH",
    "MAX_TEXT",
    "RULES",
    "Limits",
    "ValidationError",
    "name",
    "typed",
    "validate",
]


MAX_BATCH = 4096  # commands in one Batch (anti-entropy of one node)


def typed(cmd: Command) -> Command:
    """The command as a server would decode it from the log: every field of its declared type.

    A struct built in-process is not type-checked (a NodeMeta value may be an int); a round trip
    through the log encoding checks all of it, once, before the entry exists.
    """
    try:
        return decode_command(encode_command(cmd))
    except (msgspec.MsgspecError, TypeError, ValueError, OverflowError) as e:
        raise ValidationError(f"invalid {type(cmd).__name__}: {e}") from None


def batch(b: Batch, limits: Limits) -> None:
    if len(b.Ops) > MAX_BATCH:
        raise ValidationError(f"a batch holds at most {MAX_BATCH} commands, got {len(b.Ops)}")
    for i, op in enumerate(b.Ops):
        try:
            validate(op, limits)
        except ValidationError as e:
            raise ValidationError(f"Ops[{i}]: {e}") from None


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
    NodeStatusBatch: node_status_batch,
    CASetRoots: ca_roots,
    EventFire: event_fire,
    Txn: txn,
    SessionOp: session_op,
    SessionInvalidate: session_invalidate,
    **ACL_RULES,  # tokens, policies, roles: meshd/acl/checks.py
    **ACL_AUTH_RULES,  # auth methods, binding rules, login: meshd/acl/auth_checks.py
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
