"""The agent's side of the mesh: watches -> per-proxy snapshots -> the ADS server.

For every local `connect-proxy` service the agent keeps a snapshot built from: the destination's
leaf certificate, the CA roots, the intentions that apply to the destination, the protocol from
`service-defaults` / `proxy-defaults`, and for each upstream its compiled discovery chain
(`meshd.chain`) with the healthy sidecar endpoints of every chain target, filtered by the
target's subset, plus the caller's `UpstreamConfig`. Every input is a subscription
to the agent's one watch cache (shared with DNS and HTTP; no watch loop of its own here), so a
change becomes a new snapshot (and an xDS push) at once for the proxies that read it; the
translation to Envoy resources is the pure `proxy.resources.build_resources`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from meshd import queries as q
from meshd.agent.cache import Subscription
from meshd.agent.leaf import LeafManager
from meshd.agent.metrics_consul import SNAPSHOT_BUILD
from meshd.chain import ChainError, compile_chain
from meshd.chain import protocol_of as chain_protocol
from meshd.filter import compile_filter
from meshd.intentions import WILDCARD, flatten, rbac_for_destination
from meshd.proxy.ads import ADSServer
from meshd.proxy.snapshot import PROTOCOLS, Endpoint, ProxySnapshot, Upstream
from meshd.proxy_observability import snapshot_fields
from meshd.structs import HEALTH_CRITICAL, HEALTH_WARNING, CheckServiceNode, NodeService

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

log = logging.getLogger("meshd.mesh")


def healthy_endpoints(
    rows: list[CheckServiceNode], subset: dict[str, Any] | None = None
) -> list[Endpoint]:
    """Pure: the sidecars of a destination that may receive traffic (no critical check), and
    of those, the ones a chain target's subset selects (its Filter; OnlyPassing)."""
    subset = subset or {}
    selects = compile_filter(subset.get("Filter"))
    unfit = {HEALTH_CRITICAL, HEALTH_WARNING} if subset.get("OnlyPassing") else {HEALTH_CRITICAL}
    out = []
    for r in rows:
        if any(c.Status in unfit for c in r.Checks):
            continue
        if subset.get("Filter") and not selects(msgspec.to_builtins(r)):
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


def upstream_config(defaults: list[dict[str, Any]], upstream: str) -> dict[str, Any]:
    """The calling service's UpstreamConfig for one upstream: Defaults, then its Override."""
    config = (defaults[0].get("UpstreamConfig") or {}) if defaults else {}
    merged = dict(config.get("Defaults") or {})
    for override in config.get("Overrides") or []:
        if override.get("Name") == upstream:
            merged.update({k: v for k, v in override.items() if k != "Name"})
    return merged


class _Reader:
    """Reads the watch cache and remembers every query, so a snapshot is rebuilt when anything
    it was built from changes, including the entries a discovery chain happened to consult."""

    def __init__(self, get: Callable[[q.Query], Any], *, by_kind: bool = False) -> None:
        self._get = get
        self.reads: set[q.Query] = set()
        # Proxyless clients may resolve any service: one watch per kind, not per entry.
        self._by_kind = by_kind
        self._kinds: dict[str, dict[str, dict[str, Any]]] = {}

    def __call__(self, query: q.Query) -> Any:
        self.reads.add(query)
        return self._get(query)

    def entry(self, kind: str, name: str) -> dict[str, Any] | None:
        if self._by_kind:
            if kind not in self._kinds:
                rows = self(q.ConfigEntries(Kind=kind)) or []
                self._kinds[kind] = {e["Name"]: e for e in rows}
            return self._kinds[kind].get(name)
        rows = self(q.ConfigEntries(Kind=kind, Name=name))
        return rows[0] if rows else None


_PROXYLESS = ""  # the reader key of the proxyless resources (no proxy id is empty)
_BASE: tuple[q.Query, ...] = (q.CARoots(),)  # read for every proxy


def _intentions(dest: str) -> tuple[q.Query, q.Query]:
    """The entries that can decide who reaches `dest`: its own and the wildcard one."""
    return (
        q.ConfigEntries(Kind="service-intentions", Name=dest),
        q.ConfigEntries(Kind="service-intentions", Name=WILDCARD),
    )


def _defaults(service: str) -> q.Query:
    return q.ConfigEntries(Kind="service-defaults", Name=service)


