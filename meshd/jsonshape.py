"""Limits on the shape of decoded JSON, shared by every decoder of untrusted input.

Python's json module takes NaN, integers of any size and nesting up to the interpreter's
recursion limit; Go's decoder (Consul's) refuses the first, msgspec cannot encode integers
beyond 64 bits (a registration carrying one never reaches the servers: anti-entropy fails on
every sync), and deep nesting turns into RecursionError in whatever walks the value next.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JSONShapeError", "check_json_shape"]

# Consul's structures nest a few levels (a config entry with routes, a txn with its ops); Go's
# decoder stops at 10,000. Far below Python's recursion limit.
MAX_JSON_DEPTH = 128
_INT64_MIN, _UINT64_LIMIT = -(2**63), 2**64


class JSONShapeError(ValueError):
    """Decoded JSON too deep or with a number no 64-bit field can hold; the text says which."""


def check_json_shape(data: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise JSONShapeError for nesting deeper than `max_depth` or an integer beyond 64 bits.

    Iterative, so checking a hostile value cannot itself recurse too deeply.
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            if isinstance(value, int) and not _INT64_MIN <= value < _UINT64_LIMIT:
                raise JSONShapeError(f"number {value} overflows 64 bits")
            continue
        if depth > max_depth:
            raise JSONShapeError(f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)
