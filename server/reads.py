"""Answering `meshd.queries` reads from the store.

Each answer names the topics it depends on, so a blocking query sleeps on exactly those and its
X-Consul-Index is the highest modify index among them (Consul's semantics, per-service not
per-table).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from meshd import queries as q
from meshd.server import acl_state, sessions
from meshd.server.ca import public_view
from meshd.server.connect_ca import DEFAULT_CA_CONFIG
from meshd.server.coordinates import read_autopilot, read_coordinates
from meshd.server.prepared_queries import read_prepared_queries
from meshd.server.store import Store
from meshd.server.tombstones import REAPED_TOPIC
from meshd.server.txn import read_txn
from meshd.server.watch import Waiter
from meshd.spiffe import trust_domain
from meshd.structs import (
    HEALTH_PASSING,
    CheckServiceNode,
    HealthCheck,
    KVEntry,
    Node,
    NodeService,
)


def _index(store: Store, topics: list[str], fallback: str) -> int:
    idx = max((store.topics.get(t, 0) for t in topics), default=0)
    return max(idx or store.topics.get(fallback, 0), 1)


def _instances(store: Store, keys: set[tuple[str, str]]) -> list[CheckServiceNode]:
    out = []
    for node_name, sid in sorted(keys):
        node = store.nodes.get(node_name)
        svc = store.services.get(node_name, {}).get(sid)
        if node is None or svc is None:
            continue
        checks = [
            c
            for c in store.checks.get(node_name, {}).values()
            if not c.ServiceID or c.ServiceID == sid
        ]
        out.append(CheckServiceNode(Node=node, Service=svc, Checks=checks))
    return out


Answer = tuple[int, Any, list[str]]  # (index, value, topics it depends on)


def run_query(store: Store, query: q.Query) -> Answer:
    """Execute a read under the store lock; returns (index, value, topics)."""
    handler = _QUERIES.get(type(query))
    if handler is None:
        raise TypeError(f"unknown query {type(query).__name__}")
    with store.lock:
        return handler(store, query)


def _service_nodes(store: Store, query: q.ServiceNodes) -> Answer:
    if query.Connect:
        topics = [f"connect:{query.Service}"]
        keys = set(store.by_dest.get(query.Service, ()))
        keys |= {
            k
            for k in store.by_name.get(query.Service, ())
            if (store.services[k[0]][k[1]].Connect or {}).get("Native")
        }
    else:
        topics = [f"svc:{query.Service}"]
        keys = store.by_name.get(query.Service, set())
    return _index(store, topics, "tbl:services"), _instances(store, keys), topics


def _services(store: Store, query: q.Services) -> Answer:
    value = store.service_names()  # from the tag index, not a scan of every instance
    return _index(store, ["tbl:services"], "tbl:services"), value, ["tbl:services"]


def _nodes(store: Store, query: q.Nodes) -> Answer:
    nodes: list[Node] = sorted(store.nodes.values(), key=lambda n: n.Node)
    return _index(store, ["tbl:nodes"], "tbl:nodes"), nodes, ["tbl:nodes"]


def _node_info(store: Store, query: q.NodeInfo) -> Answer:
    topics = [f"node:{query.Node}"]
    node = store.nodes.get(query.Node)
    value: tuple[Node, list[NodeService], list[HealthCheck]] | None = None
    if node is not None:
        svcs = sorted(store.services.get(query.Node, {}).values(), key=lambda s: s.ID)
        checks = sorted(store.checks.get(query.Node, {}).values(), key=lambda c: c.CheckID)
        value = (node, svcs, checks)
    return _index(store, topics, "tbl:nodes"), value, topics


def _service_checks(store: Store, query: q.ServiceChecks) -> Answer:
    topics = [f"svc:{query.Service}"]
    out = [
        c
        for node, sid in sorted(store.by_name.get(query.Service, ()))
        for c in store.checks.get(node, {}).values()
        if c.ServiceID == sid
    ]
    return _index(store, topics, "tbl:checks"), out, topics


def _checks_in_state(store: Store, query: q.ChecksInState) -> Answer:
    if query.State in ("any", HEALTH_PASSING):  # (nearly) every check: a scan is the answer
        out = [
            c
            for m in store.checks.values()
            for c in m.values()
            if query.State == "any" or c.Status == query.State
        ]
    else:  # the few that are not passing, from their index
        out = [
            store.checks[node][cid]
            for node, bad in store.not_passing.items()
            for cid, status in bad.items()
            if status == query.State
        ]
    out.sort(key=lambda c: (c.Node, c.CheckID))
    return _index(store, ["tbl:checks"], "tbl:checks"), out, ["tbl:checks"]


def _kv_index(store: Store, keys: list[str]) -> int:
    idx = max((store.topics.get(f"kv:{k}", 0) for k in keys), default=0)
    reaped = store.topics.get(REAPED_TOPIC, 0)  # a reaped tombstone's index lives on here
    return max(idx or store.topics.get("tbl:kv", 0), reaped, 1)


def _kv_get(store: Store, query: q.KVGet) -> Answer:
    if not query.Recurse:
        topics = [f"kv:{query.Key}"]
        e = store.kv.get(query.Key)
        return _index(store, topics, "tbl:kv"), [e] if e else [], topics
    keys = store.kv_range(query.Key)
    entries: list[KVEntry] = [store.kv[k] for k in keys if k in store.kv]
    return _kv_index(store, keys), entries, [f"kv:{query.Key}*"]


def _kv_keys(store: Store, query: q.KVKeys) -> Answer:
    keys = store.kv_range(query.Prefix)
    live = [k for k in keys if k in store.kv]
    if query.Separator:
        seen: dict[str, None] = {}
        for k in live:
            rest = k[len(query.Prefix) :]
            cut = rest.find(query.Separator)
            seen[k if cut < 0 else query.Prefix + rest[: cut + len(query.Separator)]] = None
        live = list(seen)
    return _kv_index(store, keys), live, [f"kv:{query.Prefix}*"]


def _config_entries(store: Store, query: q.ConfigEntries) -> Answer:
    rows: list[dict[str, Any]]
    if query.Name:
        topics = [f"config:{query.Kind}:{query.Name}"]
        e = store.mesh.entries.get((query.Kind, query.Name))
        rows = [e] if e else []
    else:
        topics = [f"config:{query.Kind}"] if query.Kind else ["tbl:config"]
        rows = [
            e
            for (k, _), e in sorted(store.mesh.entries.items())
            if not query.Kind or k == query.Kind
        ]
    return _index(store, topics, "tbl:config"), rows, topics


def _ca_roots(store: Store, query: q.CARoots) -> Answer:
    m = store.mesh
    active = m.active_root()
    value = {
        "TrustDomain": trust_domain(m.cluster_id) if m.cluster_id else "",
        "ActiveRootID": active.ID if active else "",
        "Roots": [public_view(r) for r in m.roots],
        # the effective configuration: the defaults until the leader has written the first
        # root (a read right after start must not show an empty config)
        "Config": {**DEFAULT_CA_CONFIG, **m.ca_config},
    }
    return max(store.topics.get("ca", 0), 1), value, ["ca"]


def _txn_read(store: Store, query: q.TxnRead) -> Answer:
    return max(store.index, 1), read_txn(store, query.Ops), []


def _events(store: Store, query: q.Events) -> Answer:
    return max(store.topics.get("events", 0), 1), store.events.after(query.After), ["events"]


# one handler per query type (the read side of the store's command table)
_QUERIES: dict[type[Any], Callable[[Store, Any], Answer]] = {
    q.ServiceNodes: _service_nodes,
    q.Services: _services,
    q.Nodes: _nodes,
    q.NodeInfo: _node_info,
    q.ServiceChecks: _service_checks,
    q.ChecksInState: _checks_in_state,
    q.KVGet: _kv_get,
    q.KVKeys: _kv_keys,
    q.ConfigEntries: _config_entries,
    q.CARoots: _ca_roots,
    q.TxnRead: _txn_read,
    q.Events: _events,
    q.Sessions: sessions.read_sessions,
    **acl_state.read_handlers(lambda store: store.acl),
    q.AutopilotConfig: read_autopilot,
    q.Coordinates: read_coordinates,
    q.PreparedQueries: read_prepared_queries,
}


async def blocking_query(
    store: Store, query: q.Query, min_index: int, deadline: float
) -> tuple[int, Any]:
    """Consul's blocking query: answer once the index passes `min_index`, the deadline hits or
    the server stops (as Consul's servers answer on shutdown; the agent retries elsewhere).

    The waiter subscribes before the re-check so that a write landing between the first read and
    the subscription cannot be missed.
    """
    loop = asyncio.get_running_loop()
    while True:
        index, value, topics = run_query(store, query)
        remaining = deadline - loop.time()
        if min_index <= 0 or index > min_index or remaining <= 0 or store.watches.closed:
            return index, value
        waiter = Waiter(loop)
        store.watches.add(waiter, topics)
        try:
            index, value, _ = run_query(store, query)
            if index > min_index:
                return index, value
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.future, remaining)
        finally:
            store.watches.remove(waiter, topics)
