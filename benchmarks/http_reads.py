#!/usr/bin/env python3
"""HTTP read throughput of `GET /v1/health/service/web?passing` on one meshd agent.

What it does (all on 127.0.0.1):

1. starts a meshd agent on free ports (default `-dev`; with `--topology client` a data-dir server
   plus a client agent joined to it, and the load goes to the client agent, i.e. its cache);
2. registers service `web` with 3 instances (127.0.20.1..3:8080), each with a passing TTL check,
   and checks that the endpoint returns all 3 before measuring;
3. loads the endpoint with wrk (`wrk -t2 -c32 -d15s --latency`) when wrk is installed, otherwise
   with a built-in aiohttp client (64 concurrent requests on keep-alive connections for a fixed
   duration, every request's latency recorded);
4. prints requests/s, p50 and p99 latency, non-200 answers, and the CPU used by the agent, by
   the load generator and by everything else on the machine during the run.

On a 2-core machine the load generator competes with the agent for CPU. The Python fallback
costs far more CPU per request than wrk, so its figure is a lower bound on what the agent can
serve: compare "client cores" with "agent cores" before reading too much into it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import time
from dataclasses import dataclass, field

from _common import (
    LOOPBACK,
    BenchError,
    CpuMeter,
    MeshdAgent,
    children_cpu_seconds,
    find_tool,
    fmt,
    http,
    machine_summary,
    percentile,
    result_line,
    run_bounded,
    run_main,
    self_cpu_seconds,
    table,
)

TARGET_RPS = 5_000
INSTANCES = 3
MAX_REQUESTS = 5_000_000  # hard cap on the aiohttp client, whatever the duration


@dataclass
class LoadResult:
    client: str
    rps: float = math.nan
    requests: int = 0
    errors: int = 0
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    agent_cores: float = math.nan
    client_cores: float = math.nan
    server_cores: float = 0.0  # the separate server process, with --topology client
    machine_cores: float = math.nan
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- setup


def register_web(port: int, token: str | None = None) -> None:
    for i in range(1, INSTANCES + 1):
        http(
            "PUT",
            port,
            "/v1/agent/service/register",
            {
                "ID": f"web-{i}",
                "Name": "web",
                "Address": f"127.0.20.{i}",
                "Port": 8080,
                "Check": {"TTL": "30m", "Status": "passing"},
            },
            token=token,
        )


def wait_for_instances(
    port: int, path: str, timeout: float = 30.0, token: str | None = None
) -> None:
    deadline = time.monotonic() + timeout
    got: object = None
    while time.monotonic() < deadline:
        got = http("GET", port, path, token=token)
        if isinstance(got, list) and len(got) == INSTANCES:
            return
        time.sleep(0.1)
    n = len(got) if isinstance(got, list) else got
    raise BenchError(f"GET {path} returned {n} entries after {timeout:.0f}s, wanted {INSTANCES}")


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS_MS[m.group(2)] if m else math.nan


def parse_wrk(out: str, res: LoadResult) -> None:
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res.rps = float(m.group(1)) if m else math.nan
    m = re.search(r"(\d+) requests in", out)
    res.requests = int(m.group(1)) if m else 0
    for pct, attr in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        setattr(res, attr, _ms(m.group(1)) if m else math.nan)
    m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.MULTILINE)
    res.max_ms = _ms(m.group(1)) if m else math.nan
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res.errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", out)
    if m:
        res.notes.append(f"wrk socket errors:{m.group(1)}")


def run_wrk(
    wrk: str, agent: MeshdAgent, server: MeshdAgent | None, path: str, args: argparse.Namespace
) -> LoadResult:
    url = f"http://{LOOPBACK}:{agent.http_port}{path}"
    cmd = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration:g}s",
        "--latency",
        url,
    ]
    print(f"  running: {' '.join(cmd)}", flush=True)
    res = LoadResult(f"wrk -t{args.threads} -c{args.connections}")
    meter = CpuMeter(agent.pid).start()
    smeter = CpuMeter(server.pid).start() if server is not None else None
    kids0 = children_cpu_seconds()
    proc = run_bounded(cmd, timeout=args.duration + 60)
    meter.stop()
    if smeter is not None:
        res.server_cores = smeter.stop().cores
    if proc.returncode != 0 or "Requests/sec" not in proc.stdout:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    parse_wrk(proc.stdout, res)
    res.agent_cores = meter.cores
    res.client_cores = (children_cpu_seconds() - kids0) / meter.wall
    res.machine_cores = meter.machine_cores
    return res


# --------------------------------------------------------------------------- aiohttp client


async def _aiohttp_load(
    url: str, concurrency: int, duration: float, max_requests: int
) -> tuple[list[float], int, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    started = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(200):  # warm-up: open connections, fill caches; not measured
            async with session.get(url) as r:
                await r.read()
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker() -> None:
            nonlocal errors, started
            while started < max_requests:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                started += 1
                try:
                    async with session.get(url) as r:
                        await r.read()
                        ok = r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
    return latencies, errors, wall


def run_aiohttp(
    agent: MeshdAgent, server: MeshdAgent | None, path: str, args: argparse.Namespace
) -> LoadResult:
    url = f"http://{LOOPBACK}:{agent.http_port}{path}"
    print(
        f"  running: built-in aiohttp client, {args.concurrency} concurrent, "
        f"{args.duration:g}s, GET {url}",
        flush=True,
    )
    res = LoadResult(f"aiohttp x{args.concurrency}")
    meter = CpuMeter(agent.pid).start()
    smeter = CpuMeter(server.pid).start() if server is not None else None
    self0 = self_cpu_seconds()
    latencies, errors, wall = asyncio.run(
        _aiohttp_load(url, args.concurrency, args.duration, MAX_REQUESTS)
    )
    meter.stop()
    if smeter is not None:
        res.server_cores = smeter.stop().cores
    res.client_cores = (self_cpu_seconds() - self0) / meter.wall
    res.agent_cores = meter.cores
    res.machine_cores = meter.machine_cores
    latencies.sort()
    res.requests, res.errors = len(latencies), errors
    res.rps = len(latencies) / wall if wall > 0 else math.nan
    res.p50_ms = percentile(latencies, 50) * 1000
    res.p90_ms = percentile(latencies, 90) * 1000
    res.p99_ms = percentile(latencies, 99) * 1000
    res.max_ms = latencies[-1] * 1000 if latencies else math.nan
    if len(latencies) >= MAX_REQUESTS:
        res.notes.append(f"stopped at the {MAX_REQUESTS:,}-request cap before the duration")
    return res


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Requests/s and latency of GET /v1/health/service/web?passing on one meshd "
        "agent, with wrk (Debian package: wrk) or a built-in aiohttp client.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--client",
        choices=("auto", "wrk", "aiohttp", "both"),
        default="auto",
        help="load generator; auto = wrk if installed, else aiohttp",
    )
    p.add_argument(
        "--topology",
        choices=("dev", "client"),
        default="dev",
        help="dev: load a -dev agent (server+agent in one process); client: load a "
        "client agent joined to a separate data-dir server",
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per client")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight for the aiohttp client"
    )
    p.add_argument(
        "--query", default="passing", help="query string after '?' (e.g. 'passing&cached')"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_tool("wrk")
    if args.client in ("wrk", "both") and wrk is None:
        raise BenchError(
            "`wrk` is not installed. Install it with:  apt-get install -y wrk\n"
            "(or use --client aiohttp, or run benchmarks/run_all.sh)"
        )
    clients = {"auto": ["wrk" if wrk else "aiohttp"], "both": ["wrk", "aiohttp"]}.get(
        args.client, [args.client]
    )
    if args.client == "auto" and wrk is None:
        print(
            "note: wrk is not installed (Debian package: wrk); using the built-in aiohttp "
            "client, which needs much more CPU per request than wrk"
        )
    path = f"/v1/health/service/web?{args.query}" if args.query else "/v1/health/service/web"
    print(f"== http_reads: {machine_summary()}")

    results: list[LoadResult] = []
    server: MeshdAgent | None = None
    try:
        if args.topology == "client":
            server = MeshdAgent(mode="data-dir", node="bench-server", dns=False)
            server.start()
            agent = MeshdAgent(
                mode="client",
                node="bench-client",
                dns=False,
                retry_join=f"{LOOPBACK}:{server.server_port}",
            )
        else:
            agent = MeshdAgent(mode="dev", dns=False)
        with agent:
            print(f"meshd agent ({args.topology}) pid {agent.pid}: HTTP {agent.http_port}")
            register_web(agent.http_port)
            wait_for_instances(agent.http_port, path)
            print(f"GET {path} returns {INSTANCES} passing instances")
            for client in clients:
                if client == "wrk":
                    assert wrk is not None
                    results.append(run_wrk(wrk, agent, server, path, args))
                else:
                    results.append(run_aiohttp(agent, server, path, args))
            if agent.proc is not None and agent.proc.poll() is not None:
                raise BenchError(f"meshd died during the run:\n{agent.log_tail()}")
    finally:
        if server is not None:
            server.stop()

    report(results, args, path)
    return 0


def report(results: list[LoadResult], args: argparse.Namespace, path: str) -> None:
    rows = []
    for r in results:
        other = r.machine_cores - r.agent_cores - r.client_cores - r.server_cores
        row = [
            r.client,
            fmt(r.rps, 0),
            f"{r.requests:,}",
            str(r.errors),
            fmt(r.p50_ms, 3),
            fmt(r.p90_ms, 3),
            fmt(r.p99_ms, 3),
            fmt(r.max_ms, 3),
            fmt(r.agent_cores * 100, 0) + "%",
        ]
        if args.topology == "client":
            row.append(fmt(r.server_cores * 100, 0) + "%")
        rows.append([*row, fmt(r.client_cores * 100, 0) + "%", fmt(other * 100, 0) + "%"])
    headers = [
        "client",
        "req/s",
        "requests",
        "non-200",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "agent CPU",
    ]
    if args.topology == "client":
        headers.append("server CPU")
    print()
    print(
        table(
            [*headers, "client CPU", "other CPU"],
            rows,
            title=f"HTTP GET {path} ({args.topology} agent, {args.duration:g}s per client; "
            f"CPU 100% = one core)",
        )
    )
    for r in results:
        for note in r.notes:
            print(f"note ({r.client}): {note}")
    targets = []
    values: dict[str, float | int | str] = {"topology": args.topology}
    for r in results:
        ok = r.rps >= TARGET_RPS and r.errors == 0
        targets.append(
            [
                f">= {TARGET_RPS:,} req/s ({r.client})",
                f"{fmt(r.rps, 0)} req/s",
                "met" if ok else "NOT met",
            ]
        )
        key = "wrk" if r.client.startswith("wrk") else "aiohttp"
        values.update(
            {
                f"{key}_rps": r.rps,
                f"{key}_p50_ms": r.p50_ms,
                f"{key}_p99_ms": r.p99_ms,
                f"{key}_errors": r.errors,
                f"{key}_agent_cpu_pct": r.agent_cores * 100,
                f"{key}_client_cpu_pct": r.client_cores * 100,
            }
        )
        if args.topology == "client":
            values[f"{key}_server_cpu_pct"] = r.server_cores * 100
    print()
    print(table(["target", "measured", "verdict"], targets, title="HTTP read target", left=2))
    print(result_line("http_reads", values))


if __name__ == "__main__":
    run_main(main)
