"""The agent's Kubernetes mode: this node's pods in the agent's local state, and Service sync.

Pods: the agent lists and watches the pods scheduled on its node (field selector
`spec.nodeName`) and the cluster's Services (to name a pod by the Service that selects it), and
registers each pod that asks (see `meshd.k8s.pods`) exactly as `PUT /v1/agent/service/register`
would, without persisting it: Kubernetes is the record, and a relist after a restart rebuilds
it. The registration's check follows the pod's Ready condition; a pod that is deleted, leaves
the node or finishes is deregistered at once. Local state changes never wait for the servers
here (anti-entropy commits them), so a slow or absent server never stalls the watch.

Service sync (`sync_catalog`) runs on one agent only: the server that is the Raft leader (see
docs/decisions.md). It starts when this agent becomes leader and stops when it no longer is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from meshd.agent.agent import StartError
from meshd.agent.definitions import DefinitionError, parse_service
from meshd.agent.k8s_watch import Obj, Reflector, object_key
from meshd.k8s import pods as kp
from meshd.k8s.settings import KubernetesConfig
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING

if TYPE_CHECKING:
    from meshd.agent.agent import Agent
    from meshd.agent.k8s_sync import CatalogSync

log = logging.getLogger("meshd.k8s")


class KubernetesError(StartError):
    """The Kubernetes mode cannot start (no credentials, unreadable kubeconfig): says why."""


async def api_client(cfg: KubernetesConfig) -> ApiClient:
    """In-cluster credentials (the pod's service account) unless a kubeconfig is named."""
    conf = Configuration()
    if cfg.kubeconfig and not os.path.isfile(cfg.kubeconfig):
        raise KubernetesError(f"kubernetes: kubeconfig {cfg.kubeconfig}: no such file")
    try:
        if cfg.kubeconfig:
            await load_kube_config(
                config_file=cfg.kubeconfig, context=cfg.context, client_configuration=conf
            )
        else:
            load_incluster_config(client_configuration=conf)
    except (ConfigException, OSError, ValueError, TypeError) as e:
        where = cfg.kubeconfig or "the in-cluster service account"
        raise KubernetesError(f"kubernetes: cannot load credentials from {where}: {e}") from None
    return ApiClient(configuration=conf)


class _ServiceIndex:
    """Kubernetes Services, only to name the pods they select; a change re-checks the pods."""

    def __init__(self, mode: KubernetesMode) -> None:
        self.mode = mode

    async def replace(self, objects: dict[str, Obj]) -> None:
        await self.mode.resync_pods()

    async def upsert(self, obj: Obj) -> None:
        await self.mode.resync_pods()

    async def delete(self, obj: Obj) -> None:
        await self.mode.resync_pods()


class _PodHandler:
    def __init__(self, mode: KubernetesMode) -> None:
        self.mode = mode

    async def replace(self, objects: dict[str, Obj]) -> None:
        await self.mode.replace_pods(objects)

    async def upsert(self, obj: Obj) -> None:
        await self.mode.sync_pod(object_key(obj))

    async def delete(self, obj: Obj) -> None:
        await self.mode.sync_pod(object_key(obj))  # gone from the watch's objects: forgotten


class KubernetesMode:
    def __init__(self, agent: Agent, cfg: KubernetesConfig) -> None:
        self.agent = agent
        self.cfg = cfg
        self.node = cfg.k8s_node(agent.config.node_name)
        # node meta as consul-k8s sets it: which Kubernetes node this agent stands for
        agent.local.node_meta.setdefault(kp.META_NODE, self.node)
        self.api: ApiClient | None = None
        self.pods: Reflector | None = None
        self.services: Reflector | None = None
        self.registered: dict[str, dict[str, Obj]] = {}  # pod key -> service ID -> definition
        self.sync: CatalogSync | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()  # one pod change at a time: events stay in order
        self._warned: dict[str, str] = {}  # pod key -> the annotation problem last logged

    async def load_credentials(self) -> None:
        """Before the agent serves anything: bad credentials stop the start, not a running agent."""
        self.api = await api_client(self.cfg)

    async def start(self) -> None:
        if self.api is None:
            await self.load_credentials()
        assert self.api is not None
        core = CoreV1Api(self.api)
        if self.cfg.register_pods:
            self.services = Reflector(
                "services", core.list_service_for_all_namespaces, _ServiceIndex(self)
            )
            self.pods = Reflector(
                "pods",
                core.list_pod_for_all_namespaces,
                _PodHandler(self),
                field_selector=f"spec.nodeName={self.node}",
            )
            self._spawn(self.services.run(), "k8s-services")
            self._spawn(self._pods_after_services(), "k8s-pods")
        sync = self.cfg.sync_catalog
        if (sync.to_consul or sync.to_k8s) and self.agent.server is None:
            log.warning("kubernetes sync_catalog is set on a client agent: only servers sync")
        elif sync.to_consul or sync.to_k8s:
            self._spawn(self._sync_while_leader(), "k8s-sync-leader")
        log.info("kubernetes mode: node %s, registering pods: %s", self.node, bool(self.pods))

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _pods_after_services(self) -> None:
        """Pods are named by the Services selecting them: list those first, or the first
        registrations would use fallback names and be replaced a moment later."""
        assert self.services is not None and self.pods is not None
        await self.services.synced.wait()
        await self.pods.run()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.sync is not None:
            await self.sync.stop()
        if self.api is not None:
            await self.api.close()

    # ---- pods ------------------------------------------------------------------------------

    def _k8s_services(self) -> list[Obj]:
        return list(self.services.objects.values()) if self.services else []

    async def replace_pods(self, objects: dict[str, Obj]) -> None:
        """After a (re)list: pods no longer there are dropped, including registrations an
        init container made before this agent restarted (they carry the pod meta)."""
        for key in set(self.registered) | set(objects):
            await self.sync_pod(key)
        async with self._lock:
            wanted = {sid for regs in self.registered.values() for sid in regs}
            for sid, svc in list(self.agent.local.services.items()):
                if kp.owned(svc.Meta) and sid not in wanted and svc.Kind != "connect-proxy":
                    log.info("deregistering %s: its pod is gone", sid)
                    await self.agent.deregister_service(sid, wait=False)

    async def resync_pods(self) -> None:
        if self.pods is not None and self.pods.synced.is_set():
            for key in list(self.pods.objects):
                await self.sync_pod(key)

    async def sync_pod(self, key: str) -> None:
        """Make the registrations of pod `key` match the pod as the watch holds it now.

        The object is read under the lock, never passed in: a Service change re-checking the
        pods must not re-register a pod whose deletion was handled while it waited."""
        async with self._lock:
            pod = self.pods.objects.get(key) if self.pods else None
            if pod is None or (pod.get("spec") or {}).get("nodeName") != self.node:
                await self._forget(key)  # deleted, moved, or a stale event
                return
            await self._apply(key, self._wanted(key, pod))

    def _wanted(self, key: str, pod: Obj) -> dict[str, Obj]:
        try:
            return {d["id"]: d for d in kp.definitions(pod, self._k8s_services(), self.node)}
        except kp.AnnotationError as e:
            if self._warned.get(key) != str(e):  # once per reason, not on every resync
                self._warned[key] = str(e)
                log.warning("pod %s not registered: %s", key, e)
            return {}

    async def _apply(self, key: str, wanted: dict[str, Obj]) -> None:
        had = self.registered.get(key, {})
        for sid in set(had) - set(wanted):
            await self.agent.deregister_service(sid, wait=False)
        for sid, d in list(wanted.items()):
            try:
                await self._register(d, had.get(sid))
            except DefinitionError as e:
                log.warning("pod %s: service %s not registered: %s", key, sid, e)
                del wanted[sid]
        if wanted:
            self.registered[key] = wanted
        else:
            self.registered.pop(key, None)

    async def _register(self, d: Obj, before: Obj | None) -> None:
        check = d["check"]
        unchanged = before is not None and {**before, "check": None} == {**d, "check": None}
        local = self.agent.local.services.get(d["id"])
        # an injected pod's init container registers the same ID without our meta: take it back
        if not unchanged or local is None or local.Meta.get(kp.META_SOURCE) != "kubernetes":
            defn = parse_service(d)
            for c in defn.checks:
                c.TTL = 0.0  # no timer: pod events set this check's status
            await self.agent.register_service(defn, wait=False, persist=False)
        status = HEALTH_PASSING if check["status"] == "passing" else HEALTH_CRITICAL
        self.agent.checks.update_ttl(check["check_id"], status, check["output"])

    async def _forget(self, key: str) -> None:
        self._warned.pop(key, None)
        for sid in self.registered.pop(key, {}):
            if sid in self.agent.local.services:
                log.info("deregistering %s: pod %s is gone", sid, key)
                await self.agent.deregister_service(sid, wait=False)

    # ---- service sync, on the leader only -----------------------------------------------

    def _is_leader(self) -> bool:
        server = self.agent.server
        return server is not None and server.raft is not None and server.raft.is_leader

    async def _sync_while_leader(self) -> None:
        from meshd.agent.k8s_sync import CatalogSync

        assert self.api is not None
        while True:
            leader = self._is_leader()
            if leader and self.sync is None:
                log.info("kubernetes service sync: this agent leads, starting")
                self.sync = CatalogSync(self.agent, self.api, self.cfg.sync_catalog)
                self.sync.start()
            elif not leader and self.sync is not None:
                log.info("kubernetes service sync: no longer the leader, stopping")
                await self.sync.stop()
                self.sync = None
            await asyncio.sleep(1.0)
