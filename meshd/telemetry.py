"""Envoy admin stats -> per-edge golden metrics: pure functions, no I/O.

A sidecar's stats name its edges through the stat prefixes meshd's translators set
(proxy/listeners.py): the upstream listener of destination D has listener, HTTP connection
manager and TCP proxy stats under `upstream.D`, the public listener under `public_listener`,
and the inbound L4 RBAC filter under `connect_authz`. So every outbound edge is measured where
the request starts (the caller's sidecar sees the whole round trip, its 5xx and the destination's
RBAC 403s) and every service's inbound side by its own sidecars.

Counters are turned into deltas between two scrapes of the same Envoy; a counter that went down
means Envoy restarted, and the new value is then the delta (everything since the restart).
Latency percentiles come from the deltas of Envoy's cumulative histogram buckets, which also lets
the servers merge several instances' samples exactly before taking percentiles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec

#: Only the stats the edges are made of: Envoy filters them (RE2), which keeps its answer and
#: the agent's copy of the last scrape small; the parser applies the same filter.
STATS_FILTER = (
    r"^(server\.uptime"
    r"|(http|listener|tcp)\.(upstream\..+|public_listener)\.(downstream|rbac)"
    r"|connect_authz\.rbac\."
    r"|cluster\..+\.upstream_rq_403$)"
)
_KEEP = re.compile(STATS_FILTER)
#: The admin path the collector reads: counters, gauges and histogram buckets in one answer.
STATS_PATH = "/stats?format=json&histogram_buckets=cumulative&filter=" + quote(
    STATS_FILTER, safe=""
)
UPSTREAM_PREFIX = "upstream."
PUBLIC_PREFIX = "public_listener"
L4_RBAC_PREFIX = "connect_authz"

UPTIME = "server.uptime"
#: uptime is whole seconds and scrapes are not instantaneous
UPTIME_SLACK_S = 2.0
_PER_THREAD = re.compile(r"\.(worker_\d+|main_thread)$")
#: (upper bound in ms, count) pairs, ascending; a histogram delta or a cumulative snapshot.
Buckets = tuple[tuple[float, int], ...]


class StatsFormatError(ValueError):
    """The admin answer is not Envoy's JSON stats format (wrong endpoint, old Envoy, garbage)."""


@dataclass(frozen=True)
class Scrape:
    """One reading of one Envoy: every stat value by name and every histogram's buckets."""

    at: float
    values: Mapping[str, float]
    histograms: Mapping[str, Buckets]


class EdgeSample(msgspec.Struct, frozen=True, kw_only=True):
    """What one sidecar saw on one edge during `interval_s` (deltas; gauges as read)."""

    source: str
    destination: str
    protocol: str  # "http" or "tcp"
    interval_s: float
    requests: int = 0
    errors_5xx: int = 0
    denied_4xx: int = 0  # 403s: the destination's RBAC answers them (or the app itself)
    connections: int = 0
    active_connections: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    latency: Buckets = ()


class InboundSample(msgspec.Struct, frozen=True, kw_only=True):
    """What one sidecar saw on its public listener during `interval_s`."""

    service: str
    protocol: str
    interval_s: float
    requests: int = 0
    errors_5xx: int = 0
    rbac_denied: int = 0
    connections: int = 0
    active_connections: int = 0
    latency: Buckets = ()


class SidecarReport(msgspec.Struct, frozen=True, kw_only=True):
    """One sidecar's interval, as an agent sends it to the servers."""

    proxy_id: str
    service: str
    node: str
    at: float
    edges: list[EdgeSample] = []
    inbound: InboundSample | None = None


class TelemetryReport(msgspec.Struct, frozen=True, kw_only=True):
    """The body of the Telemetry.Report RPC: every local sidecar of one agent."""

    node: str
    sidecars: list[SidecarReport] = []


