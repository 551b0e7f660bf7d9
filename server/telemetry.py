"""The datacenter's service graph: agents' sidecar reports, kept in memory on every server.

Not in Raft: metrics are many small, loss-tolerant writes that would swamp the log and
snapshots; a server that restarts starts with an empty graph and refills within one collection
interval. Every server holds the whole graph (a report is forwarded once to the other servers),
so any server answers a graph read and a leader change loses nothing (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from meshd.rpc import encoder
from meshd.rpc_client import RPCError
from meshd.server.telemetry_auth import ReportRefusedError, check_report
from meshd.telemetry import Sample, TelemetryReport, golden

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.telemetry")

HISTORY_S = 900.0
STEP_S = 10.0
DEFAULT_WINDOW_S = 30.0
MAX_SIDECARS_PER_REPORT = 1000


class GraphRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of the `telemetry_graph` RPC."""

    Window: float = DEFAULT_WINDOW_S
    History: bool = False


class ForwardedReport(msgspec.Struct, frozen=True, kw_only=True):
    """Body of the `telemetry_report` RPC; Forwarded: from a server, so not passed on again."""

    Report: TelemetryReport
    Forwarded: bool = False
    #: the sending agent's ACL token (acl.tokens.agent), checked on every server it reaches
    Token: str = ""


#: (received at, reporter, sample)
_Entry = tuple[float, str, Sample]


class TelemetryGraph:
    """Samples per edge and per service inbound side, for HISTORY_S seconds."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str], deque[_Entry]] = defaultdict(deque)
        self._inbound: dict[str, deque[_Entry]] = defaultdict(deque)
        self._protocol: dict[tuple[str, str], str] = {}
        self._instances: dict[str, dict[str, float]] = defaultdict(dict)  # service -> reporter

    def ingest(self, report: TelemetryReport, now: float) -> None:
        for sc in report.sidecars[:MAX_SIDECARS_PER_REPORT]:
            reporter = f"{report.node}/{sc.proxy_id}"
            self._instances[sc.service][reporter] = now
            for e in sc.edges:
                key = (e.source, e.destination)
                self._edges[key].append((now, reporter, e))
                self._protocol[key] = e.protocol
            if sc.inbound is not None:
                self._inbound[sc.service].append((now, reporter, sc.inbound))
        self.prune(now)

    def edge_count(self) -> int:
        return len(self._edges)

    def prune(self, now: float) -> None:
        cutoff = now - HISTORY_S
        _prune(self._edges, cutoff)
        _prune(self._inbound, cutoff)
        for key in [k for k in self._protocol if k not in self._edges]:
            del self._protocol[key]
        for svc in list(self._instances):
            seen = {r: t for r, t in self._instances[svc].items() if t >= cutoff}
            if seen:
                self._instances[svc] = seen
            else:
                del self._instances[svc]

    def view(self, now: float, window_s: float, history: bool = False) -> dict[str, Any]:
        """The graph as the API shows it; rates over the last `window_s` seconds."""
        services = sorted(set(self._instances) | set(self._inbound) | _ends(self._edges))
        out_services = []
        for svc in services:
            entry: dict[str, Any] = {
                "Name": svc,
                "Reporters": len(self._instances.get(svc, {})),
                "Inbound": _golden(self._inbound.get(svc, ()), now, window_s),
            }
            if history:
                entry["History"] = _history(self._inbound.get(svc, ()), now)
            out_services.append(entry)
        edges = []
        for (src, dst), q in sorted(self._edges.items()):
            edge: dict[str, Any] = {
                "Source": src,
                "Destination": dst,
                "Protocol": self._protocol.get((src, dst), "tcp"),
                "Metrics": _golden(q, now, window_s),
            }
            if history:
                edge["History"] = _history(q, now)
            edges.append(edge)
        return {
            "WindowSeconds": window_s,
            "StepSeconds": STEP_S,
            "Services": out_services,
            "Edges": edges,
        }


def _prune(table: dict[Any, deque[_Entry]], cutoff: float) -> None:
    for key in list(table):
        q = table[key]
        while q and q[0][0] < cutoff:
            q.popleft()
        if not q:
            del table[key]


def _ends(edges: Iterable[tuple[str, str]]) -> set[str]:
    return {name for pair in edges for name in pair}


def _by_reporter(entries: Iterable[_Entry], start: float, end: float) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for at, reporter, s in entries:
        if start < at <= end:
            out[reporter].append(s)
    return out


def _golden(entries: Iterable[_Entry], now: float, window_s: float) -> dict[str, Any]:
    return golden(_by_reporter(entries, now - window_s, now)).to_json()


def _history(entries: Iterable[_Entry], now: float) -> list[dict[str, Any]]:
    """Golden metrics per STEP_S step, oldest first, for the steps that have samples."""
    rows = list(entries)
    if not rows:
        return []
    end = (now // STEP_S + 1) * STEP_S
    first = (rows[0][0] // STEP_S) * STEP_S
    out = []
    t = first
    while t < end:
        by = _by_reporter(rows, t, t + STEP_S)
        if by:
            out.append({"Time": t + STEP_S, **golden(by).to_json()})
        t += STEP_S
    return out


_GRAPHS: weakref.WeakKeyDictionary[Server, TelemetryGraph] = weakref.WeakKeyDictionary()


def graph_of(server: Server) -> TelemetryGraph:
    """The server's graph (kept beside it, so the Server class needs no telemetry field)."""
    g = _GRAPHS.get(server)
    if g is None:
        g = _GRAPHS[server] = TelemetryGraph()
    return g


