"""The agent's cost of reading 50 local Envoys' admin stats (issue 14's target: < 5% of a core
and < 20 MB extra at a 10 s interval).

The Envoys are stand-ins in a child process: each port answers with a real capture
(tests/fixtures/envoy/web-t1.json, ~130 kB, 1,500 stats and 60 histograms) whose counters grow
between reads. The collector here is the agent's own (meshd.agent.telemetry), reading, parsing
and deriving edges as in the agent; only the report to the servers is left out.

`--graph` also measures the time from traffic to the graph on a real mesh (a `-dev` agent, real
Envoys, web -> api as in tests/telemetry_mesh.py): once the edge is in the graph and quiet,
traffic starts, and the clock runs until `/v1/meshd/graph` shows web -> api with a non-zero
rate (`--trials` times). It is bounded by the collection interval (`--interval`, the agent's
MESHD_TELEMETRY_INTERVAL): the first reading after the traffic starts carries it. (A sidecar's
very first reading is only a baseline, so a brand-new sidecar takes up to one interval more.)

    python benchmarks/telemetry.py [--envoys 50] [--rounds 20] [--graph [--interval 10]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "envoy" / "web-t1.json"

SERVE = r"""
import asyncio, json, sys
from aiohttp import web
doc = json.load(open(sys.argv[1]))
ports = [int(p) for p in sys.argv[2:]]
reads = {"n": 0}
async def stats(request):
    reads["n"] += 1
    n = reads["n"]
    out = []
    for s in doc["stats"]:
        if "value" in s and isinstance(s["value"], int) and not s["name"].endswith("_active"):
            out.append({"name": s["name"], "value": s["value"] + n})
        else:
            out.append(s)
    return web.json_response({"stats": out})
async def main():
    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for p in ports:
        await web.TCPSite(runner, "127.0.0.1", p).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def run(envoys: int, rounds: int) -> dict[str, Any]:
    from meshd.agent.telemetry import TelemetryCollector
    from meshd.structs import NodeService
    from meshd.testing import free_ports

    ports = free_ports(envoys)
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(FIXTURE), *map(str, ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        admin = {f"web-{i}-sidecar-proxy": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
        services = {
            pid: NodeService(
                ID=pid,
                Service="web-sidecar-proxy",
                Kind="connect-proxy",
                Proxy={"DestinationServiceName": "web"},
            )
            for pid in admin
        }
        agent = SimpleNamespace(
            mesh=SimpleNamespace(ads=SimpleNamespace(admin_addresses=lambda: admin)),
            local=SimpleNamespace(services=services),
            config=SimpleNamespace(node_name="bench"),
            server=None,
            rpc=None,
        )
        col = TelemetryCollector(agent, interval_s=10)  # type: ignore[arg-type]
        rss0 = rss_kb()
        cpu: list[float] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await col.collect_once(session)  # warm-up: imports, first connections
            for _ in range(rounds):
                c0 = time.process_time()
                report = await col.collect_once(session)
                cpu.append(time.process_time() - c0)
                await asyncio.sleep(0.2)
        assert len(report.sidecars) == envoys, f"read {len(report.sidecars)} of {envoys}"
        cpu.sort()
        per_round = sum(cpu) / len(cpu)
        return {
            "envoys": envoys,
            "rounds": rounds,
            "cpu_ms_per_round_mean": round(per_round * 1000, 1),
            "cpu_ms_per_round_max": round(cpu[-1] * 1000, 1),
            "core_share_at_10s_interval_pct": round(per_round / 10 * 100, 2),
            "rss_growth_mb": round((rss_kb() - rss0) / 1024, 1),
            "scrape_errors": col.scrape_errors,
        }
    finally:
        child.terminate()
        child.wait(10)


def _edge_rate(agent: Any) -> float | None:
    """web -> api requests/s in the graph's last 10 s; None until the edge is in the graph."""
    graph = agent.get("/v1/meshd/graph?window=10s").json()
    for e in graph["Edges"]:
        if (e["Source"], e["Destination"]) == ("web", "api"):
            return float(e["Metrics"].get("RequestsPerSecond") or 0)
    return None


def _until(cond: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} within {limit_s:.0f} s")
        time.sleep(0.1)


def traffic_to_graph(interval_s: float, trials: int) -> dict[str, Any]:
    """Each trial waits until the edge is in the graph and quiet (the sidecars already read
    once: a first reading is only a baseline), then starts traffic and times it into the graph."""
    sys.path.insert(0, str(REPO / "tests"))
    from telemetry_mesh import Traffic, start_mesh

    mesh = start_mesh(env={"MESHD_TELEMETRY_INTERVAL": str(interval_s)})
    limit = 4 * interval_s + 30
    times: list[float] = []
    try:
        for _ in range(trials):
            _until(lambda: _edge_rate(mesh.agent) == 0, limit, "the edge never went quiet")
            started = time.monotonic()
            traffic = Traffic(mesh)
            try:
                _until(lambda: (_edge_rate(mesh.agent) or 0) > 0, limit, "no traffic in the graph")
                times.append(time.monotonic() - started)
            finally:
                traffic.stop.set()
                traffic.thread.join(5)
        return {
            "collection_interval_s": interval_s,
            "traffic_to_graph_s": [round(t, 2) for t in times],
            "traffic_to_graph_max_s": round(max(times), 2),
        }
    finally:
        mesh.close()
        mesh.agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--envoys", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--graph", action="store_true", help="also time traffic -> graph (real mesh)")
    ap.add_argument("--interval", type=float, default=10.0, help="collection interval, --graph")
    ap.add_argument("--trials", type=int, default=3, help="traffic -> graph runs, --graph")
    a = ap.parse_args()
    out = asyncio.run(run(a.envoys, a.rounds))
    if a.graph:
        out.update(traffic_to_graph(a.interval, a.trials))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
