"""Go-style duration strings ("10s", "1m30s", "500ms"), as Consul writes them everywhere.

Consul parses every TTL, interval and timeout with Go's `time.ParseDuration`, so users (and
HTTP clients sending `?wait=`) expect exactly that grammar. Bare numbers are taken as seconds:
JSON and HCL files often carry plain numbers and the rest of meshd stores durations as float
seconds, so that is the least surprising reading. Negative durations are refused because no
meshd setting or query parameter has a meaning for them.

This module raises `DurationError`; `meshd.config.parse_duration` re-raises it as
`ConfigError` so callers only ever catch one type.
"""

from __future__ import annotations

import math
import re

__all__ = ["DurationError", "parse_duration_seconds"]


class DurationError(ValueError):
    """The value is not a duration."""


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Longer unit names first so "ms" is not read as "m" followed by garbage.
_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_PART = re.compile(rf"(\d+\.?\d*|\.\d+)({_UNIT_RE})")
_WHOLE = re.compile(rf"\+?(?:(?:\d+\.?\d*|\.\d+)(?:{_UNIT_RE}))+")
_NUMBER = re.compile(r"\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

_HINT = "expected e.g. '10s', '1m30s', '500ms', '72h' or a number of seconds"


def parse_duration_seconds(value: str | float) -> float:
    """Return `value` in seconds; see the module docstring for the accepted forms."""
    if isinstance(value, bool):  # bool is an int subclass; `true` is never a duration
        raise DurationError(f"invalid duration {value!r}: {_HINT}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise DurationError(f"invalid duration {value!r}: must not be negative")
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise DurationError(f"invalid duration {value!r}: {_HINT}")
    else:
        raise DurationError(f"invalid duration {value!r}: {_HINT}")
    if not math.isfinite(seconds):
        raise DurationError(f"invalid duration {value!r}: must be finite")
    if seconds < 0:
        raise DurationError(f"invalid duration {value!r}: must not be negative")
    return seconds
