"""The answer cache: encoded answers per question, valid until a read they came from moves.

Building an answer (view lookups, health filtering, record encoding) is most of a query's
cost, yet the catalog changes far less often than it is asked. A view that stamps its reads
gets its encoded answers cached per question, each with the stamps of the reads it was built
from; a hit checks those stamps and only reshuffles and reassembles. Only with
a_record_limit = 0: a limit picks a random subset, which a cached list would freeze.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshd.agent.dns_types import DNSRead
from meshd.agent.dns_wire import Labels

if TYPE_CHECKING:
    from meshd.agent.dns_query import Query

_CACHE_MAX = 8192
Deps = tuple[tuple[DNSRead, int], ...]
Stamp = Callable[[DNSRead], int | None]  # a view's `stamp` method


class AnswerCache:
    """A view's encoded answers per question; `hits`/`misses` are exported as metrics."""

    __slots__ = ("entries", "hits", "misses")

    def __init__(self) -> None:
        self.entries: dict[tuple[Labels, int], tuple[Any, ...]] = {}
        self.hits = 0
        self.misses = 0

    def restore(self, query: Query, stamp: Stamp) -> bool:
        """Fill `query` from a still-valid cached answer; False on a miss."""
        hit = self.entries.get((query.qlabels, query.qtype))
        if hit is not None:
            for read, seen in hit[0]:
                if stamp(read) != seen:
                    break
            else:
                _, query.aa, query.zone, query.rcode, answers, query.authority = hit
                query.answers = random.sample(answers, len(answers))
                self.hits += 1
                return True
        self.misses += 1
        return False

    def store(self, query: Query) -> None:
        entries = self.entries
        if len(entries) >= _CACHE_MAX:
            entries.clear()
        entries[(query.qlabels, query.qtype)] = (
            query.deps,
            query.aa,
            query.zone,
            query.rcode,
            list(query.answers),
            list(query.authority),
        )
