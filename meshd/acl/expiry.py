"""Token expiry: Consul's rules for ExpirationTTL / ExpirationTime, and the time they name.

A token's expiry is fixed when it is created (the TTL becomes an absolute ExpirationTime, and
the TTL is not kept, as Consul) and can never change afterwards. The time must fall between
the minimum and maximum TTL from now (1 minute and 24 hours by default, Consul's defaults).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from meshd.durations import DurationError, parse_duration_seconds

MIN_TTL = 60.0
MAX_TTL = 24 * 3600.0


class ExpiryError(ValueError):
    """A token expiry Consul would refuse (400 with this text)."""


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (Consul's JSON times); a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ExpiryError(f"Invalid ExpirationTime {text!r}: not an RFC 3339 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def epoch(expiration_time: str) -> float | None:
    """The expiry as epoch seconds (None: never); an unreadable one is already past, so that
    a bad value can never make a token live forever."""
    if not expiration_time:
        return None
    try:
        return parse_time(expiration_time).timestamp()
    except ExpiryError:
        return 0.0


def _ttl_seconds(ttl: Any) -> float:
    if isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        return float(ttl) / 1e9  # Consul's API clients send a Go duration in nanoseconds
    text = str(ttl).strip()
    if text.startswith("-"):
        raise ExpiryError(f"Token Expiration TTL '{text}' should be > 0")
    try:
        return parse_duration_seconds(text)
    except DurationError as e:
        raise ExpiryError(f"Invalid ExpirationTTL: {e}") from None


def _fmt(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def new_expiration(
    ttl: Any,
    when: Any,
    now: datetime,
    min_ttl: float = MIN_TTL,
    max_ttl: float = MAX_TTL,
) -> str:
    """The ExpirationTime of a token created at `now` ("" = it never expires)."""
    if ttl and when:
        raise ExpiryError("Expiration TTL and Expiration Time cannot both be set")
    if ttl:
        seconds = _ttl_seconds(ttl)
        if seconds <= 0:
            raise ExpiryError(f"Token Expiration TTL '{ttl}' should be > 0")
        expires = now + timedelta(seconds=seconds)
    elif when:
        expires = parse_time(str(when))
        if expires <= now:
            raise ExpiryError("ExpirationTime cannot be before CreateTime")
    else:
        return ""
    left = (expires - now).total_seconds()
    if left < min_ttl:
        raise ExpiryError(
            f"ExpirationTime cannot be less than {_fmt(min_ttl)} in the future (was {_fmt(left)})"
        )
    if left > max_ttl:
        raise ExpiryError(
            f"ExpirationTime cannot be more than {_fmt(max_ttl)} in the future (was {_fmt(left)})"
        )
    return iso(expires)


def unchanged(ttl: Any, when: Any, current: str) -> str:
    """An update keeps the expiry: a TTL, or a different time, is refused (Consul's rule)."""
    if ttl:
        raise ExpiryError("Cannot change expiration time")
    if when and epoch(str(when)) != epoch(current):
        raise ExpiryError("Cannot change expiration time")
    return current
