"""A linearizability checker for one read/write register (Wing & Gong search, with memoization).

Each operation has a real-time window [start, end]; an operation that never got an answer (the
client timed out) may have taken effect at any time after its start, or never, so it is given an
open end and is allowed to be left out. The search tries, at each step, every pending operation
that is minimal (no other remaining op ended before it started) and whose effect is consistent
with the register's current value.
"""

from __future__ import annotations

from dataclasses import dataclass

INF = float("inf")


@dataclass(frozen=True)
class Op:
    kind: str  # "w" write or "r" read
    value: str | None  # written value, or the value read (None: key absent)
    start: float
    end: float  # INF when the outcome is unknown
    ok: bool = True  # False: unknown outcome (may or may not have happened)


def check(history: list[Op], initial: str | None = None) -> bool:
    ops = [o for o in history if o.ok or o.kind == "w"]  # failed reads tell nothing
    ops.sort(key=lambda o: o.start)
    n = len(ops)
    seen: set[tuple[int, str | None]] = set()

    def search(done: int, value: str | None) -> bool:
        if all(done >> i & 1 or not ops[i].ok for i in range(n)):
            return True
        key = (done, value)
        if key in seen:
            return False
        seen.add(key)
        pending = [i for i in range(n) if not done >> i & 1]
        horizon = (
            min(ops[i].end for i in pending if ops[i].ok)
            if any(ops[i].ok for i in pending)
            else INF
        )
        for i in pending:
            o = ops[i]
            if o.start > horizon:
                continue  # some op that ended earlier must be linearized first
            if o.kind == "w":
                if search(done | 1 << i, o.value):
                    return True
            elif o.value == value and search(done | 1 << i, value):
                return True
        return False

    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10 * n + 100))
    try:
        return search(0, initial)
    finally:
        sys.setrecursionlimit(old)
