"""Regular expressions from untrusted input, compiled with RE2 as Consul's Go `regexp` is.

Python's `re` backtracks: `(a+)+$` against forty characters runs for minutes on the event loop.
RE2 (PyPI `google-re2`) matches in time linear in the text and refuses what Go refuses
(backreferences, lookaround), so a pattern that works against Consul works here and nothing a
client sends can stall the loop. Two gaps between RE2's C++ parser and Go's are closed here:
Go refuses a repeat count above 1000 (`a{4294967296}` is "invalid repeat count"), while RE2 reads
a count it cannot parse as literal text; and the compiled program's memory is capped so one
pattern cannot make the agent allocate much.
"""

from __future__ import annotations

from typing import Protocol

import re2

__all__ = ["MAX_PATTERN_BYTES", "MAX_REPEAT", "Pattern", "RegexError", "compile_re2"]

MAX_REPEAT = 1000  # Go's regexp/syntax limit on {n,m}
MAX_PATTERN_BYTES = 4096
_MAX_PROGRAM_MEMORY = 1 << 20  # RE2's default is 8 MiB; a filter regex needs far less

_OPTIONS = re2.Options()
_OPTIONS.max_mem = _MAX_PROGRAM_MEMORY
_OPTIONS.log_errors = False  # the reason reaches the user as a 400; no stderr line per request


class Pattern(Protocol):
    """The part of a compiled pattern callers use (RE2's object has no type information)."""

    def search(self, text: str) -> object | None: ...


class RegexError(ValueError):
    """A pattern the user must fix; the message says why and is safe to return verbatim."""


def _repeat_at(pattern: str, i: int) -> tuple[int, list[int]] | None:
    """The `{n}`, `{n,}` or `{n,m}` starting at i: where it ends and its counts, else None."""
    j = pattern.find("}", i)
    if j < 0:
        return None
    body = pattern[i + 1 : j]
    parts = body.split(",")
    if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or not parts[0].isascii():
        return None
    if len(parts) == 2 and parts[1] and not (parts[1].isdigit() and parts[1].isascii()):
        return None
    return j + 1, [int(p) for p in parts if p]


def _check_repeats(pattern: str) -> None:
    """Go's limit on repeat counts, which RE2's parser lets through for very large numbers."""
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            i += 1
            # a `]` first in the class (after an optional `^`) is a literal, not the end
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1
            continue
        elif ch == "{" and (found := _repeat_at(pattern, i)) is not None:
            end, counts = found
            if any(n > MAX_REPEAT for n in counts):
                raise RegexError(
                    f"invalid repeat count {pattern[i:end]!r}: at most {MAX_REPEAT} repetitions"
                )
            i = end
            continue
        i += 1


def compile_re2(pattern: str) -> Pattern:
    """Compile with RE2 semantics and bounded cost, or raise RegexError with the reason."""
    size = len(pattern.encode("utf-8", "surrogatepass"))
    if size > MAX_PATTERN_BYTES:
        raise RegexError(f"regular expression is {size} bytes; the limit is {MAX_PATTERN_BYTES}")
    _check_repeats(pattern)
    try:
        compiled: Pattern = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"invalid regular expression {pattern!r}: {reason}") from None
    except (TypeError, ValueError, UnicodeError) as exc:  # e.g. lone surrogates
        raise RegexError(f"invalid regular expression {pattern!r}: {exc}") from None
    return compiled
