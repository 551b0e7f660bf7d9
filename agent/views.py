"""The synchronous views DNS reads: a server's local store, or a client agent's cache.

DNS answers from memory, never with a Raft or RPC round-trip per query. A client agent's view
has an async `prepare` that warms the cache for the name asked before the answer is built.
"""

from __future__ import annotations

from meshd import queries as q
from meshd.agent.cache import CatalogCache
from meshd.server.reads import run_query
from meshd.server.store import Store
from meshd.structs import CheckServiceNode, Node


class StoreView:
    """A server agent's view: the replicated store itself, read under its lock."""

    def __init__(self, store: Store, datacenter: str, node_name: str) -> None:
        self.store = store
        self.datacenter = datacenter
        self.node_name = node_name

    async def prepare(self, qname: str, domains: tuple[str, ...]) -> None:
        return None

    def version(self) -> int:
        """Moves on every applied write: DNS's answer cache is valid while it stands still."""
        return self.store.index

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return run_query(self.store, q.ServiceNodes(Service=name))[1]

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
    """DNS's synchronous view over the cache; `prepare` warms it before a query is answered."""

    def __init__(self, cache: CatalogCache, datacenter: str, node_name: str) -> None:
        self.cache = cache
        self.datacenter = datacenter
        self.node_name = node_name

    def version(self) -> int:
        return self.cache.version

    async def prepare(self, qname: str, domains: tuple[str, ...]) -> None:
        labels = qname.lower().rstrip(".").split(".")
        for dom in domains:
            d = dom.lower().rstrip(".").split(".")
            if labels[-len(d) :] == d:
                labels = labels[: -len(d)]
                break
        else:
            return
        if "service" in labels:
            i = labels.index("service")
            if i >= 1:
                name = labels[0][1:] if labels[0].startswith("_") else labels[i - 1]
                await self.cache.get(q.ServiceNodes(Service=name))
        elif "connect" in labels:
            i = labels.index("connect")
            if i >= 1:
                await self.cache.get(q.ServiceNodes(Service=labels[i - 1], Connect=True))
        await self.cache.get(q.Nodes())

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self.cache.peek(q.ServiceNodes(Service=name)) or []

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return self.cache.peek(q.ServiceNodes(Service=name, Connect=True)) or []

    def node(self, name: str) -> Node | None:
        for n in self.cache.peek(q.Nodes()) or []:
            if n.Node.lower() == name.lower():
                return n
        return None

    def nodes(self) -> list[Node]:
        return list(self.cache.peek(q.Nodes()) or [])

    def server_nodes(self) -> list[Node]:
        return []
