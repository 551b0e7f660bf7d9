"""The catalog's derived rows and indexes, kept in step with the service and check tables.

Every write path of the store (register, deregister, transactions, snapshot loads) goes through
these to move the per-topic indexes and the secondary indexes (service name, connect
destination, tag counts, checks not passing); kept apart from the command handlers
(server/store.py) so the store's module holds the writes themselves. `Store` inherits them.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import msgspec

from meshd.server import snapshot
from meshd.structs import HEALTH_PASSING, HealthCheck, NodeService, Weights

replace = msgspec.structs.replace

# Rows are never changed in place (every change is a `replace`), so they may share one list:
# a check's ServiceTags is its service's Tags, and every untagged service shares this one. At
# 200k instances that is 400k fewer lists for the memory and for every full GC pass to walk.
# Likewise the strings repeated across rows (node and service names, check names and states)
# are interned: one object each instead of one per row.
_NO_TAGS: list[str] = []
_NO_MAP: dict[str, Any] = {}  # the empty Meta, TaggedAddresses and Definition of every row
_WEIGHTS = Weights()  # the default weights, shared by every row that has them


def shared_service(svc: NodeService) -> NodeService:
    """The row to store: its repeated parts shared with other rows (see _NO_TAGS)."""
    return replace(
        svc,
        Datacenter="",
        Service=sys.intern(svc.Service),
        Tags=svc.Tags or _NO_TAGS,
        Meta=svc.Meta or _NO_MAP,
        TaggedAddresses=svc.TaggedAddresses or _NO_MAP,
        Weights=_WEIGHTS if svc.Weights == _WEIGHTS else svc.Weights,
    )


def shared_check(c: HealthCheck, node: str, svc: NodeService | None) -> HealthCheck:
    """The row to store, carrying its service's name and tags (the same objects)."""
    return replace(
        c,
        Node=node,
        Name=sys.intern(c.Name),
        Status=sys.intern(c.Status),
        ServiceID=svc.ID if svc else c.ServiceID,
        Definition=c.Definition or _NO_MAP,
        ServiceName=svc.Service if svc else "",
        ServiceTags=svc.Tags if svc else _NO_TAGS,
    )


def _same(a: msgspec.Struct, b: msgspec.Struct) -> bool:
    return replace(a, CreateIndex=0, ModifyIndex=0) == replace(b, CreateIndex=0, ModifyIndex=0)


def connect_destination(svc: NodeService) -> str:
    if svc.Kind == "connect-proxy" and svc.Proxy:
        return str(svc.Proxy.get("DestinationServiceName", ""))
    return ""


class CatalogRows:
    """Row and index helpers of the catalog (mixed into `Store`, which sets these tables)."""

    services: dict[str, dict[str, NodeService]]
    checks: dict[str, dict[str, HealthCheck]]
    by_name: dict[str, set[tuple[str, str]]]
    by_dest: dict[str, set[tuple[str, str]]]
    service_tags: dict[str, Counter[str]]
    not_passing: dict[str, dict[str, str]]
    _gen: int

    def _touch_service(self, node: str, svc: NodeService, changed: set[str]) -> None:
        changed.update((f"svc:{svc.Service}", f"node:{node}", "tbl:services"))
        dest = connect_destination(svc)
        if dest:
            changed.add(f"connect:{dest}")

    def _touch_node_services(self, node: str, changed: set[str]) -> None:
        for svc in self.services.get(node, {}).values():
            self._touch_service(node, svc, changed)

    def _index_service(self, node: str, svc: NodeService) -> None:
        self.by_name[svc.Service].add((node, svc.ID))
        self.service_tags.setdefault(svc.Service, Counter()).update(svc.Tags)
        dest = connect_destination(svc)
        if dest:
            self.by_dest[dest].add((node, svc.ID))

    def _unindex_service(self, node: str, svc: NodeService) -> None:
        s = self.by_name.get(svc.Service)
        if s is not None and (node, svc.ID) in s:
            s.discard((node, svc.ID))
            tags = self.service_tags[svc.Service]
            tags.subtract(svc.Tags)
            for t in svc.Tags:
                if tags.get(t, 0) <= 0:
                    tags.pop(t, None)
            if not s:
                del self.by_name[svc.Service], self.service_tags[svc.Service]
        dest = connect_destination(svc)
        if dest and dest in self.by_dest:
            self.by_dest[dest].discard((node, svc.ID))
            if not self.by_dest[dest]:
                del self.by_dest[dest]

    def _touch_check(self, node: str, c: HealthCheck, changed: set[str]) -> None:
        changed.update(("tbl:checks", f"node:{node}"))
        if c.ServiceID:
            svc = self.services.get(node, {}).get(c.ServiceID)
            if svc:
                self._touch_service(node, svc, changed)
        else:
            self._touch_node_services(node, changed)

    def _index_checks(self, node: str) -> None:
        bad = {
            cid: c.Status
            for cid, c in self.checks.get(node, {}).items()
            if c.Status != HEALTH_PASSING
        }
        if bad:
            self.not_passing[node] = bad
        else:
            self.not_passing.pop(node, None)

    def _rows(self, table: dict[str, dict[str, Any]], node: str) -> dict[str, Any]:
        """A node's rows, ready to change: copied first if a snapshot view may share them."""
        return snapshot.writable_rows(table, node, self._gen)
