"""The synchronous views DNS reads: a server's local store, or the agent's watch cache.

DNS answers from memory, never with a Raft or RPC round-trip per query. Both views give each
read a stamp that moves only when that read's answer changes, so DNS's answer cache is
invalidated by changes to what an answer was built from, not by every Raft index (a KV write
leaves every DNS answer cached). The cache view may lack data (stamp None): DNS then returns
`NeedData` and its I/O layer calls `load` before answering again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshd import queries as q
from meshd.agent.cache import WatchCache
from meshd.agent.dns import DNSRead
from meshd.agent.dns_cache import AnswerCache
from meshd.server.prepared_queries import TOPIC as QUERIES_TOPIC
from meshd.server.reads import run_query
from meshd.server.store import Store
from meshd.structs import CheckServiceNode, Node

_QUERIES = q.PreparedQueries()
LOAD_TIMEOUT = 5.0  # a DNS client retries after ~1-2 s, and gives up after ~5


class StoreView:
    """A server agent's view: the replicated store itself, read under its lock."""

    def __init__(self, store: Store, datacenter: str, node_name: str) -> None:
        self.store = store
        self.datacenter = datacenter
        self.node_name = node_name
        self.dns_answers = AnswerCache()

    def stamp(self, read: DNSRead) -> int:
        """The store's modify index of the topic the read depends on (server/watch.py topics:
        per service, per connect destination, the node table)."""
        topics = self.store.topics
        if type(read) is q.PreparedQueries:
            return topics.get(QUERIES_TOPIC, 0)
        if type(read) is not q.ServiceNodes:
            return topics.get("tbl:nodes", 0)
        svc = topics.get("svc:" + read.Service, 0)
        if not read.Connect:
            return svc
        # proxies move `connect:NAME`, Connect-native instances only `svc:NAME`; both are
        # Raft indexes, so their max moves whenever either does
        return max(topics.get("connect:" + read.Service, 0), svc)

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return run_query(self.store, q.ServiceNodes(Service=name))[1]

    def prepared_queries(self) -> list[dict[str, Any]]:
        return run_query(self.store, _QUERIES)[1]

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return run_query(self.store, q.ServiceNodes(Service=name, Connect=True))[1]

    def node(self, name: str) -> Node | None:
        return self.store.nodes.get(name)

    def nodes(self) -> list[Node]:
        with self.store.lock:  # the Raft thread may be applying a write right now
            return list(self.store.nodes.values())

    def server_nodes(self) -> list[Node]:
        with self.store.lock:
            return [n for n in self.store.nodes.values() if n.Meta.get("meshd-server") == "true"]


class CacheView:
    """DNS's view over the agent's watch cache: data not held yet is fetched by `load`."""

    def __init__(self, cache: WatchCache, datacenter: str, node_name: str) -> None:
        self.cache = cache
        self.datacenter = datacenter
        self.node_name = node_name
        self.dns_answers = AnswerCache()

    def stamp(self, read: DNSRead) -> int | None:
        return self.cache.stamp(read)

    async def load(self, reads: tuple[DNSRead, ...]) -> bool:
        """Fetch what an answer needs; False when the servers gave no answer in time."""
        got = await asyncio.gather(*(self.cache.fetch(r, LOAD_TIMEOUT) for r in reads))
        return all(g is not None for g in got)

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self.cache.get(q.ServiceNodes(Service=name)) or []

    def prepared_queries(self) -> list[dict[str, Any]]:
        return list(self.cache.get(_QUERIES) or [])

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return self.cache.get(q.ServiceNodes(Service=name, Connect=True)) or []

    def node(self, name: str) -> Node | None:
        for n in self.cache.get(q.Nodes()) or []:
            if n.Node.lower() == name.lower():
                return n
        return None

    def nodes(self) -> list[Node]:
        return list(self.cache.get(q.Nodes()) or [])

    def server_nodes(self) -> list[Node]:
        return []
