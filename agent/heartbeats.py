"""The agent's heartbeats, and its wait until the servers know it is alive.

A heartbeat carries this node's coordinate and keyring view; its reply feeds them back and moves
the agent's own readiness. Kept apart from the agent's lifecycle (agent/agent.py) so each module
holds one job; `Agent` inherits them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from meshd import queries as q
from meshd.agent.antientropy import AntiEntropy
from meshd.agent.backend import CatalogBackend, RemoteBackend
from meshd.agent.coordinate_client import AgentCoordinate
from meshd.agent.keyring_client import AgentKeyring
from meshd.agent.liveness_client import HeartbeatLink
from meshd.agent.metrics_consul import HEARTBEAT_RTT
from meshd.config import Config
from meshd.metrics import Stats
from meshd.rpc import Heartbeat
from meshd.rpc_client import RPCClient, RPCError
from meshd.server.cluster import Server
from meshd.server.raft import RaftError
from meshd.server.store import CommandError
from meshd.structs import HEALTH_PASSING, SERF_CHECK_ID

log = logging.getLogger("meshd.agent")


class Heartbeats:
    """Heartbeat paths of the agent (mixed into `Agent`, which sets these)."""

    config: Config
    address: str
    server: Server | None
    backend: CatalogBackend
    rpc: RPCClient | None
    link: HeartbeatLink | None
    coordinate: AgentCoordinate
    keyring: AgentKeyring
    stats: Stats
    ae: AntiEntropy
    _heartbeat_ok: asyncio.Event

    def _heartbeat(self, leaving: bool = False) -> Heartbeat:
        cfg = self.config
        return Heartbeat(
            Node=cfg.node_name,
            Address=self.address,
            Datacenter=cfg.datacenter,
            Role="consul" if cfg.server else "node",
            RPCAddr=f"{self.address}:{cfg.ports.server}" if cfg.server else "",
            RaftAddr=self.server.raft_addr if self.server else "",
            Leaving=leaving,
        )

    async def _heartbeats(self) -> None:
        hb = self._heartbeat()
        beats = 0
        while True:
            try:
                hb.Coord = self.coordinate.coord.to_json()
                if self.server is not None:
                    self.keyring.follow(self.server.keys)
                hb.KeyringVersion = self.keyring.version
                hb.KeyFingerprints = self.keyring.fingerprints()
                sent = time.monotonic()
                reply = await self._send_heartbeat(hb)
                self.coordinate.observe(reply, time.monotonic() - sent)
                self.stats.timer(HEARTBEAT_RTT).observe((time.monotonic() - sent) * 1000.0)
                self.keyring.observe(reply, self.rpc)
                self._heartbeat_ok.set()
                beats += 1
                if isinstance(self.backend, RemoteBackend) and beats % 30 == 1:
                    await self.backend.refresh_servers()
                    if self.link is not None:
                        await self.link.rebalance()
            except Exception as e:
                log.debug("heartbeat failed: %s", e)
            await asyncio.sleep(1.0 if self._heartbeat_ok.is_set() else 0.1)

    async def _send_heartbeat(self, hb: Heartbeat) -> Any:
        """Over the heartbeat socket (a client agent), else by request: in-process on a server
        agent, and a client's fallback when no server takes the socket."""
        if self.link is not None:
            try:
                return await self.link.beat(hb)
            except RPCError as e:
                log.debug("heartbeat socket: %s", e)
        return await self.backend.heartbeat(hb)

    async def wait_ready(self, timeout: float = 10.0, sync: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while self.server is not None and (
            self.server.raft is None or not self.server.raft.ready()
        ):
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)
        if sync:
            await self.ae.wait_synced(max(deadline - time.monotonic(), 0.1))
        try:
            await asyncio.wait_for(self._heartbeat_ok.wait(), max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            log.warning("no server has answered a heartbeat yet")
            return
        await self._wait_node_alive(deadline)

    async def _wait_node_alive(self, deadline: float) -> None:
        """Until the leader's `serfHealth` verdict on this node is in the catalog: a user who
        reads /v1/agent/members or the node's checks right after start sees this node, as with
        Consul, whose agent joins Serf before it serves."""
        index = 0
        while (left := deadline - time.monotonic()) > 0:
            try:
                res = await self.backend.read(
                    q.NodeInfo(Node=self.config.node_name), min_index=index, wait=min(left, 5.0)
                )
            except (RaftError, CommandError) as e:
                log.debug("waiting for this node's serfHealth: %s", e)
                await asyncio.sleep(0.1)
                continue
            checks = res.value[2] if res.value else []
            if any(c.CheckID == SERF_CHECK_ID and c.Status == HEALTH_PASSING for c in checks):
                return
            index = res.index
