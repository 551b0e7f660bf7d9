"""The RPC auth header's nonce: what the servers' replay ledger refuses and when it forgets."""

from __future__ import annotations

import os

import pytest

from meshd.rpc import MAX_SKEW, ReplayError, ReplayGuard, sign, verify

KEY = os.urandom(32)


def test_a_nonce_is_accepted_once_within_the_skew_window() -> None:
    guard = ReplayGuard()
    header = sign(KEY, "/rpc/write", b"body", now=1000.0)
    guard.first_use(header, now=1000.0)
    with pytest.raises(ReplayError, match="replay") as err:
        guard.first_use(header, now=1000.0 + MAX_SKEW - 1)
    assert err.value.status == 403
    guard.first_use(sign(KEY, "/rpc/write", b"body", now=1000.0), now=1001.0)  # fresh nonce
    guard.first_use(header, now=1000.0 + MAX_SKEW + 1)  # forgotten once `verify` refuses it


def test_a_full_ledger_refuses_instead_of_forgetting_live_nonces() -> None:
    guard = ReplayGuard(cap=2)
    for _ in range(2):
        guard.first_use(sign(KEY, "/rpc/read", b"", now=1000.0), now=1000.0)
    with pytest.raises(ReplayError) as err:
        guard.first_use(sign(KEY, "/rpc/read", b"", now=1000.0), now=1000.0)
    assert err.value.status == 503


def test_the_nonce_is_covered_by_the_mac() -> None:
    header = sign(KEY, "/rpc/write", b"body")
    assert verify(KEY, "/rpc/write", b"body", header)
    ts, nonce, mac = header.split(":")
    assert not verify(KEY, "/rpc/write", b"body", f"{ts}:{'f' * len(nonce)}:{mac}")
    assert not verify(KEY, "/rpc/write", b"body", f"{ts}:{mac}")  # the old format, no nonce
