"""Expired tokens: refused before the log when their expiry is wrong, and reaped by the leader.

Token checks use the expiry directly (an expired token stops working at once, reaped or not);
reaping only keeps the state from growing. The leader proposes `ACLTokenReap` with its clock's
time, and apply drops the listed tokens whose expiry is at or before that time: deterministic
on every server.
"""

from __future__ import annotations

import time

from meshd.acl.expiry import epoch
from meshd.acl.model import ACLTokenOp, ACLTokenReap
from meshd.server.acl_state import ACLState
from meshd.server.mesh_state import CommandRejectedError

REAP_EVERY = 5.0  # seconds between the leader's scans
MAX_PER_REAP = 256  # tokens per command: one Raft entry stays small


def check_token_expiry(cmd: ACLTokenOp, state: ACLState, now: float | None = None) -> None:
    """A new token's expiry is not in the past; an existing token's never changes (Consul)."""
    if cmd.Op != "set" or cmd.Token is None:
        return
    old = state.tokens.get(cmd.Token.AccessorID)
    if old is not None:
        if epoch(old.ExpirationTime) != epoch(cmd.Token.ExpirationTime):
            raise CommandRejectedError("Cannot change expiration time")
        return
    expires = epoch(cmd.Token.ExpirationTime)
    if expires is not None and expires <= (time.time() if now is None else now):
        raise CommandRejectedError("ExpirationTime cannot be before CreateTime")


def expired_tokens(state: ACLState, now: float) -> list[str]:
    out = []
    for token in state.tokens.values():
        expires = epoch(token.ExpirationTime)
        if expires is not None and expires <= now:
            out.append(token.AccessorID)
    return out


class TokenReaper:
    """The leader's scan: at most one scan every REAP_EVERY seconds."""

    def __init__(self) -> None:
        self._next = 0.0

    def tick(self, state: ACLState, now: float) -> list[ACLTokenReap]:
        if now < self._next:
            return []
        self._next = now + REAP_EVERY
        gone = expired_tokens(state, now)
        return [
            ACLTokenReap(AccessorIDs=gone[i : i + MAX_PER_REAP], Now=now)
            for i in range(0, len(gone), MAX_PER_REAP)
        ]
