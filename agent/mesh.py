"""The agent's side of the mesh: watches -> per-proxy snapshots -> the ADS server.

For every local `connect-proxy` service the agent keeps a snapshot built from: the destination's
leaf certificate, the CA roots, the intentions that apply to the destination, the protocol from
`service-defaults`, and each upstream's healthy sidecar endpoints. Every input is a blocking
watch on the catalog, so a change anywhere becomes a new snapshot (and an xDS push) at once; the
translation to Envoy resources is the pure `proxy.resources.build_resources`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshd import queries as q
from meshd.agent.backend import CatalogBackend
from meshd.agent.leaf import LeafManager
from meshd.intentions import flatten, rbac_for_destination
from meshd.proxy.ads import ADSServer
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream
from meshd.structs import HEALTH_CRITICAL, CheckServiceNode, NodeService

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

log = logging.getLogger("meshd.mesh")


class Watch:
    """One blocking query kept running; `value` is the latest answer."""

    def __init__(self, backend: CatalogBackend, query: Any, on_change: Callable[[], None]):
        self.query = query
        self.value: Any = None
        self.index = 0
        self.ready = asyncio.Event()
        self._backend = backend
        self._on_change = on_change
        self._task = asyncio.create_task(self._run(), name=f"mesh watch {query}")

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                res = await self._backend.read(
                    self.query, min_index=self.index, wait=300.0, consistency="stale"
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep the last value; the servers may be electing
                log.debug("watch %s: %s", self.query, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            changed = res.index != self.index or not self.ready.is_set()
            self.index = res.index if res.index >= self.index else 0
            if changed:
                self.value = res.value
                self.ready.set()
                self._on_change()

    def cancel(self) -> None:
        self._task.cancel()


def healthy_endpoints(rows: list[CheckServiceNode]) -> list[Endpoint]:
    """Pure: the sidecars of a destination that may receive traffic (no critical check)."""
    out = []
    for r in rows:
        if any(c.Status == HEALTH_CRITICAL for c in r.Checks):
            continue
        out.append(
            Endpoint(
                address=r.Service.Address or r.Node.Address,
                port=r.Service.Port,
                weight=max(r.Service.Weights.Passing, 1),
            )
        )
    out.sort(key=lambda e: (e.address, e.port))
    return out


def protocol_of(entries: list[dict[str, Any]], service: str) -> str:
    for e in entries:
        if e.get("Name") == service:
            return str(e.get("Protocol") or "tcp")
    return "tcp"


class MeshManager:
    def __init__(self, agent: Agent, host: str, port: int) -> None:
        self.agent = agent
        self.backend = agent.backend
        self.ads = ADSServer(host, port)
        self.leaves = LeafManager(agent.backend, agent.config.datacenter, self.trigger)
        self._watches: dict[Any, Watch] = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._version = 0
        # proxyless gRPC clients (gRFC A27): served from every service's healthy instances,
        # watched only once such a client has connected
        self._proxyless_active = False
        self._proxyless: dict[str, list[object]] | None = None

    async def start(self) -> None:
        await self.ads.start()
        self.ads.set_default_provider(self._provide_proxyless)
        for query in (
            q.CARoots(),
            q.ConfigEntries(Kind="service-intentions"),
            q.ConfigEntries(Kind="service-defaults"),
        ):
            self._watch(query)
        self._task = asyncio.create_task(self._builder(), name="mesh builder")
        self.trigger()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for w in self._watches.values():
            w.cancel()
        await self.leaves.close()
        await self.ads.stop()

    def trigger(self) -> None:
        self._dirty.set()

    def _watch(self, query: Any) -> Watch:
        w = self._watches.get(query)
        if w is None:
            w = self._watches[query] = Watch(self.backend, query, self.trigger)
        return w

    def _value(self, query: Any) -> Any:
        return self._watch(query).value

    async def _builder(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.005)  # coalesce a burst of changes into one push
            self._dirty.clear()
            try:
                self._rebuild()
            except Exception:  # never let one bad input stop every proxy's updates
                log.exception("building proxy snapshots failed")

    def _rebuild(self) -> None:
        roots = self._value(q.CARoots())
        if roots:
            self.leaves.set_roots(roots["TrustDomain"], roots["ActiveRootID"])
        proxies = {
            sid: s for sid, s in self.agent.local.services.items() if s.Kind == "connect-proxy"
        }
        served = {(s.Proxy or {}).get("DestinationServiceName") for s in proxies.values()}
        for gone in set(self._snapshots) - set(proxies):
            snap = self._snapshots.pop(gone)
            self.ads.set_snapshot(gone, None)
            if snap.service not in served:
                self.leaves.drop(snap.service)  # no sidecar left: stop renewing its leaf
        wanted = {
            q.CARoots(),
            q.ConfigEntries(Kind="service-intentions"),
            q.ConfigEntries(Kind="service-defaults"),
        }
        for sid, svc in proxies.items():
            for up in (svc.Proxy or {}).get("Upstreams") or []:
                wanted.add(q.ServiceNodes(Service=up["DestinationName"], Connect=True))
            snap = self._snapshot(sid, svc, roots)
            if snap is None:
                continue
            old = self._snapshots.get(sid)
            if old is None or dataclasses.replace(old, version=0) != snapshot_key(snap):
                self._version += 1
                snap.version = self._version
                self._snapshots[sid] = snap
                self.ads.set_snapshot(sid, snap)
        if self._proxyless_active:
            self._rebuild_proxyless(wanted)
        for query in set(self._watches) - wanted:
            self._watches.pop(query).cancel()

    def _provide_proxyless(self, node_id: str) -> dict[str, list[object]] | None:
        if not self._proxyless_active:
            self._proxyless_active = True
            self.trigger()
        return self._proxyless

    def _rebuild_proxyless(self, wanted: set[Any]) -> None:
        wanted.add(q.Services())
        names = sorted(self._value(q.Services()) or {})
        services: dict[str, list[Endpoint]] = {}
        for name in names:
            query = q.ServiceNodes(Service=name)
            wanted.add(query)
            watch = self._watch(query)
            if not watch.ready.is_set():
                continue  # absent rather than empty: a client waits instead of failing
            rows = [r for r in watch.value or [] if r.Service.Kind == ""]
            services[name] = healthy_endpoints(rows)
        from meshd.proxy.proxyless import proxyless_resources  # Envoy protos: only when used

        resources = proxyless_resources(services)
        if resources != self._proxyless:
            self._proxyless = resources
            self.ads.invalidate()

    def _snapshot(self, sid: str, svc: NodeService, roots: Any) -> ProxySnapshot | None:
        proxy = svc.Proxy or {}
        dest = proxy.get("DestinationServiceName", "")
        if not dest or not roots or not roots["TrustDomain"]:
            return None
        leaf = self.leaves.leaves.get(dest)
        if leaf is None:
            self.leaves.ensure(dest)  # its arrival triggers another rebuild
            return None
        defaults = self._value(q.ConfigEntries(Kind="service-defaults")) or []
        intentions = flatten(self._value(q.ConfigEntries(Kind="service-intentions")) or [])
        protocol = protocol_of(defaults, dest)
        plan = rbac_for_destination(
            intentions,
            dest,
            self.agent.config.default_intention_policy == "allow",
            http=protocol != "tcp",
        )
        upstreams = []
        for up in proxy.get("Upstreams") or []:
            name = up["DestinationName"]
            rows = self._value(q.ServiceNodes(Service=name, Connect=True)) or []
            upstreams.append(
                Upstream(
                    destination_name=name,
                    local_bind_port=int(up["LocalBindPort"]),
                    local_bind_address=up.get("LocalBindAddress") or "127.0.0.1",
                    protocol=protocol_of(defaults, name),
                    endpoints=healthy_endpoints(rows),
                )
            )
        return ProxySnapshot(
            proxy_id=sid,
            service=dest,
            trust_domain=roots["TrustDomain"],
            datacenter=self.agent.config.datacenter,
            public_listener_address=svc.Address or "0.0.0.0",
            public_listener_port=svc.Port,
            local_app_address=proxy.get("LocalServiceAddress") or "127.0.0.1",
            local_app_port=int(proxy.get("LocalServicePort") or 0),
            protocol=protocol,
            upstreams=upstreams,
            rbac=plan,
            leaf_cert_pem=leaf.cert_pem,
            leaf_key_pem=leaf.key_pem,
            roots_pem=[r["RootCert"] for r in roots["Roots"]],
        )


def snapshot_key(snap: ProxySnapshot) -> ProxySnapshot:
    return dataclasses.replace(snap, version=0)
