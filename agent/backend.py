"""The one narrow interface between the agent's API layers and the catalog.

HTTP and DNS never touch the store or Raft directly: they call `CatalogBackend`. Dev mode and
servers use `LocalBackend` (the in-process store behind Raft); a client agent on another host
swaps in a backend that forwards the same commands and queries to remote servers.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, Protocol

from meshd import queries as q
from meshd.structs import CheckServiceNode, Command, Node
from server.raft import RaftNode
from server.reads import run_query
from server.store import Store
from server.watch import Waiter


@dataclass
class ReadResult:
    index: int
    value: Any
    known_leader: bool = True
    last_contact_ms: int = 0


class CatalogBackend(Protocol):
    async def write(self, cmd: Command) -> Any: ...

    async def read(self, query: q.Query, *, min_index: int = 0, wait: float = 0.0,
                   consistency: str = "default") -> ReadResult: ...

    def leader(self) -> str: ...

    def peers(self) -> list[str]: ...


def blocking_wait(wait: float) -> float:
    """Consul adds up to wait/16 of jitter so that many watchers do not wake in lockstep."""
    return wait + random.uniform(0, wait / 16) if wait > 0 else 0.0


class LocalBackend:
    def __init__(self, store: Store, raft: RaftNode) -> None:
        self.store = store
        self.raft = raft

    async def write(self, cmd: Command) -> Any:
        return await self.raft.apply(cmd)

    async def read(self, query: q.Query, *, min_index: int = 0, wait: float = 0.0,
                   consistency: str = "default") -> ReadResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + blocking_wait(wait)
        while True:
            index, value, topics = run_query(self.store, query)
            if min_index <= 0 or index > min_index or wait <= 0:
                return self._result(index, value)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self._result(index, value)
            waiter = Waiter(loop)
            self.store.watches.add(waiter, topics)
            try:
                # re-check after subscribing: a write may have landed in between
                index, value, _ = run_query(self.store, query)
                if index > min_index:
                    return self._result(index, value)
                try:
                    await asyncio.wait_for(waiter.future, remaining)
                except TimeoutError:
                    pass
            finally:
                self.store.watches.remove(waiter, topics)

    def _result(self, index: int, value: Any) -> ReadResult:
        leader = self.raft.leader()
        return ReadResult(index, value, known_leader=bool(leader),
                          last_contact_ms=self.raft.last_contact_ms())

    def leader(self) -> str:
        return self.raft.leader()

    def peers(self) -> list[str]:
        return self.raft.peers()


class StoreView:
    """DNS's synchronous, in-memory view over the local store (no Raft round-trip per query)."""

    def __init__(self, store: Store, datacenter: str, node_name: str,
                 server_names: list[str]) -> None:
        self.store = store
        self.datacenter = datacenter
        self.node_name = node_name
        self._servers = server_names

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return run_query(self.store, q.ServiceNodes(Service=name))[1]

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return run_query(self.store, q.ServiceNodes(Service=name, Connect=True))[1]

    def node(self, name: str) -> Node | None:
        return self.store.nodes.get(name)

    def nodes(self) -> list[Node]:
        return list(self.store.nodes.values())

    def server_nodes(self) -> list[Node]:
        return [n for n in (self.store.nodes.get(s) for s in self._servers) if n is not None]
