"""Agent metrics, exported in Prometheus' text format and Consul's JSON shape.

Hot paths (DNS, HTTP, Raft applies) only bump plain integers; the numbers become metric
families at scrape time, through one prometheus_client collector, so measuring costs the hot
path almost nothing.
"""

from __future__ import annotations

import gc
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

_PROM_BAD = re.compile(r"[^a-zA-Z0-9_:]")


#: quantiles of a timer in the Prometheus output, over its most recent observations
QUANTILES = (0.5, 0.9, 0.99)
RECENT = 256


class Timer:
    """Durations in milliseconds, Consul's timer: count and sum since start, and the latest
    RECENT observations for min, max, deviation and quantiles. `observe` is two additions and a
    bounded deque append, so hot paths (every HTTP request, every DNS question) can afford it."""

    __slots__ = ("count", "recent", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)

    def observe(self, ms: float) -> None:
        self.count += 1
        self.sum += ms
        self.recent.append(ms)

    def since(self, started: float) -> None:
        """Observe the time since `started` (a time.perf_counter() reading)."""
        self.observe((time.perf_counter() - started) * 1000.0)

    def quantile(self, q: float) -> float:
        values = sorted(self.recent)
        if not values:
            return math.nan
        return values[min(len(values) - 1, int(q * len(values)))]

    def to_json(self, name: str, elapsed_s: float) -> dict[str, Any]:
        """One entry of Consul's `Samples`: Count, Sum, Mean and Rate (Sum per second, over
        `elapsed_s`) since start; Min, Max and Stddev over the recent observations."""
        n = self.count
        recent = list(self.recent)
        mean = sum(recent) / len(recent) if recent else 0.0
        var = sum((x - mean) ** 2 for x in recent) / len(recent) if recent else 0.0
        return {
            "Name": name,
            "Count": n,
            "Sum": self.sum,
            "Min": min(recent, default=0.0),
            "Max": max(recent, default=0.0),
            "Mean": self.sum / n if n else 0.0,
            "Stddev": math.sqrt(var),
            "Rate": self.sum / elapsed_s if elapsed_s > 0 else 0.0,
            "Labels": {},
        }


class Stats:
    """Counters shared by the components of one agent."""

    def __init__(self) -> None:
        self.http = Counter[tuple[str, int]]()  # (method, status) -> requests
        self.started = time.monotonic()
        #: timers and counters under their full dotted name (consul.raft.commitTime)
        self.timers: dict[str, Timer] = {}
        self.named_counters: dict[str, Callable[[], float]] = {}
        #: (method, route resource) -> its consul.http.* timer (agent/http/http_metrics.py)
        self.route_timers: dict[tuple[str, Any], Timer] = {}
        # read at scrape time from the components that own the numbers
        self.counters: dict[str, Callable[[], float]] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        #: gauges under their full dotted name, Consul's where it has one (consul.server.isLeader):
        #: Prometheus sees the name with dots as underscores, as Consul's own exporter does
        self.named_gauges: dict[str, Callable[[], float]] = {}

    def timer(self, name: str) -> Timer:
        """The timer called `name`, made on first use."""
        t = self.timers.get(name)
        if t is None:
            t = self.timers[name] = Timer()
        return t


GC_PAUSE = "meshd.runtime.gc_pause"  # every collection (ms); Consul's runtime.gc_pause_ns
GC_FULL_PAUSE = "meshd.runtime.gc_full_pause"  # the oldest generation's: the long ones


def watch_gc(stats: Stats) -> Callable[[], None]:
    """Time CPython's collections into `stats`; returns the function that stops it.

    A full collection holds the GIL while it walks every tracked object, so it stalls every
    request and the Raft thread alike; on a big catalog that was the longest pause a server had
    (issue 13). Exported, it explains a latency spike no other metric does.
    """
    every, full = stats.timer(GC_PAUSE), stats.timer(GC_FULL_PAUSE)
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000.0
        every.observe(ms)
        if info.get("generation") == 2:
            full.observe(ms)

    gc.callbacks.append(on_gc)
    return lambda: gc.callbacks.remove(on_gc)