class MeshManager:
    """Snapshots read the agent's watch cache through subscriptions, one per query, and each
    query knows which proxies read it: a change rebuilds only those proxies (an intention for
    `x` touches only the sidecars that front `x`). Local service changes and leaves rebuild all."""

    def __init__(self, agent: Agent, host: str, port: int) -> None:
        self.agent = agent
        self.cache = agent.cache
        self.ads = ADSServer(host, port)
        self.leaves = LeafManager(agent.backend, agent.config.datacenter, self.trigger)
        self._subs: dict[q.Query, Subscription] = {}
        self._reads: dict[str, frozenset[q.Query]] = {}  # proxy id (or _PROXYLESS) -> queries
        self._readers: dict[q.Query, set[str]] = {}
        self._dirty: set[str] = set()
        self._all_dirty = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snapshots: dict[str, ProxySnapshot] = {}
        self._version = 0
        self.builds: Counter[str] = Counter()  # snapshot computations per proxy (tests, debug)
        # proxyless gRPC clients (gRFC A27): served from every service's healthy instances,
        # watched only once such a client has connected
        self._proxyless_active = False
        self._proxyless: dict[str, list[object]] | None = None

    async def start(self) -> None:
        await self.ads.start()
        self.ads.set_default_provider(self._provide_proxyless)
        self._task = asyncio.create_task(self._builder(), name="mesh builder")
        self.trigger()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()
        await self.leaves.close()
        await self.ads.stop()

    def trigger(self) -> None:
        """Rebuild every snapshot (local services or a leaf changed)."""
        self._all_dirty = True
        self._wake.set()

    def _changed(self, query: q.Query) -> None:
        if query in _BASE:
            self._all_dirty = True
        else:
            self._dirty |= self._readers.get(query, set())
        self._wake.set()

    def _value(self, query: q.Query) -> Any:
        return self.cache.get(query)

    async def _builder(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0.005)  # coalesce a burst of changes into one push
            self._wake.clear()
            try:
                self._rebuild()
            except Exception:  # never let one bad input stop every proxy's updates
                log.exception("building proxy snapshots failed")

    def _rebuild(self) -> None:
        dirty, everything = self._dirty, self._all_dirty
        self._dirty, self._all_dirty = set(), False
        roots = self._value(q.CARoots())
        if roots:
            self.leaves.set_roots(roots["TrustDomain"], roots["ActiveRootID"])
        proxies = {
            sid: s for sid, s in self.agent.local.services.items() if s.Kind == "connect-proxy"
        }
        served = {(s.Proxy or {}).get("DestinationServiceName") for s in proxies.values()}
        for gone in set(self._reads) - set(proxies) - {_PROXYLESS}:
            del self._reads[gone]
        for gone in set(self._snapshots) - set(proxies):
            snap = self._snapshots.pop(gone)
            self.ads.set_snapshot(gone, None)
            if snap.service not in served:
                self.leaves.drop(snap.service)  # no sidecar left: stop renewing its leaf
        for sid, svc in proxies.items():
            if everything or sid in dirty or sid not in self._reads:
                reader = _Reader(self._value)
                try:
                    self._build(sid, svc, roots, reader)
                except Exception:  # one bad input must not stop the other proxies' updates
                    log.exception("building the snapshot of %s failed", sid)
                finally:
                    self._reads[sid] = _reads_of(svc) | reader.reads
        if self._proxyless_active and (everything or _PROXYLESS in dirty):
            self._rebuild_proxyless()
        self._resubscribe()

    def snapshot(self, proxy_id: str) -> ProxySnapshot | None:
        """The latest snapshot pushed for a local proxy, if it has one yet."""
        return self._snapshots.get(proxy_id)

    def _build(self, sid: str, svc: NodeService, roots: Any, reader: _Reader) -> None:
        self.builds[sid] += 1
        started = time.perf_counter()
        snap = self._snapshot(sid, svc, roots, reader)
        self.agent.stats.timer(SNAPSHOT_BUILD).since(started)
        if snap is None:
            return
        old = self._snapshots.get(sid)
        if old is None or snapshot_key(old) != snapshot_key(snap):
            self._version += 1
            snap.version = self._version
            self._snapshots[sid] = snap
            self.ads.set_snapshot(sid, snap)

    def _resubscribe(self) -> None:
        """One subscription per query some snapshot reads; the ones nobody reads any more are
        closed (the cache lets them linger briefly, then stops their watch)."""
        readers: dict[q.Query, set[str]] = {query: set() for query in _BASE}
        for reader, queries in self._reads.items():
            for query in queries:
                readers.setdefault(query, set()).add(reader)
        self._readers = readers
        for query in set(self._subs) - set(readers):
            self._subs.pop(query).close()
        for query in readers.keys() - self._subs.keys():
            self._subs[query] = self.cache.subscribe(query, self._changed)

    def _provide_proxyless(self, node_id: str) -> dict[str, list[object]] | None:
        if not self._proxyless_active:
            self._proxyless_active = True
            self.trigger()
        return self._proxyless

    def _rebuild_proxyless(self) -> None:
        names = sorted(self._value(q.Services()) or {})
        read = _Reader(self._value, by_kind=True)
        read(q.Services())
        services: dict[str, list[Endpoint]] = {}
        chains: dict[str, dict[str, Any]] = {}
        targets: dict[str, list[Endpoint]] = {}
        roots = self._value(q.CARoots()) or {}
        for name in names:
            rows = read(q.ServiceNodes(Service=name))
            if rows is None:
                continue  # absent rather than empty: a client waits instead of failing
            services[name] = healthy_endpoints([r for r in rows if r.Service.Kind == ""])
            chain = self._chain(name, roots.get("TrustDomain", ""), read)
            if chain["Default"]:
                continue
            chains[name] = chain
            for target in chain["Targets"].values():
                found = read(q.ServiceNodes(Service=target["Service"])) or []
                targets[target["Name"]] = healthy_endpoints(
                    [r for r in found if r.Service.Kind == ""], target["Subset"]
                )
        self._reads[_PROXYLESS] = frozenset(read.reads)
        from meshd.proxy.proxyless import proxyless_resources  # Envoy protos: only when used

        resources = proxyless_resources(services, chains, targets)
        if resources != self._proxyless:
            self._proxyless = resources
            self.ads.invalidate()

    def _chain(self, name: str, td: str, read: _Reader, protocol: str = "") -> dict[str, Any]:
        dc = self.agent.config.datacenter
        over = {"Protocol": protocol} if protocol else {}
        try:
            return compile_chain(name, read.entry, datacenter=dc, trust_domain=td, overrides=over)
        except ChainError as e:  # the servers refuse such entries; a race may still show one
            log.warning("discovery chain of %s: %s; using the default chain", name, e)
            return compile_chain(
                name, lambda kind, n: None, datacenter=dc, trust_domain=td, overrides=over
            )

    def _upstream(self, up: dict[str, Any], dest: str, td: str, read: _Reader) -> Upstream:
        """One upstream through its discovery chain: targets, their subsets' endpoints, and the
        caller's UpstreamConfig (circuit breakers, outlier detection)."""
        name = up["DestinationName"]
        config = upstream_config(read(_defaults(dest)) or [], name)
        # Consul: an upstream's own `protocol` (its Config, or UpstreamConfig) overrides the
        # chain's, and a tcp on either side drops routers and splitters
        protocol = str((up.get("Config") or {}).get("protocol") or config.get("Protocol") or "")
        if protocol and protocol not in PROTOCOLS:
            log.warning("upstream %s: unknown protocol %r ignored", name, protocol)
            protocol = ""
        chain = self._chain(name, td, read, protocol)
        targets = {}
        for tid, target in chain["Targets"].items():
            rows = read(q.ServiceNodes(Service=target["Service"], Connect=True)) or []
            targets[tid] = healthy_endpoints(rows, target["Subset"])
        rows = read(q.ServiceNodes(Service=name, Connect=True)) or []
        return Upstream(
            destination_name=name,
            local_bind_port=int(up["LocalBindPort"]),
            local_bind_address=up.get("LocalBindAddress") or "127.0.0.1",
            protocol=chain["Protocol"],
            endpoints=healthy_endpoints(rows),
            chain=chain,
            target_endpoints=targets,
            config=config,
        )

    def _snapshot(
        self, sid: str, svc: NodeService, roots: Any, read: _Reader
    ) -> ProxySnapshot | None:
        proxy = svc.Proxy or {}
        dest = proxy.get("DestinationServiceName", "")
        if not dest or not roots or not roots["TrustDomain"]:
            return None
        leaf = self.leaves.leaves.get(dest)
        if leaf is None:
            self.leaves.ensure(dest)  # its arrival triggers another rebuild
            return None
        entries = [e for query in _intentions(dest) for e in self._value(query) or []]
        protocol = chain_protocol(read.entry, dest)  # proxy-defaults count too, as in Consul
        plan = rbac_for_destination(
            flatten(entries),
            dest,
            self.agent.config.default_intention_policy == "allow",
            http=protocol != "tcp",
        )
        td = roots["TrustDomain"]
        upstreams = [self._upstream(up, dest, td, read) for up in valid_upstreams(sid, proxy)]
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
            **snapshot_fields(proxy, read.entry("proxy-defaults", "global"), dest),
        )


