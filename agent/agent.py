"""One agent: local state, checks, anti-entropy, HTTP and DNS, and (on servers) the store.

The agent's write paths (register/deregister) change local state first and then wait for
anti-entropy to commit that change, so a 200 means the catalog has it: nothing acknowledged
is lost, and a read right after a register sees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

from aiohttp import web

from agent.antientropy import AntiEntropy
from agent.backend import CatalogBackend, LocalBackend, StoreView
from agent.checks import CheckRunner
from agent.definitions import CheckDefinition, DefinitionError, ServiceDefinition, parse_check, parse_service
from agent.dns import DNSSettings
from agent.dns_server import DNSServer
from agent.http.server import make_app
from agent.local import LocalCheck, LocalState, UnknownCheck
from meshd import __version__
from meshd.config import Config
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, SERF_CHECK_ID, HealthCheck
from server.raft import RaftNode, RaftSettings, free_loopback_port
from server.store import Store

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
        os.makedirs(cfg.data_dir, exist_ok=True)
        nid = str(uuid.uuid4())
        with open(path, "w") as f:
            f.write(nid)
        return nid


def dns_settings(cfg: Config) -> DNSSettings:
    d = cfg.dns_config
    soa = d.soa or {}
    return DNSSettings(
        domain=cfg.domain, alt_domain=cfg.alt_domain, node_ttl=d.node_ttl,
        service_ttl=dict(d.service_ttl), only_passing=d.only_passing,
        a_record_limit=d.a_record_limit, udp_answer_limit=d.udp_answer_limit,
        enable_truncate=d.enable_truncate, recursors=list(cfg.recursors),
        recursor_timeout=d.recursor_timeout,
        soa_refresh=int(soa.get("refresh", 3600)), soa_retry=int(soa.get("retry", 600)),
        soa_expire=int(soa.get("expire", 86400)), soa_min_ttl=int(soa.get("min_ttl", 0)))


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.store: Store | None = None
        self.raft: RaftNode | None = None
        self.backend: CatalogBackend
        self.address = config.advertise_addr or config.bind_addr
        self.local = LocalState(node=config.node_name, address=self.address,
                                datacenter=config.datacenter, node_id=_node_id(config),
                                node_meta=dict(config.node_meta),
                                tagged_addresses={"lan": self.address, "wan": self.address})
        self.checks = CheckRunner(self._on_check_update,
                                  enable_script_checks=config.enable_script_checks,
                                  alias_source=self._alias_source)
        self._runner: web.AppRunner | None = None
        self.dns: DNSServer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.ae: AntiEntropy

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        if cfg.server or cfg.dev:
            self.store = Store()
            raft_port = cfg.ports.raft if not cfg.dev else free_loopback_port()
            self.raft = RaftNode(self.store, RaftSettings(
                self_addr=f"{self.address}:{raft_port}", peers=[],
                data_dir=cfg.data_dir, password=cfg.encrypt))
            self.backend = LocalBackend(self.store, self.raft)
            self.local.checks[SERF_CHECK_ID] = LocalCheck(HealthCheck(
                Node=cfg.node_name, CheckID=SERF_CHECK_ID, Name="Serf Health Status",
                Status=HEALTH_PASSING, Output="Agent alive and reachable", Type=""))
        else:
            raise NotImplementedError("client agents need -server or -dev for now")
        self.ae = AntiEntropy(self.local, self.backend)
        self.local.on_change = self.ae.trigger
        for raw in cfg.services:
            await self.register_service(parse_service(raw), wait=False)
        for raw in cfg.checks:
            await self.register_check(parse_check(raw), wait=False)
        self.ae.start()
        self.ae.trigger()
        self._reaper = asyncio.create_task(self._reap_critical(), name="critical-reaper")
        app = make_app(self, max_body=cfg.http_max_body)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        http_addr = cfg.addresses.get("http", cfg.client_addr)
        for host in http_addr.split():
            await web.TCPSite(self._runner, host, cfg.ports.http).start()
        if cfg.ports.dns > 0 and self.store is not None:
            view = StoreView(self.store, cfg.datacenter, cfg.node_name, [cfg.node_name])
            dns_addr = cfg.addresses.get("dns", cfg.client_addr).split()[0]
            self.dns = DNSServer(view, dns_settings(cfg), dns_addr, cfg.ports.dns)
            await self.dns.start()
        log.info("meshd agent running: node=%s dc=%s http=%s:%d dns=%d", cfg.node_name,
                 cfg.datacenter, http_addr, cfg.ports.http, cfg.ports.dns)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.raft is not None and not self.raft.ready():
            if time.monotonic() > deadline:
                raise TimeoutError("no Raft leader elected")
            await asyncio.sleep(0.01)
        await self.ae.wait_synced(timeout)

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        await self.ae.stop()
        await self.checks.close()
        if self.dns:
            await self.dns.stop()
        if self._runner:
            await self._runner.cleanup()
        if self.raft:
            self.raft.close()

    # ---- services and checks ------------------------------------------------------------

    async def _commit(self, wait: bool) -> None:
        if wait and not await self.ae.wait_synced():
            log.warning("change accepted locally; catalog sync pending: %s", self.ae.last_error)

    async def register_service(self, defn: ServiceDefinition, replace_checks: bool = False,
                               wait: bool = True) -> None:
        for d in defn.checks:
            self._validate_check(d)
        dropped = self.local.add_service(defn.service, defn.checks, replace_checks)
        for cid in dropped:
            self.checks.remove(cid)
        for d in defn.checks:
            self.checks.add(d)
        await self._commit(wait)

    def _validate_check(self, d: CheckDefinition) -> None:
        if d.Type == "script" and not self.config.enable_script_checks:
            raise DefinitionError("Scripts are disabled on this agent; to enable, configure "
                                  "'enable_script_checks' to true")

    async def deregister_service(self, sid: str) -> None:
        for cid in self.local.remove_service(sid):
            self.checks.remove(cid)
        await self._commit(True)

    async def register_check(self, d: CheckDefinition, wait: bool = True) -> None:
        self._validate_check(d)
        self.local.add_check(d)
        self.checks.add(d)
        await self._commit(wait)

    async def deregister_check(self, cid: str) -> None:
        self.local.remove_check(cid)
        self.checks.remove(cid)
        await self._commit(True)

    async def update_ttl(self, cid: str, status: str, output: str) -> None:
        lc = self.local.checks.get(cid)
        if lc is None or lc.definition is None:
            raise UnknownCheck(cid)
        if lc.definition.Type != "ttl":
            raise UnknownCheck(cid)
        self.checks.update_ttl(cid, status, output)
        await self._commit(True)

    async def service_maintenance(self, sid: str, enable: bool, reason: str) -> None:
        self.local.set_service_maintenance(sid, enable, reason)
        await self._commit(True)

    async def node_maintenance(self, enable: bool, reason: str) -> None:
        self.local.set_node_maintenance(enable, reason)
        await self._commit(True)

    def _on_check_update(self, cid: str, status: str, output: str) -> None:
        lc = self.local.checks.get(cid)
        if lc is None:
            return
        if status == HEALTH_CRITICAL and lc.check.Status != HEALTH_CRITICAL:
            lc.critical_since = time.monotonic()
        elif status != HEALTH_CRITICAL:
            lc.critical_since = None
        self.local.set_status(cid, status, output)

    def _alias_source(self, node: str | None, service_id: str) -> list[HealthCheck] | None:
        if node in (None, "", self.config.node_name):
            if service_id not in self.local.services:
                return None
            return [lc.check for lc in self.local.checks.values()
                    if lc.check.ServiceID == service_id]
        if self.store is None:
            return None
        with self.store.lock:
            if service_id not in self.store.services.get(node, {}):
                return None
            return [c for c in self.store.checks.get(node, {}).values()
                    if c.ServiceID in ("", service_id)]

    async def _reap_critical(self) -> None:
        """deregister_critical_service_after: no zombie registrations."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for lc in list(self.local.checks.values()):
                d = lc.definition
                if d is None or not d.DeregisterCriticalServiceAfter or not d.ServiceID:
                    continue
                if lc.check.Status == HEALTH_CRITICAL and lc.critical_since is None:
                    lc.critical_since = now
                if lc.critical_since is not None and \
                        now - lc.critical_since >= d.DeregisterCriticalServiceAfter and \
                        d.ServiceID in self.local.services:
                    log.info("deregistering service %s: check %s critical for too long",
                             d.ServiceID, d.CheckID)
                    await self.deregister_service(d.ServiceID)

    # ---- introspection --------------------------------------------------------------------

    async def members(self) -> list[dict[str, Any]]:
        cfg = self.config
        return [{
            "Name": cfg.node_name, "Addr": self.address, "Port": cfg.ports.raft,
            "Tags": {"role": "consul" if (cfg.server or cfg.dev) else "node",
                     "dc": cfg.datacenter, "build": __version__, "id": self.local.node_id,
                     "port": str(cfg.ports.server), "vsn": "2"},
            "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        }]

    def self_info(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "Config": {"Datacenter": cfg.datacenter, "NodeName": cfg.node_name,
                       "NodeID": self.local.node_id, "Server": bool(cfg.server or cfg.dev),
                       "Revision": "", "Version": __version__, "PrimaryDatacenter":
                       cfg.datacenter},
            "DebugConfig": {},
            "Member": (self._members_now()),
            "Meta": dict(cfg.node_meta),
            "xDS": {"Port": cfg.ports.grpc},
        }

    def _members_now(self) -> dict[str, Any]:
        return {"Name": self.config.node_name, "Addr": self.address,
                "Port": self.config.ports.raft, "Status": 1}