def accept_report(
    server: Server, report: TelemetryReport, *, forward: bool = True, token: str | None = None
) -> None:
    """Keep a report its node may send (server/telemetry_auth.py; ReportRefusedError if
    not), and pass it on to the other servers (fire and forget), which check it again.

    token: the sender's ACL token; None for the agent inside this server.
    """
    check_report(server, report, token)
    graph_of(server).ingest(report, time.time())
    if not forward:
        return
    others = sorted(set(server.known.values()) - {server.rpc_addr})
    for addr in others:
        asyncio.get_running_loop().create_task(_forward(server, addr, report, token))


async def _forward(server: Server, addr: str, report: TelemetryReport, token: str | None) -> None:
    # the local agent's own reports travel with this server's agent token
    sent = token if token is not None else server.s.acl.tokens.agent
    body = ForwardedReport(Report=report, Forwarded=True, Token=sent or "")
    try:
        await server.rpc.call("telemetry_report", body, bool, timeout=5.0, addr=addr)
    except RPCError as e:
        log.debug("telemetry report not forwarded to %s: %s", addr, e)


def graph_view(server: Server, req: GraphRequest) -> dict[str, Any]:
    window = min(max(req.Window, STEP_S), HISTORY_S)
    return graph_of(server).view(time.time(), window, req.History)


def add_rpc_routes(app: web.Application, server: Server) -> None:
    """`telemetry_report` (agents, other servers) and `telemetry_graph` (client agents)."""

    async def report(request: web.Request) -> web.Response:
        body = msgspec.msgpack.decode(await request.read(), type=ForwardedReport)
        try:
            accept_report(server, body.Report, forward=not body.Forwarded, token=body.Token)
        except ReportRefusedError as e:
            return web.Response(status=403, text=f"{e}\n")
        return web.Response(body=encoder.encode(True), content_type="application/msgpack")

    async def graph(request: web.Request) -> web.Response:
        req = msgspec.msgpack.decode(await request.read(), type=GraphRequest)
        view = graph_view(server, req)
        return web.Response(body=encoder.encode(view), content_type="application/msgpack")

    app.router.add_post("/rpc/telemetry_report", report)
    app.router.add_post("/rpc/telemetry_graph", graph)
