"""Service sync loops (the translations are in meshd.k8s.sync); run on the Raft leader only.

Each direction is level-triggered: any change marks it dirty and one loop recomputes the whole
desired state and writes the difference. Lost events, restarts and a new leader therefore all
converge the same way, and a failed write is simply retried on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api, DiscoveryV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from meshd import queries as q
from meshd.agent.k8s_watch import Backoff, Obj, Reflector
from meshd.k8s import sync as ks
from meshd.k8s.settings import SyncCatalog
from meshd.structs import Deregister, NodeService, Register

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

log = logging.getLogger("meshd.k8s")
SYNC_NODE_META = {"external-source": "kubernetes"}


class _Dirty:
    """A reflector handler that only says "something changed" to the loops that care."""

    def __init__(self, *events: asyncio.Event) -> None:
        self.events = events

    def _mark(self) -> None:
        for e in self.events:
            e.set()

    async def replace(self, objects: dict[str, Obj]) -> None:
        self._mark()

    async def upsert(self, obj: Obj) -> None:
        self._mark()

    async def delete(self, obj: Obj) -> None:
        self._mark()


class CatalogSync:
    def __init__(self, agent: Agent, api: ApiClient, cfg: SyncCatalog) -> None:
        self.agent = agent
        self.cfg = cfg
        self.core = CoreV1Api(api)
        self.to_consul_dirty = asyncio.Event()
        self.to_k8s_dirty = asyncio.Event()
        both = _Dirty(self.to_consul_dirty, self.to_k8s_dirty)
        self.services = Reflector("sync services", self.core.list_service_for_all_namespaces, both)
        self.slices = Reflector(
            "sync endpointslices",
            DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
            _Dirty(self.to_consul_dirty),
        )
        self.written: dict[str, NodeService] | None = None  # None: read the catalog first
        self.synced_in: set[str] = set()  # catalog names that came from Kubernetes
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        run = self._tasks.append
        run(asyncio.create_task(self.services.run(), name="k8s-sync-services"))
        if self.cfg.to_consul:
            run(asyncio.create_task(self.slices.run(), name="k8s-sync-slices"))
            run(
                asyncio.create_task(
                    self._loop(self.to_consul_dirty, self._to_consul), name="k8s-to-meshd"
                )
            )
        if self.cfg.to_k8s:
            run(asyncio.create_task(self._watch_catalog(), name="k8s-catalog-watch"))
            run(
                asyncio.create_task(
                    self._loop(self.to_k8s_dirty, self._to_k8s), name="meshd-to-k8s"
                )
            )

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(self, dirty: asyncio.Event, step: Any) -> None:
        backoff = Backoff()
        while True:
            await dirty.wait()
            dirty.clear()
            try:
                await step()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a write the servers or the API server refused: retry
                log.warning("kubernetes service sync failed, retrying: %s", e)
                dirty.set()
                await backoff.sleep()

    # ---- Kubernetes -> meshd ----------------------------------------------------------------

    async def _to_consul(self) -> None:
        if not (self.services.synced.is_set() and self.slices.synced.is_set()):
            return  # a half-listed cluster would look like deletions
        want = ks.desired_catalog(
            list(self.services.objects.values()), list(self.slices.objects.values()), self.cfg
        )
        self.synced_in = {s.Service for s in want.values()}
        if self.written is None:
            res = await self.agent.backend.read(q.NodeInfo(Node=self.cfg.node_name))
            self.written = {s.ID: s for s in res.value[1]} if res.value else {}
        backend, node = self.agent.backend, self.cfg.node_name
        for sid in [s for s in self.written if s not in want]:
            await backend.write(Deregister(Node=node, ServiceID=sid))
            del self.written[sid]
        for sid, svc in want.items():
            if _same(self.written.get(sid), svc):
                continue
            await backend.write(
                Register(Node=node, Address="127.0.0.1", NodeMeta=SYNC_NODE_META, Service=svc)
            )
            self.written[sid] = svc
        self.to_k8s_dirty.set()  # the names that came in must not go back out

    # ---- meshd -> Kubernetes ----------------------------------------------------------------

    async def _watch_catalog(self) -> None:
        with self.agent.cache.subscribe(q.Services()) as sub:
            async for _ in sub:
                self.to_k8s_dirty.set()

    async def _to_k8s(self) -> None:
        catalog = self.agent.cache.get(q.Services())
        if catalog is None or not self.services.synced.is_set():
            return
        if self.cfg.to_consul and self.written is None:
            return  # not yet known which names came from Kubernetes
        ns, domain = self.cfg.k8s_namespace, self.agent.config.domain
        existing = {
            o["metadata"]["name"]: o
            for o in self.services.objects.values()
            if o["metadata"].get("namespace") == ns
        }
        want: dict[str, Obj] = {}
        for name in ks.to_k8s_names(catalog, self.synced_in):
            obj = ks.external_name_service(name, ns, domain)
            if obj is None:
                log.debug("meshd service %r has no valid Kubernetes name: not synced", name)
            elif name in existing and not ks.owned_by_meshd(existing[name]):
                log.debug("Service %s/%s exists and is not meshd's: left alone", ns, name)
            else:
                want[name] = obj
        for name, obj in want.items():
            have = existing.get(name)
            if have is None:
                await self._k8s_write(self.core.create_namespaced_service(ns, _body(obj)))
            elif have.get("spec", {}).get("externalName") != obj["spec"]["externalName"]:
                obj["metadata"]["resourceVersion"] = have["metadata"].get("resourceVersion")
                await self._k8s_write(self.core.replace_namespaced_service(name, ns, _body(obj)))
        for name, have in existing.items():
            if ks.owned_by_meshd(have) and name not in want:
                await self._k8s_write(self.core.delete_namespaced_service(name, ns))

    async def _k8s_write(self, call: Any) -> None:
        """A conflict (409) or a vanished object (404) means someone moved first: the watch
        brings the news, and the next pass decides again."""
        try:
            await call
        except ApiException as e:
            if e.status == 422:  # refused as invalid: retrying the same object cannot help
                log.warning("Kubernetes refused a Service meshd wrote: %s", e.reason)
            elif e.status not in (404, 409):
                raise
        except aiohttp.ClientError as e:
            raise ConnectionError(f"Kubernetes API: {e}") from None


def _same(a: NodeService | None, b: NodeService) -> bool:
    if a is None:
        return False
    keys = ("Service", "Tags", "Address", "Port", "Meta")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _body(obj: Obj) -> Any:
    """The client serialises a plain dict as it is; its stubs only name the model class."""
    return obj
