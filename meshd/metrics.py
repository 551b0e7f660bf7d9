"""Agent metrics, exported in Prometheus' text format and Consul's JSON shape.

Hot paths (DNS, HTTP, Raft applies) only bump plain integers; the numbers become metric
families at scrape time, through one prometheus_client collector, so measuring costs the hot
path almost nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any


class Stats:
    """Counters shared by the components of one agent."""

    def __init__(self) -> None:
        self.http = Counter[tuple[str, int]]()  # (method, status) -> requests
        # read at scrape time from the components that own the numbers
        self.counters: dict[str, Callable[[], float]] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        #: gauges under their full dotted name, Consul's where it has one (consul.server.isLeader):
        #: Prometheus sees the name with dots as underscores, as Consul's own exporter does
        self.named_gauges: dict[str, Callable[[], float]] = {}


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
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
                yield GaugeMetricFamily(name.replace(".", "_"), name, value=fn())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)


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
    return {
        "Timestamp": time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime()),
        "Gauges": gauges,
        "Counters": counters,
        "Samples": [],
    }