def parse_admin_stats(doc: Any, at: float) -> Scrape:
    """Envoy's `/stats?format=json&histogram_buckets=cumulative` answer -> Scrape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("stats"), list):
        raise StatsFormatError("Envoy admin stats: expected an object with a `stats` list")
    values: dict[str, float] = {}
    hists: dict[str, Buckets] = {}
    for item in doc["stats"]:
        if not isinstance(item, dict):
            raise StatsFormatError(f"Envoy admin stats: unexpected entry {item!r:.80}")
        if "histograms" in item:
            hists.update(_parse_histograms(item["histograms"]))
            continue
        name, value = item.get("name"), item.get("value")
        if isinstance(name, str) and isinstance(value, int | float) and _KEEP.match(name):
            values[name] = value
        # text stats (version_text) carry strings: not metrics
    return Scrape(at=at, values=values, histograms=hists)


def _parse_histograms(h: Any) -> dict[str, Buckets]:
    if isinstance(h, dict):  # quantile format: the collector asked for buckets, so none here
        raise StatsFormatError(
            "Envoy admin stats: histograms as quantiles; ask for histogram_buckets=cumulative"
        )
    if not isinstance(h, list):
        raise StatsFormatError("Envoy admin stats: `histograms` is neither a list nor an object")
    out: dict[str, Buckets] = {}
    for entry in h:
        if not isinstance(entry, dict) or not _KEEP.match(str(entry.get("name", ""))):
            continue
        try:
            out[entry["name"]] = tuple(
                (float(b["upper_bound"]), int(b["cumulative"])) for b in entry["buckets"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StatsFormatError(f"Envoy admin stats: bad histogram entry ({e})") from None
    return out


def counter_delta(prev: float | None, cur: float) -> int:
    """A counter that went down means Envoy restarted: everything since is the new value."""
    if prev is None or cur < prev:
        return int(cur)
    return int(cur - prev)


def buckets_delta(prev: Buckets | None, cur: Buckets) -> Buckets:
    """Per-bucket deltas of cumulative histograms; a reset in any bucket resets them all."""
    if prev is None or len(prev) != len(cur):
        return cur
    if any(c < p for (_, p), (_, c) in zip(prev, cur, strict=True)):
        return cur
    return tuple((ub, c - p) for (ub, p), (_, c) in zip(prev, cur, strict=True))


def merge_buckets(parts: Iterable[Buckets]) -> Buckets:
    """Sum histograms with the same bounds (Envoy's defaults); differing bounds are unioned."""
    acc: dict[float, int] = {}
    for part in parts:
        for ub, n in part:
            acc[ub] = acc.get(ub, 0) + n
    return tuple(sorted(acc.items()))


def percentile(buckets: Buckets, q: float) -> float | None:
    """The q-quantile (0..1) in ms of a cumulative-count histogram, linear inside a bucket.

    Envoy's buckets count samples <= upper_bound; the value is interpolated between the
    previous bound and this one, as Prometheus' histogram_quantile does. None: no samples.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0
    for ub, count in buckets:
        if count >= rank and count > below:
            return lower + (ub - lower) * (rank - below) / (count - below)
        lower, below = ub, count
    return buckets[-1][0]


def _d(prev: Scrape | None, cur: Scrape, name: str) -> int:
    return counter_delta(prev.values.get(name) if prev else None, cur.values.get(name, 0))


def _h(prev: Scrape | None, cur: Scrape, name: str) -> Buckets:
    hist = cur.histograms.get(name)
    if hist is None:
        return ()
    return buckets_delta(prev.histograms.get(name) if prev else None, hist)


def upstream_destinations(scrape: Scrape) -> dict[str, str]:
    """destination service -> protocol, from the upstream listeners' stats names."""
    out: dict[str, str] = {}
    lp = f"listener.{UPSTREAM_PREFIX}"
    for name in scrape.values:
        if name.startswith(lp) and name.endswith(".downstream_cx_total"):
            rest = name[len(lp) : -len(".downstream_cx_total")]
            if _PER_THREAD.search(rest):
                continue  # per-worker copy of the listener stat
            http = f"http.{UPSTREAM_PREFIX}{rest}.downstream_rq_completed" in scrape.values
            out[rest] = "http" if http else "tcp"
    return out


def edge_sample(
    source: str, dest: str, protocol: str, prev: Scrape | None, cur: Scrape
) -> EdgeSample:
    pre = f"{UPSTREAM_PREFIX}{dest}"
    interval = cur.at - prev.at if prev else 0.0
    active = int(cur.values.get(f"listener.{pre}.downstream_cx_active", 0))
    if protocol == "http":
        h = f"http.{pre}"
        return EdgeSample(
            source=source,
            destination=dest,
            protocol=protocol,
            interval_s=interval,
            requests=_d(prev, cur, f"{h}.downstream_rq_completed"),
            errors_5xx=_d(prev, cur, f"{h}.downstream_rq_5xx"),
            denied_4xx=_cluster_403(prev, cur, dest),
            connections=_d(prev, cur, f"{h}.downstream_cx_total"),
            active_connections=active,
            rx_bytes=_d(prev, cur, f"{h}.downstream_cx_rx_bytes_total"),
            tx_bytes=_d(prev, cur, f"{h}.downstream_cx_tx_bytes_total"),
            latency=_h(prev, cur, f"{h}.downstream_rq_time"),
        )
    t = f"tcp.{pre}"
    return EdgeSample(
        source=source,
        destination=dest,
        protocol=protocol,
        interval_s=interval,
        connections=_d(prev, cur, f"{t}.downstream_cx_total"),
        active_connections=active,
        rx_bytes=_d(prev, cur, f"{t}.downstream_cx_rx_bytes_total"),
        tx_bytes=_d(prev, cur, f"{t}.downstream_cx_tx_bytes_total"),
    )


def _cluster_403(prev: Scrape | None, cur: Scrape, dest: str) -> int:
    """The HTTP connection manager counts status classes only; the destination's clusters
    (`dest.<ns>.<dc>.internal.<trust domain>` and chain subsets of it) count each code."""
    total = 0
    for name in cur.values:
        if name.startswith("cluster.") and name.endswith(".upstream_rq_403"):
            cluster = name[len("cluster.") : -len(".upstream_rq_403")]
            if cluster.endswith(".external") or ".internal." not in cluster:
                continue  # the same requests again, split by origin
            svc = cluster.split(".internal.", 1)[0].rsplit(".", 2)[0]
            if svc == dest or svc.endswith("." + dest):  # plain, or a chain subset of it
                total += _d(prev, cur, name)
    return total


def inbound_sample(service: str, prev: Scrape | None, cur: Scrape) -> InboundSample:
    h = f"http.{PUBLIC_PREFIX}"
    interval = cur.at - prev.at if prev else 0.0
    active = int(cur.values.get(f"listener.{PUBLIC_PREFIX}.downstream_cx_active", 0))
    if f"{h}.downstream_rq_completed" in cur.values:
        return InboundSample(
            service=service,
            protocol="http",
            interval_s=interval,
            requests=_d(prev, cur, f"{h}.downstream_rq_completed"),
            errors_5xx=_d(prev, cur, f"{h}.downstream_rq_5xx"),
            rbac_denied=_d(prev, cur, f"{h}.rbac.denied"),
            connections=_d(prev, cur, f"listener.{PUBLIC_PREFIX}.downstream_cx_total"),
            active_connections=active,
            latency=_h(prev, cur, f"{h}.downstream_rq_time"),
        )
    # mesh connections only: the agent's listening checks connect too but never finish TLS,
    # so they never reach the RBAC filter
    denied = _d(prev, cur, f"{L4_RBAC_PREFIX}.rbac.denied")
    return InboundSample(
        service=service,
        protocol="tcp",
        interval_s=interval,
        rbac_denied=denied,
        connections=denied + _d(prev, cur, f"{L4_RBAC_PREFIX}.rbac.allowed"),
        active_connections=active,
    )


def restarted(prev: Scrape, cur: Scrape) -> bool:
    """Envoy restarted between the scrapes: its uptime is short of what the time between them
    says. Catches the restart even when a counter has grown past its old value again."""
    was = prev.values.get(UPTIME)
    now = cur.values.get(UPTIME)
    if was is None or now is None:
        return False
    return now + UPTIME_SLACK_S < was + (cur.at - prev.at)


def sidecar_report(
    *, proxy_id: str, service: str, node: str, prev: Scrape | None, cur: Scrape
) -> SidecarReport:
    """The interval between two scrapes of one sidecar (prev None: its first scrape, which
    reports totals since Envoy started over an unknown interval, interval_s 0). Across a
    restart everything the new Envoy counted is the interval's, over the real time between."""
    if prev is not None and restarted(prev, cur):
        prev = Scrape(at=prev.at, values={}, histograms={})
    edges = [
        edge_sample(service, dest, proto, prev, cur)
        for dest, proto in sorted(upstream_destinations(cur).items())
    ]
    return SidecarReport(
        proxy_id=proxy_id,
        service=service,
        node=node,
        at=cur.at,
        edges=edges,
        inbound=inbound_sample(service, prev, cur),
    )


# --- aggregation (servers; also `meshd top` over what the API returns) -------------------------


@dataclass(frozen=True)
class Golden:
    """Golden metrics over a window: what the graph, `top` and the UI show."""

    rps: float
    success_rate: float | None  # non-5xx share of requests; None without requests
    p50_ms: float | None
    p99_ms: float | None
    rx_bytes_per_s: float
    tx_bytes_per_s: float
    connections_per_s: float
    active_connections: int
    denied_per_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "RequestsPerSecond": _round(self.rps),
            "SuccessRate": None if self.success_rate is None else _round(self.success_rate, 4),
            "P50Ms": None if self.p50_ms is None else _round(self.p50_ms),
            "P99Ms": None if self.p99_ms is None else _round(self.p99_ms),
            "RxBytesPerSecond": _round(self.rx_bytes_per_s),
            "TxBytesPerSecond": _round(self.tx_bytes_per_s),
            "ConnectionsPerSecond": _round(self.connections_per_s),
            "ActiveConnections": self.active_connections,
            "DeniedPerSecond": _round(self.denied_per_s),
        }


