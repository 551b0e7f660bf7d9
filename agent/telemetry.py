"""Reads the local Envoys' admin stats on an interval and reports edge metrics to the servers.

The agent learns each Envoy's admin address from the node metadata of its ADS stream
(`meshd connect envoy` puts `-admin-bind` there), so only Envoys connected right now are read,
and no registration field has to be kept in sync with the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

import aiohttp

from meshd.rpc_client import RPCError
from meshd.server.telemetry import ForwardedReport, accept_report, graph_of
from meshd.server.telemetry_auth import ReportRefusedError
from meshd.telemetry import (
    STATS_PATH,
    Scrape,
    SidecarReport,
    StatsFormatError,
    TelemetryReport,
    parse_admin_stats,
    sidecar_report,
)

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

log = logging.getLogger("meshd.telemetry")

#: Collection interval; the env var is a tuning and test knob (docs/observability.md).
ENV_INTERVAL = "MESHD_TELEMETRY_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
SCRAPE_TIMEOUT_S = 2.0
FORGET_AFTER_S = 300.0


def interval_from_env() -> float:
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", ENV_INTERVAL, raw, 10)
        return DEFAULT_INTERVAL_S
    return max(value, 0.2)


def local_admin_url(addr: str) -> str:
    """A wildcard bind (0.0.0.0, ::) is read over loopback."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class TelemetryCollector:
    def __init__(self, agent: Agent, interval_s: float | None = None) -> None:
        self.agent = agent
        self.interval_s = interval_s or interval_from_env()
        self._prev: dict[str, Scrape] = {}
        self._seen: dict[str, float] = {}
        #: the last report sent, per proxy id: `meshd explain` reads recent errors here
        self.last: dict[str, SidecarReport] = {}
        self.scrapes = 0
        self.scrape_errors = 0
        self.reports_failed = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        ) as session:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.collect_once(session)
                except ReportRefusedError as e:  # the servers say this node may not send it
                    self.reports_failed += 1
                    log.warning("%s", e)
                except (RPCError, OSError) as e:
                    self.reports_failed += 1
                    log.debug("telemetry report failed: %s", e)
                except Exception:  # an odd Envoy answer must not end collection for good
                    self.reports_failed += 1
                    log.exception("telemetry collection failed; retrying next interval")

    def _service_of(self, proxy_id: str) -> str | None:
        svc = self.agent.local.services.get(proxy_id)
        if svc is None:
            return None
        proxy = svc.Proxy or {}
        return str(proxy.get("DestinationServiceName") or svc.Service)

    async def _scrape(self, session: aiohttp.ClientSession, addr: str) -> Scrape | None:
        try:
            async with session.get(local_admin_url(addr) + STATS_PATH) as resp:
                if resp.status != 200:
                    raise StatsFormatError(f"HTTP {resp.status}")
                doc = await resp.json(content_type=None)
            return parse_admin_stats(doc, time.monotonic())
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
            self.scrape_errors += 1
            log.debug("Envoy admin %s not read: %s", addr, e)
            return None

    async def collect_once(self, session: aiohttp.ClientSession) -> TelemetryReport:
        admin = self.agent.mesh.ads.admin_addresses()
        wanted = {pid: a for pid, a in admin.items() if self._service_of(pid) is not None}
        scrapes = await asyncio.gather(*(self._scrape(session, a) for a in wanted.values()))
        node = self.agent.config.node_name
        sidecars = []
        for pid, cur in zip(wanted, scrapes, strict=True):
            service = self._service_of(pid)
            if cur is None or service is None:
                continue
            self.scrapes += 1
            rep = sidecar_report(
                proxy_id=pid, service=service, node=node, prev=self._prev.get(pid), cur=cur
            )
            self._prev[pid] = cur
            self.last[pid] = rep
            sidecars.append(rep)
        now = time.monotonic()
        for pid in wanted:
            self._seen[pid] = now
        # a sidecar whose stream dropped keeps its last scrape a while: when it comes back
        # (reconnect, or an Envoy restart) the next delta covers the gap
        for gone in [p for p, t in self._seen.items() if now - t > FORGET_AFTER_S]:
            del self._seen[gone]
            self._prev.pop(gone, None)
            self.last.pop(gone, None)
        report = TelemetryReport(node=node, sidecars=sidecars)
        if sidecars:
            await self._send(report)
        return report

    async def _send(self, report: TelemetryReport) -> None:
        if self.agent.server is not None:
            accept_report(self.agent.server, report)
        elif self.agent.rpc is not None:
            body = ForwardedReport(Report=report, Token=self.agent.backend.token or "")
            try:
                await self.agent.rpc.call("telemetry_report", body, bool)
            except RPCError as e:
                if e.code == 403 and "telemetry report for node" in str(e):
                    raise ReportRefusedError(str(e)) from None
                raise


def register_metrics(agent: Agent) -> None:
    """Consul's names where Consul has the metric, `meshd.telemetry.*` for the collector."""
    g = agent.stats.named_gauges
    ads = agent.mesh.ads
    g["consul.xds.server.streams"] = lambda: ads.stream_count()
    g["meshd.xds.envoys"] = lambda: len(ads.admin_addresses())
    col = agent.telemetry
    if col is not None:
        g["meshd.telemetry.scrapes"] = lambda: col.scrapes
        g["meshd.telemetry.scrape_errors"] = lambda: col.scrape_errors
        g["meshd.telemetry.reports_failed"] = lambda: col.reports_failed
    server = agent.server
    if server is not None:
        g["consul.server.isLeader"] = lambda: float(bool(server.raft and server.raft.is_leader))
        g["consul.state.nodes"] = lambda: len(server.store.nodes)
        g["consul.state.services"] = lambda: len(server.store.by_name)
        graph = graph_of(server)
        g["meshd.telemetry.graph_edges"] = lambda: graph.edge_count()
