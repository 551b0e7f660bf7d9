"""Prepared query definitions in the replicated state (Consul's prepared-query table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshd.prepared_query import PreparedQueryError, check_unique
from meshd.server.mesh_state import CommandRejectedError
from meshd.structs import PreparedQueryOp

if TYPE_CHECKING:
    from meshd.server.store import Store

TOPIC = "tbl:queries"


class PreparedQueryState:
    def __init__(self) -> None:
        self.queries: dict[str, dict[str, Any]] = {}

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {PreparedQueryOp: self.apply}

    def apply(self, op: PreparedQueryOp, index: int, changed: set[str]) -> bool:
        if op.Op == "delete":
            if self.queries.pop(op.ID, None) is not None:
                changed.add(TOPIC)
            return True
        try:  # re-checked here: another write may have taken the name since admission
            check_unique(op.Query, list(self.queries.values()))
        except PreparedQueryError as e:
            raise CommandRejectedError(str(e)) from None
        old = self.queries.get(op.ID)
        self.queries[op.ID] = {
            **op.Query,
            "ID": op.ID,
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        changed.add(TOPIC)
        return True

    def dump(self) -> list[dict[str, Any]]:
        return list(self.queries.values())

    def load(self, data: list[dict[str, Any]]) -> None:
        self.queries = {q["ID"]: dict(q) for q in data}


def read_prepared_queries(store: Store, query: Any) -> tuple[int, Any, list[str]]:
    table = store.prepared_queries.queries
    if query.ID:
        rows = [table[query.ID]] if query.ID in table else []
    else:
        rows = sorted(table.values(), key=lambda q: q["ID"])
    return max(store.topics.get(TOPIC, 0), 1), rows, [TOPIC]
