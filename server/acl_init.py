"""What the leader creates when it takes office with ACLs on (Consul's `initializeACLs`).

The `global-management` policy; the token of `acl.tokens.initial_management`, which consumes
the one-time bootstrap when it has not been used (so `PUT /v1/acl/bootstrap` then answers 403,
as Consul); and the anonymous token (AccessorID ...0002, SecretID `anonymous`), whose policies
are what a request without a token may do. Each is written only when missing, so a new leader
or a restart changes nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from meshd.acl.expiry import iso
from meshd.acl.model import (
    ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET,
    MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME,
    ACLLink,
    ACLPolicy,
    ACLPolicyOp,
    ACLToken,
    ACLTokenOp,
)
from meshd.server.store import CommandError
from meshd.structs import Command

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.acl")


def missing_objects(server: Server) -> list[Command]:
    """The commands that create what is missing (none when ACLs are off)."""
    cfg = server.s.acl
    if not cfg.enabled:
        return []
    now = iso(datetime.now(UTC))
    state = server.store.acl
    ops: list[Command] = []
    if MANAGEMENT_POLICY_ID not in state.policies:
        policy = ACLPolicy(
            ID=MANAGEMENT_POLICY_ID,
            Name=MANAGEMENT_POLICY_NAME,
            Description="Builtin Policy that grants unlimited access",
        )
        ops.append(ACLPolicyOp(Op="set", Policy=policy))
    initial = cfg.tokens.initial_management
    if initial and state.token_by_secret(initial) is None:
        token = ACLToken(
            AccessorID=str(uuid.uuid4()),
            SecretID=initial,
            Description="Initial Management Token",
            Policies=[ACLLink(ID=MANAGEMENT_POLICY_ID)],
            CreateTime=now,
        )
        ops.append(ACLTokenOp(Op="set" if state.bootstrap_index else "bootstrap", Token=token))
    if ANONYMOUS_ACCESSOR not in state.tokens:
        anonymous = ACLToken(
            AccessorID=ANONYMOUS_ACCESSOR,
            SecretID=ANONYMOUS_SECRET,
            Description="Anonymous Token",
            CreateTime=now,
        )
        ops.append(ACLTokenOp(Op="set", Token=anonymous))
    return ops


async def initialize(server: Server) -> None:
    """A refused object is logged and skipped: the leader's loop must go on (a configured
    initial_management that is not a UUID still works from the configuration, unstored)."""
    for op in missing_objects(server):
        what = "token" if isinstance(op, ACLTokenOp) else "policy"
        try:
            await server.write(op)
        except CommandError as e:
            log.warning("cannot create the ACL %s %r: %s", what, _label(op), e)
            continue
        log.info("created the ACL %s %r", what, _label(op))


def _label(op: Command) -> str:
    if isinstance(op, ACLTokenOp) and op.Token is not None:
        return op.Token.Description  # never the secret
    return MANAGEMENT_POLICY_NAME
