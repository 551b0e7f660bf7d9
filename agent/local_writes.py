"""The agent's local write paths: services, checks, TTLs, maintenance, and the server operations
(snapshot, restore, removing a peer) that an agent with a server in it answers.

They change local state first and then wait for anti-entropy to commit the change, so a 200 means
the catalog has it. Kept apart from the agent's lifecycle (agent/agent.py) so each module holds one
job; `Agent` inherits them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from meshd.agent.antientropy import AntiEntropy
from meshd.agent.checks import CheckRunner
from meshd.agent.definitions import CheckDefinition, DefinitionError, ServiceDefinition
from meshd.agent.local import LocalState, UnknownCheckError
from meshd.agent.persist import Persisted
from meshd.agent.sidecar import expand_sidecar
from meshd.config import Config
from meshd.rpc import PeerChange
from meshd.server.cluster import Server
from meshd.server.snapshot import encode as encode_snapshot
from meshd.structs import HEALTH_CRITICAL, Barrier, HealthCheck

log = logging.getLogger("meshd.agent")


class LocalWrites:
    """Registration and check paths of the agent (mixed into `Agent`, which sets these)."""

    config: Config
    local: LocalState
    checks: CheckRunner
    persisted: Persisted
    ae: AntiEntropy
    server: Server | None

    async def _commit(self, wait: bool) -> None:
        if wait and not await self.ae.wait_synced():
            log.warning("change accepted locally; catalog sync pending: %s", self.ae.last_error)

    async def register_service(
        self,
        defn: ServiceDefinition,
        replace_checks: bool = False,
        wait: bool = True,
        persist: bool = True,
        local: bool = False,
    ) -> None:
        """`local`: the definition comes from a config file (enable_local_script_checks)."""
        used = {
            s.Port
            for s in self.local.services.values()
            if s.Kind == "connect-proxy" and f"{defn.service.ID}-sidecar-proxy" != s.ID
        }
        sidecar = expand_sidecar(defn, used)
        await self._register_one(defn, replace_checks, persist, local)
        if sidecar is not None:
            await self._register_one(sidecar, replace_checks, False, local)
        await self._commit(wait)

    async def _register_one(
        self, defn: ServiceDefinition, replace_checks: bool, persist: bool, local: bool
    ) -> None:
        for d in defn.checks:
            self._validate_check(d, local)
        dropped = self.local.add_service(defn.service, defn.checks, replace_checks)
        for cid in dropped:
            self.checks.remove(cid)
        for d in defn.checks:
            self.checks.add(d)
        if persist:
            self.persisted.put_service(defn.service.ID, defn.raw)

    def _validate_check(self, d: CheckDefinition, local: bool = False) -> None:
        cfg = self.config
        if d.Type == "script" and not (
            cfg.enable_script_checks or (local and cfg.enable_local_script_checks)
        ):
            raise DefinitionError(
                "Scripts are disabled on this agent; to enable, configure "
                "'enable_script_checks' or 'enable_local_script_checks' to true"
            )

    async def deregister_service(self, sid: str, wait: bool = True) -> None:
        sidecar = f"{sid}-sidecar-proxy"
        for s in [sid, sidecar] if sidecar in self.local.services else [sid]:
            for cid in self.local.remove_service(s):
                self.checks.remove(cid)
            self.persisted.drop_service(s)
        await self._commit(wait)

    async def register_check(
        self, d: CheckDefinition, wait: bool = True, persist: bool = True, local: bool = False
    ) -> None:
        self._validate_check(d, local)
        self.local.add_check(d)
        self.checks.add(d)
        if persist:
            self.persisted.put_check(d.CheckID, d.raw)
        await self._commit(wait)

    async def deregister_check(self, cid: str) -> None:
        self.local.remove_check(cid)
        self.checks.remove(cid)
        self.persisted.drop_check(cid)
        await self._commit(True)

    async def update_ttl(self, cid: str, status: str, output: str) -> None:
        lc = self.local.checks.get(cid)
        if lc is None or lc.definition is None:
            raise UnknownCheckError(cid)
        if lc.definition.Type != "ttl":
            raise UnknownCheckError(cid)
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
            return [
                lc.check for lc in self.local.checks.values() if lc.check.ServiceID == service_id
            ]
        if self.server is None:
            return None
        store = self.server.store
        with store.lock:
            if service_id not in store.services.get(node, {}):
                return None
            return [
                c for c in store.checks.get(node, {}).values() if c.ServiceID in ("", service_id)
            ]

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
                if (
                    lc.critical_since is not None
                    and now - lc.critical_since >= d.DeregisterCriticalServiceAfter
                    and d.ServiceID in self.local.services
                ):
                    log.info(
                        "deregistering service %s: check %s critical for too long",
                        d.ServiceID,
                        d.CheckID,
                    )
                    await self.deregister_service(d.ServiceID)

    def _require_server(self) -> Server:
        if self.server is None or self.server.raft is None:
            raise DefinitionError("this operation needs a server agent; run it against a server")
        return self.server

    def server_name(self, raft_addr: str) -> str:
        if self.server is not None and raft_addr in (self.server.raft_addr, self.server.rpc_addr):
            return self.config.node_name
        host = raft_addr.rsplit(":", 1)[0]
        if self.server is not None:
            with self.server.store.lock:
                for n in self.server.store.nodes.values():
                    if n.Address == host and n.Meta.get("meshd-server") == "true":
                        return n.Node
        return host

    async def remove_peer(self, addr: str) -> None:
        server = self._require_server()
        await server.change_peer(PeerChange(RaftAddr=server.raft_of(addr), Remove=True))

    async def snapshot(self) -> tuple[int, bytes]:
        """A consistent point-in-time copy: a barrier first, so every committed write is in."""
        server = self._require_server()
        await server.write(Barrier())
        view = server.store.snapshot_view()  # cheap; the encoding runs beside the event loop
        return view.index, await asyncio.to_thread(encode_snapshot, view)

    async def restore(self, data: bytes) -> None:
        await self._require_server().restore(data)