# gauge name -> attribute of the server's Raft snapshot writer (server/compaction.py)
SNAPSHOT_GAUGES = {
    "snapshot_build_seconds": "build_seconds",  # view + encode + write + fsync, off the Raft thread
    "snapshot_bytes": "bytes",  # the file on disk (gzip)
    "snapshot_view_seconds": "view_seconds",  # what the Raft thread spent: writes waited this long
}


def snapshot_figure(server: Any, attr: str) -> float:
    """One figure of the last snapshot a server wrote; 0 before the first (or without data_dir:
    dev mode's in-memory Raft compacts on its own thread, as pysyncobj does)."""
    raft = getattr(server, "raft", None)
    writer = getattr(raft, "snapshots", None)
    return float(getattr(writer, attr, 0) or 0)


def prometheus_text(stats: Stats) -> bytes:
    """prometheus_client is imported on the first scrape: an agent nobody scrapes stays light."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

    class Collector:
        def collect(self) -> Iterable[Any]:
            s = stats
            http = CounterMetricFamily(
                "meshd_http_requests", "HTTP API requests", labels=["method", "code"]
            )
            for (method, code), n in sorted(s.http.items()):
                http.add_metric([method, str(code)], n)
            yield http
            for name, fn in sorted(s.counters.items()):
                yield CounterMetricFamily(f"meshd_{name}", name.replace("_", " "), value=fn())
            for name, fn in sorted(s.gauges.items()):
                yield GaugeMetricFamily(f"meshd_{name}", name.replace("_", " "), value=fn())
            for name, fn in sorted(s.named_gauges.items()):
                yield GaugeMetricFamily(prom_name(name), name, value=fn())
            for name, fn in sorted(s.named_counters.items()):
                yield CounterMetricFamily(prom_name(name), name, value=fn())
            for name, t in sorted(s.timers.items()):
                # a summary in milliseconds, as Consul's Prometheus sink exports its timers
                fam = SummaryMetricFamily(prom_name(name), f"{name} (ms)", labels=["quantile"])
                for q in QUANTILES:
                    fam.add_sample(prom_name(name), {"quantile": str(q)}, t.quantile(q))
                fam.add_sample(prom_name(name) + "_sum", {}, t.sum)
                fam.add_sample(prom_name(name) + "_count", {}, t.count)
                yield fam

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


def prom_name(dotted: str) -> str:
    """Consul's Prometheus names: every character Prometheus refuses becomes `_`."""
    return _PROM_BAD.sub("_", dotted)


def consul_json(stats: Stats) -> dict[str, Any]:
    """Consul's /v1/agent/metrics shape: Timestamp, Gauges, Counters, Samples."""
    counters = [
        {"Name": f"meshd.http.requests.{m}.{c}", "Count": n, "Sum": n}
        for (m, c), n in sorted(stats.http.items())
    ]
    for k, fn in sorted(stats.counters.items()):
        n = fn()
        counters.append({"Name": f"meshd.{k.replace('_', '.')}", "Count": n, "Sum": n})
    gauges = [
        {"Name": f"meshd.{k.replace('_', '.')}", "Value": fn()}
        for k, fn in sorted(stats.gauges.items())
    ]
    gauges += [{"Name": k, "Value": fn()} for k, fn in sorted(stats.named_gauges.items())]
    for k, fn in sorted(stats.named_counters.items()):
        n = fn()
        counters.append({"Name": k, "Count": n, "Sum": n})
    return {
        "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime()),
        "Gauges": gauges,
        "Counters": counters,
        "Samples": [
            t.to_json(k, time.monotonic() - stats.started)
            for k, t in sorted(stats.timers.items())
            if t.count
        ],
    }
