"""One agent: local state, checks, anti-entropy, HTTP and DNS, and (on servers) the store.

The agent's write paths (register/deregister) change local state first and then wait for
anti-entropy to commit that change, so a 200 means the catalog has it: nothing acknowledged
is lost, and a read right after a register sees it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import ssl
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from meshd import keyring
from meshd.agent import acl_tokens_file, dns_acl, mesh_acl
from meshd.agent.acl import TokenResolver
from meshd.agent.antientropy import AntiEntropy
from meshd.agent.backend import CatalogBackend, LocalBackend, RemoteBackend
from meshd.agent.cache import WatchCache
from meshd.agent.checks import CheckRunner
from meshd.agent.coordinate_client import AgentCoordinate
from meshd.agent.definitions import (
    DefinitionError,
    parse_check,
    parse_service,
)
from meshd.agent.dns import DNSSettings, DNSView
from meshd.agent.dns_server import DNSServer
from meshd.agent.events import EventReceiver
from meshd.agent.heartbeats import Heartbeats
from meshd.agent.http.guard import SHUTDOWN_GRACE, ConnectionLimits, GuardedSite, runner_options
from meshd.agent.http.server import make_app
from meshd.agent.keyring_client import AgentKeyring
from meshd.agent.liveness_client import HeartbeatLink
from meshd.agent.local import LocalState
from meshd.agent.local_writes import LocalWrites
from meshd.agent.mesh import MeshManager
from meshd.agent.metrics_consul import register_consul_metrics
from meshd.agent.persist import Persisted
from meshd.agent.telemetry import TelemetryCollector
from meshd.agent.telemetry import register_metrics as register_telemetry_metrics
from meshd.agent.views import CacheView, StoreView
from meshd.agent.watches import WatchRunner, local_address, parse_watches
from meshd.config import Config
from meshd.fsutil import atomic_write, prepare_data_dir
from meshd.metrics import SNAPSHOT_GAUGES, Stats, snapshot_figure
from meshd.rpc_client import RPCClient
from meshd.server.cluster import Server, ServerSettings
from meshd.server.raft import reserve_port
from meshd.server.rpc import make_rpc_app
from meshd.structs import (
    Deregister,
)
from meshd.tls import server_hostname, tls_contexts
from meshd.validate import Limits
from meshd.watchplan import WatchError

if TYPE_CHECKING:
    from meshd.agent.k8s import KubernetesMode
    from meshd.agent.reload import Reloader

log = logging.getLogger("meshd.agent")


def _node_id(cfg: Config) -> str:
    """Stable across restarts when there is a data dir, as Consul's node-id file is."""
    if not cfg.data_dir:
        return str(uuid.uuid4())
    path = os.path.join(cfg.data_dir, "node-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        nid = str(uuid.uuid4())
        atomic_write(path, nid.encode())
        return nid


class StartError(Exception):
    """The agent cannot start with this configuration; the text says why."""


def _raft_password(cfg: Config, primary: str | None) -> str | None:
    """The Raft transport key. A server with no peers to come (dev, or a lone server) gets a
    random one per start when none is configured: nobody else needs it, and it closes the
    pickle-speaking Raft port to other local users, whom loopback does not keep out."""
    if primary:
        return primary
    if _lone_server(cfg):
        return base64.b64encode(os.urandom(32)).decode()
    return None  # unreachable for a server: start() refuses one with peers and no key


def _lone_server(cfg: Config) -> bool:
    """A server that will never have Raft peers: -dev, or bootstrap_expect <= 1 and no joins."""
    return cfg.dev or (cfg.bootstrap_expect <= 1 and not cfg.retry_join)


def dns_settings(cfg: Config) -> DNSSettings:
    d = cfg.dns_config
    soa = d.soa or {}
    return DNSSettings(
        domain=cfg.domain,
        alt_domain=cfg.alt_domain,
        node_ttl=d.node_ttl,
        service_ttl=dict(d.service_ttl),
        only_passing=d.only_passing,
        a_record_limit=d.a_record_limit,
        udp_answer_limit=d.udp_answer_limit,
        enable_truncate=d.enable_truncate,
        recursors=list(cfg.recursors),
        recursor_timeout=d.recursor_timeout,
        soa_refresh=int(soa.get("refresh", 3600)),
        soa_retry=int(soa.get("retry", 600)),
        soa_expire=int(soa.get("expire", 86400)),
        soa_min_ttl=int(soa.get("min_ttl", 0)),
    )


class Agent(LocalWrites, Heartbeats):
    def __init__(self, config: Config) -> None:
        self.config = config
        if config.data_dir:
            prepare_data_dir(config.data_dir)  # before anything is written into it
        self.started = time.time()
        self.backend: CatalogBackend
        self.address = config.advertise_addr or config.bind_addr
        self.local = LocalState(
            node=config.node_name,
            address=self.address,
            datacenter=config.datacenter,
            node_id=_node_id(config),
            node_meta=dict(config.node_meta),
            tagged_addresses={"lan": self.address, "wan": self.address},
        )
        self.checks = CheckRunner(
            self._on_check_update,
            enable_script_checks=config.enable_script_checks or config.enable_local_script_checks,
            alias_source=self._alias_source,
        )
        self.persisted = Persisted(
            os.path.join(config.data_dir, "agent") if config.data_dir else None
        )
        self._runner: web.AppRunner | None = None
        self.dns: DNSServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._heartbeat_ok = asyncio.Event()
        self.stats = Stats()
        self.coordinate = AgentCoordinate()
        self.keyring = AgentKeyring(config)
        self._mesh_started = False
        self.mesh: MeshManager
        self._rpc_runner: web.AppRunner | None = None
        self.server: Server | None = None
        self.telemetry: TelemetryCollector | None = None
        self.rpc: RPCClient | None = None
        self.link: HeartbeatLink | None = None  # a client agent's heartbeat socket
        self.cache: WatchCache  # one cache of server watches: DNS, HTTP reads, the mesh
        self.view: StoreView | CacheView
        self.ae: AntiEntropy  # set in start(); stop() copes with a start that failed first
        self.events: EventReceiver  # user events this agent received (set in start())
        self.watches = WatchRunner("")  # the `watches` of the config, run once HTTP is up
        # (server side, client side), kept so a reload can load rotated certificates into them
        self.ssl_contexts: tuple[ssl.SSLContext | None, ssl.SSLContext | None] = (None, None)
        self.reloader: Reloader | None = None  # set by whoever knows the config's sources
        self.kube: KubernetesMode | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        try:  # tokens set through the API (acl.enable_token_persistence) beat the config's
            acl_tokens_file.load(cfg.data_dir, cfg.acl)
        except acl_tokens_file.TokenFileError as e:
            raise StartError(str(e)) from None
        primary = self.keyring.primary
        key = keyring.hmac_key(primary) if primary else None
        ssl_server, ssl_client = self.ssl_contexts = tls_contexts(cfg)
        server_name = server_hostname(cfg) if cfg.tls.verify_server_hostname else None
        if cfg.server:
            if not key and not _lone_server(cfg):
                raise StartError(
                    "refusing to start a server that expects peers without a cluster key: "
                    "Raft peers exchange pickled messages, so an open Raft port is remote "
                    "code execution, on loopback too (any local user can reach it). Generate a "
                    "key with `meshd keygen` and set `encrypt` on every server."
                )
            self.local.node_meta.setdefault("meshd-server", "true")
            dev_raft = reserve_port(cfg.bind_addr) if cfg.dev else None
            self.server = Server(
                ServerSettings(
                    node_name=cfg.node_name,
                    datacenter=cfg.datacenter,
                    advertise=self.address,
                    rpc_port=cfg.ports.server,
                    raft_port=dev_raft.getsockname()[1] if dev_raft else cfg.ports.raft,
                    data_dir=cfg.data_dir,
                    key=key,
                    password=_raft_password(cfg, primary),
                    keyring=list(self.keyring.keys),
                    bootstrap_expect=cfg.bootstrap_expect or 1,
                    retry_join=list(cfg.retry_join),
                    retry_interval=min(cfg.retry_interval, 30.0),
                    fsync=cfg.raft_fsync,
                    snapshot_every=(cfg.raft_snapshot_threshold, cfg.raft_snapshot_interval),
                    failure_timeout=float(cfg.limits.get("node_failure_timeout", 5.0)),
                    reap_after=cfg.reconnect_timeout,
                    ssl_client=ssl_client,
                    bind=cfg.bind_addr if cfg.bind_addr != self.address else None,
                    server_name=server_name,
                    limits=Limits.from_config(cfg.limits),
                    tombstone_ttl=cfg.kv_tombstone_ttl,
                    acl=cfg.acl,
                )
            )
            try:
                await self.server.start()
            finally:
                if dev_raft is not None:
                    dev_raft.close()  # Raft's listener holds the port now
            self.backend = LocalBackend(self.server, cfg.acl.tokens.agent)
            self.view = StoreView(self.server.store, cfg.datacenter, cfg.node_name)
            if not cfg.dev:
                self._rpc_runner = web.AppRunner(
                    make_rpc_app(self.server), access_log=None, shutdown_timeout=SHUTDOWN_GRACE
                )
                await self._rpc_runner.setup()
                await web.TCPSite(
                    self._rpc_runner, cfg.bind_addr, cfg.ports.server, ssl_context=ssl_server
                ).start()
        else:
            if not cfg.retry_join:
                raise StartError("a client agent needs -retry-join with the servers' addresses")
            self.rpc = RPCClient(
                list(cfg.retry_join),
                key,
                default_port=cfg.ports.server,
                ssl_context=ssl_client,
                server_name=server_name,
            )
            remote = self.backend = RemoteBackend(
                self.rpc, Limits.from_config(cfg.limits), cfg.acl.tokens.agent
            )
            self.link = HeartbeatLink(self.rpc, cfg.node_name, lambda: remote.current)
        self.cache = WatchCache(self.backend)
        self.acl = TokenResolver(cfg.acl, self.backend)
        if self.server is None:
            self.view = CacheView(self.cache, cfg.datacenter, cfg.node_name)
        self.ae = AntiEntropy(self.local, self.backend)
        self.mesh = MeshManager(
            self, cfg.addresses.get("grpc", cfg.client_addr).split()[0], cfg.ports.grpc
        )

        def changed() -> None:
            self.ae.trigger()
            self.mesh.trigger()

        self.local.on_change = changed
        if cfg.kubernetes is not None:  # before the first sync: it sets node meta
            from meshd.agent.k8s import KubernetesMode

            self.kube = KubernetesMode(self, cfg.kubernetes)
            await self.kube.load_credentials()
        try:
            watch_specs = parse_watches(cfg.watches)
        except WatchError as e:
            raise StartError(str(e)) from None
        try:
            for raw in cfg.services:
                await self.register_service(
                    parse_service(raw), wait=False, persist=False, local=True
                )
            for raw in cfg.checks:
                await self.register_check(parse_check(raw), wait=False, persist=False, local=True)
        except DefinitionError as e:
            raise StartError(f"invalid service or check in the configuration: {e}") from None
        await self._restore_persisted()
        self.ae.start()
        self.ae.trigger()
        self.events = EventReceiver(
            self.backend, cfg.node_name, lambda: list(self.local.services.values())
        )
        self.events.start()
        self._tasks.append(asyncio.create_task(self._reap_critical(), name="critical-reaper"))
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        # serve only once the node is in the catalog and known to the leader (bounded wait:
        # a client agent whose servers are down still starts, and keeps retrying)
        # with ACLs on and no token of its own, the agent's sync waits for `set-agent-token`
        can_sync = not cfg.acl.enabled or bool(cfg.acl.tokens.agent or cfg.acl.tokens.default)
        await self.wait_ready(15.0, sync=can_sync)
        await self.events.positioned(5.0)
        app = make_app(self, max_body=cfg.http_max_body)
        self._runner = web.AppRunner(app, **runner_options())
        await self._runner.setup()
        http_addr = cfg.addresses.get("http", cfg.client_addr)
        per_client = ConnectionLimits(cfg.http_max_conns_per_client, cfg.http_read_header_timeout)
        for host in http_addr.split():
            await GuardedSite(self._runner, host, cfg.ports.http, per_client).start()
        if cfg.watches and cfg.ports.http > 0:
            self.watches = WatchRunner(local_address(http_addr.split()[0], cfg.ports.http))
            self.watches.start(watch_specs)
        elif cfg.watches:
            log.warning("watches need the HTTP port (ports.http); %d not run", len(cfg.watches))
        if cfg.ports.grpc > 0:
            if cfg.acl.enabled:  # a stream needs service:write on the service it fronts
                self.mesh.ads.authorize = mesh_acl.xds_hook(self)
            await self.mesh.start()
            self._mesh_started = True
            self.telemetry = TelemetryCollector(self)
            self._tasks.append(asyncio.create_task(self.telemetry.run(), name="telemetry"))
            register_telemetry_metrics(self)
        if cfg.ports.dns > 0:
            dns_addr = cfg.addresses.get("dns", cfg.client_addr).split()[0]
            dns_view: DNSView = self.view
            if cfg.acl.enabled:  # services the dns token cannot read do not exist
                dns_view, refresher = await dns_acl.guarded(self.view, self.acl)
                self._tasks.append(refresher)
            self.dns = DNSServer(dns_view, dns_settings(cfg), dns_addr, cfg.ports.dns)
            await self.dns.start()
        if self.kube is not None:
            await self.kube.start()
        self._register_metrics()
        log.info(
            "meshd agent running: node=%s dc=%s http=%s:%d dns=%d",
            cfg.node_name,
            cfg.datacenter,
            http_addr,
            cfg.ports.http,
            cfg.ports.dns,
        )

    def _register_metrics(self) -> None:
        st = self.stats
        st.gauges["local_services"] = lambda: len(self.local.services)
        st.gauges["local_checks"] = lambda: len(self.local.checks)
        if self.dns is not None:
            dns = self.dns
            st.counters["dns_queries"] = lambda: dns.queries
            answers = self.view.dns_answers
            st.counters["dns_answer_cache_hits"] = lambda: answers.hits
            st.counters["dns_answer_cache_misses"] = lambda: answers.misses
        st.gauges["cache_entries"] = lambda: len(self.cache)
        if self.server is not None:
            server = self.server
            st.gauges["catalog_nodes"] = lambda: len(server.store.nodes)
            st.gauges["catalog_services"] = lambda: len(server.store.by_name)
            st.gauges["raft_index"] = lambda: server.store.index
            st.counters["raft_commits"] = lambda: server.raft.commits if server.raft else 0
            st.counters["liveness_batches"] = lambda: server.store.status_batches
            st.counters["liveness_batch_nodes"] = lambda: server.store.status_batch_nodes
            st.gauges["liveness_attached_nodes"] = lambda: len(server.members.nodes)
            for name, attr in SNAPSHOT_GAUGES.items():  # the last Raft snapshot written
                st.gauges[name] = functools.partial(snapshot_figure, server, attr)
        register_consul_metrics(self)

    async def _restore_persisted(self) -> None:
        """Services and checks registered over the API survive a restart, as in Consul."""
        for sid, raw in self.persisted.services().items():
            try:
                await self.register_service(parse_service(raw), wait=False, persist=False)
            except (DefinitionError, KeyError) as e:
                log.warning("dropping persisted service %s: %s", sid, e)
                self.persisted.drop_service(sid)
        for cid, raw in self.persisted.checks().items():
            try:
                await self.register_check(parse_check(raw), wait=False, persist=False)
            except (DefinitionError, KeyError) as e:
                log.warning("dropping persisted check %s: %s", cid, e)
                self.persisted.drop_check(cid)

    async def leave(self) -> None:
        """Graceful leave: the leader marks the node left and removes it from the catalog."""
        hb = self._heartbeat(leaving=True)
        if self.kube is not None:  # no pod registration may race the leave
            await self.kube.stop()
            self.kube = None
        for t in self._tasks:
            t.cancel()
        await self.ae.stop()
        await self._send_heartbeat(hb)
        await self.backend.write(Deregister(Node=self.config.node_name))

    async def stop(self) -> None:
        if self.kube is not None:
            await self.kube.stop()
        for t in self._tasks:
            t.cancel()
        self.watches.stop()
        ae = getattr(self, "ae", None)
        if ae is not None:
            await ae.stop()
        events = getattr(self, "events", None)
        if events is not None:
            await events.stop()
        if self._mesh_started:
            await self.mesh.stop()
        cache = getattr(self, "cache", None)
        if cache is not None:
            await cache.close()
        if self.link is not None:
            await self.link.close()
        if self.rpc:
            await self.rpc.close()
        await self.checks.close()
        if self.dns:
            await self.dns.stop()
        runners = [r for r in (self._runner, self._rpc_runner) if r is not None]
        for runner in runners:  # no new connections: agents fail over to another server
            for site in list(runner.sites):
                await site.stop()
        if self.server:
            self.server.end_blocking_queries()
        for runner in runners:  # what is still in flight gets SHUTDOWN_GRACE
            await runner.cleanup()
        if self.server:
            await self.server.close()