def _round(x: float, nd: int = 3) -> float:
    return round(x, nd) if math.isfinite(x) else 0.0


Sample = EdgeSample | InboundSample


def golden(by_reporter: Mapping[str, Sequence[Sample]]) -> Golden:
    """One edge's (or one service's inbound side's) metrics from every reporter's samples.

    Each reporter (a sidecar) covers its own intervals, so its rates divide by the time its
    samples span, and the reporters' rates add up: two web instances calling api at 5 rps each
    make 10 rps, whatever their scrape phases. Percentiles come from the merged histograms.
    """
    rps = rx = tx = cps = denied_ps = 0.0
    req = err = active = 0
    hists: list[Buckets] = []
    for samples in by_reporter.values():
        if samples:
            active += samples[-1].active_connections
        ss = [s for s in samples if s.interval_s > 0]
        span = sum(s.interval_s for s in ss)
        if not span:
            continue
        r = sum(s.requests for s in ss)
        req += r
        err += sum(s.errors_5xx for s in ss)
        rps += r / span
        cps += sum(s.connections for s in ss) / span
        denied_ps += sum(_denied(s) for s in ss) / span
        rx += sum(s.rx_bytes for s in ss if isinstance(s, EdgeSample)) / span
        tx += sum(s.tx_bytes for s in ss if isinstance(s, EdgeSample)) / span
        hists.extend(s.latency for s in ss)
    hist = merge_buckets(hists)
    return Golden(
        rps=rps,
        success_rate=(req - err) / req if req else None,
        p50_ms=percentile(hist, 0.5),
        p99_ms=percentile(hist, 0.99),
        rx_bytes_per_s=rx,
        tx_bytes_per_s=tx,
        connections_per_s=cps,
        active_connections=active,
        denied_per_s=denied_ps,
    )


def _denied(s: Sample) -> int:
    return s.denied_4xx if isinstance(s, EdgeSample) else s.rbac_denied
