"""Token expiry: Consul's validation of ExpirationTTL / ExpirationTime, the servers' checks
before the log, and the leader's reaping (deterministic apply, servers-only command)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meshd.acl.expiry import ExpiryError, epoch, iso, new_expiration, unchanged
from meshd.acl.model import ACLToken, ACLTokenOp, ACLTokenReap
from meshd.server.acl_expiry import TokenReaper, expired_tokens
from meshd.server.authority import CommandForbiddenError, Origin, admit
from meshd.server.store import CommandError, Store

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ttl", "when", "expected"),
    [
        ("", "", ""),
        ("1m", "", "2026-01-01T12:01:00Z"),
        ("24h", "", "2026-01-02T12:00:00Z"),
        (3_600_000_000_000, "", "2026-01-01T13:00:00Z"),  # a Go client's nanoseconds
        ("", "2026-01-01T13:00:00Z", "2026-01-01T13:00:00Z"),
        ("", "2026-01-01T14:00:00+02:00", "2026-01-01T12:00:00Z"),  # 14:00+02 is noon: past
    ],
)
def test_new_expiration(ttl: Any, when: str, expected: str) -> None:
    if expected == "2026-01-01T12:00:00Z":
        with pytest.raises(ExpiryError, match="cannot be before CreateTime"):
            new_expiration(ttl, when, NOW)
        return
    assert new_expiration(ttl, when, NOW) == expected


@pytest.mark.parametrize(
    ("ttl", "when", "message"),
    [
        ("1h", "2026-01-01T13:00:00Z", "Expiration TTL and Expiration Time cannot both be set"),
        ("59s", "", "ExpirationTime cannot be less than 0:01:00 in the future (was 0:00:59)"),
        ("24h1s", "", "ExpirationTime cannot be more than 1 day, 0:00:00 in the future"),
        ("-1m", "", "Token Expiration TTL '-1m' should be > 0"),
        ("0s", "", "Token Expiration TTL '0s' should be > 0"),
        ("soon", "", "Invalid ExpirationTTL"),
        ("", "2025-12-31T00:00:00Z", "ExpirationTime cannot be before CreateTime"),
        ("", "2026-01-01T12:00:30Z", "ExpirationTime cannot be less than 0:01:00"),
        ("", "2026-01-03T12:00:00Z", "ExpirationTime cannot be more than 1 day"),
        ("", "tomorrow", "Invalid ExpirationTime 'tomorrow'"),
    ],
)
def test_bad_expiry_is_refused_with_consuls_reason(ttl: Any, when: str, message: str) -> None:
    with pytest.raises(ExpiryError) as e:
        new_expiration(ttl, when, NOW)
    assert str(e.value).startswith(message)


def test_configured_bounds_apply() -> None:
    assert new_expiration("2s", "", NOW, min_ttl=1.0) == "2026-01-01T12:00:02Z"
    with pytest.raises(ExpiryError, match="more than 0:10:00"):
        new_expiration("11m", "", NOW, max_ttl=600.0)


def test_an_update_keeps_the_expiry() -> None:
    current = "2026-01-01T13:00:00Z"
    assert unchanged(None, None, current) == current
    assert unchanged(None, "2026-01-01T15:00:00+02:00", current) == current  # same instant
    for ttl, when in (("1h", None), (None, "2026-01-01T14:00:00Z"), (None, "2026-01-01")):
        with pytest.raises(ExpiryError, match="Cannot change expiration time"):
            unchanged(ttl, when, current)
    with pytest.raises(ExpiryError, match="Cannot change expiration time"):
        unchanged(None, current, "")  # a token without expiry does not get one


def test_unreadable_expiry_counts_as_past() -> None:
    assert epoch("") is None
    assert epoch("garbage") == 0.0
    assert epoch(iso(NOW)) == NOW.timestamp()


def _token(expires: str = "") -> ACLToken:
    return ACLToken(
        AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()), ExpirationTime=expires
    )


def _admit_apply(store: Store, cmd: Any, origin: Origin = Origin.AGENT) -> Any:
    cmd = admit(cmd, origin, store)
    result = store.apply(cmd, store.index + 1)
    if isinstance(result, Exception):
        raise result
    return result


def test_servers_refuse_a_token_already_expired_or_an_expiry_change() -> None:
    store = Store()
    past = iso(datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(CommandError, match="ExpirationTime cannot be before CreateTime"):
        _admit_apply(store, ACLTokenOp(Op="set", Token=_token(past)))
    assert store.acl.tokens == {}
    tok = _token(iso(datetime.now(UTC) + timedelta(hours=1)))
    _admit_apply(store, ACLTokenOp(Op="set", Token=tok))
    later = _token(iso(datetime.now(UTC) + timedelta(hours=2)))
    moved = ACLToken(
        AccessorID=tok.AccessorID, SecretID=tok.SecretID, ExpirationTime=later.ExpirationTime
    )
    with pytest.raises(CommandError, match="Cannot change expiration time"):
        _admit_apply(store, ACLTokenOp(Op="set", Token=moved))
    assert store.acl.tokens[tok.AccessorID].ExpirationTime == tok.ExpirationTime


def test_the_leader_reaps_expired_tokens_deterministically() -> None:
    store = Store()
    now = datetime.now(UTC)
    soon = _token(iso(now + timedelta(seconds=10)))
    later = _token(iso(now + timedelta(hours=1)))
    forever = _token()
    for tok in (soon, later, forever):
        _admit_apply(store, ACLTokenOp(Op="set", Token=tok))
    reaper = TokenReaper()
    assert reaper.tick(store.acl, now.timestamp()) == []  # nothing expired yet
    at = now.timestamp() + 60
    assert reaper.tick(store.acl, now.timestamp() + 1) == []  # scanned a moment ago: waits
    cmds = reaper.tick(store.acl, at)
    assert cmds == [ACLTokenReap(AccessorIDs=[soon.AccessorID], Now=at)]
    # apply decides by the command's time, not the applying server's clock: a verdict naming
    # a token that had not expired by `Now` leaves it alone
    early = ACLTokenReap(AccessorIDs=[soon.AccessorID, later.AccessorID], Now=now.timestamp())
    assert _admit_apply(store, early, Origin.SERVER) == 0
    assert _admit_apply(store, cmds[0], Origin.SERVER) == 1
    assert set(store.acl.tokens) == {later.AccessorID, forever.AccessorID}
    assert store.acl.token_by_secret(soon.SecretID) is None
    assert expired_tokens(store.acl, at) == []


def test_agents_may_not_reap_tokens() -> None:
    store = Store()
    tok = _token(iso(datetime.now(UTC) + timedelta(hours=1)))
    _admit_apply(store, ACLTokenOp(Op="set", Token=tok))
    cmd = ACLTokenReap(AccessorIDs=[tok.AccessorID], Now=1e12)
    with pytest.raises(CommandForbiddenError, match="issued only by servers"):
        admit(cmd, Origin.AGENT, store)
    with pytest.raises(CommandError, match="AccessorID must be a UUID"):
        admit(ACLTokenReap(AccessorIDs=["x"], Now=1.0), Origin.SERVER, store)
    assert tok.AccessorID in store.acl.tokens