def valid_upstreams(proxy_id: str, proxy: dict[str, Any]) -> list[dict[str, Any]]:
    """The upstreams a snapshot can be built from. Registration refuses the others; one that
    slips through (an old persisted definition) is skipped with a logged reason, because a
    failure here would also stop the config of every proxy built after this one."""
    ups = proxy.get("Upstreams") or []
    if not isinstance(ups, list):
        log.warning("proxy %s: Upstreams is not a list; ignored", proxy_id)
        return []
    good = []
    for i, up in enumerate(ups):
        if (
            isinstance(up, dict)
            and isinstance(up.get("DestinationName"), str)
            and up["DestinationName"]
        ):
            good.append(up)
        else:
            log.warning("proxy %s: upstream %d has no DestinationName; skipped", proxy_id, i)
    return good


def _reads_of(svc: NodeService) -> frozenset[q.Query]:
    """The queries one sidecar's snapshot is built from (besides the CA roots)."""
    proxy = svc.Proxy or {}
    dest = proxy.get("DestinationServiceName", "")
    reads: set[q.Query] = {*_intentions(dest), _defaults(dest)}
    for up in valid_upstreams(svc.ID, proxy):
        name = up["DestinationName"]
        reads.update((q.ServiceNodes(Service=name, Connect=True), _defaults(name)))
    return frozenset(reads)


def snapshot_key(snap: ProxySnapshot) -> ProxySnapshot:
    return dataclasses.replace(snap, version=0)
