#!/usr/bin/env python3
"""Write latency and throughput of one meshd agent: service registration and KV puts.

For each mode (default: both):

- `dev`: `meshd agent -dev` (in-memory Raft, nothing on disk);
- `data-dir`: a non-dev single server (`-server -bootstrap-expect=1 -data-dir=TMP`), so every
  acknowledged write has gone through the Raft journal and its flush (group commit).

and for each operation,

- `register`: `PUT /v1/agent/service/register` with a unique service ID per request
  (50 service names, `bench-w00`..`bench-w49`, so instances accumulate under each);
- `kv`: `PUT /v1/kv/bench/<phase>/<n>` with a 128-byte value,

it measures

1. sequential latency: one keep-alive connection, one request at a time (default 2,000
   requests, after 50 unmeasured warm-up requests), p50 / p99 / max;
2. concurrent throughput: 64 requests in flight on keep-alive connections for 10 s (also capped
   by a request count), requests/s and the latency of those requests.

Every request must answer 200 (and a KV put the body `true`); anything else is counted in
"errors" and the first few are printed. All
traffic goes to 127.0.0.1. The client is aiohttp in this process; its CPU is reported too,
because on a small machine it competes with the agent, and so is "other": the rest of the
machine's busy time (kernel work not charged to either process, or anything else running).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

from _common import (
    LOOPBACK,
    BenchError,
    CpuMeter,
    MeshdAgent,
    fmt,
    fs_type,
    machine_summary,
    percentile,
    result_line,
    run_main,
    self_cpu_seconds,
    table,
)

MAX_CONCURRENT_REQUESTS = 1_000_000  # hard cap on a concurrent phase, whatever its duration
KV_VALUE = b"v" * 128


@dataclass
class PhaseResult:
    mode: str
    op: str
    kind: str  # "seq" or "conc"
    requests: int = 0
    errors: int = 0
    wall: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    agent_cores: float = math.nan
    client_cores: float = math.nan
    machine_cores: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.wall if self.wall and self.wall > 0 else math.nan


def _request(op: str, port: int, tag: str, n: int) -> tuple[str, bytes]:
    if op == "register":
        body = (
            f'{{"ID":"w-{tag}-{n:07d}","Name":"bench-w{n % 50:02d}",'
            f'"Address":"127.0.30.{n % 250 + 1}","Port":{8000 + n % 1000}}}'
        ).encode()
        return f"http://{LOOPBACK}:{port}/v1/agent/service/register", body
    return f"http://{LOOPBACK}:{port}/v1/kv/bench/{tag}/{n:07d}", KV_VALUE


async def _one(session: object, op: str, port: int, tag: str, n: int) -> tuple[float, bool]:
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    url, body = _request(op, port, tag, n)
    t0 = time.perf_counter()
    try:
        async with session.put(url, data=body) as r:
            text = await r.read()
            # Consul's register answers 200 with an empty body; a KV put answers `true`.
            ok = r.status == 200 and (op == "register" or text.strip() == b"true")
            if not ok:
                _note_error(f"HTTP {r.status}: {text[:200]!r}")
    except (TimeoutError, aiohttp.ClientError) as e:
        ok = False
        _note_error(f"{type(e).__name__}: {e}")
    return time.perf_counter() - t0, ok


_first_errors: list[str] = []


def _note_error(text: str) -> None:
    if len(_first_errors) < 3:
        _first_errors.append(text)


async def sequential(
    port: int, op: str, mode: str, count: int, max_seconds: float, agent_pid: int
) -> PhaseResult:
    import aiohttp

    res = PhaseResult(mode, op, "seq")
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for i in range(50):  # warm-up, not measured
            await _one(session, op, port, "seq-warm", i)
        latencies: list[float] = []
        meter = CpuMeter(agent_pid).start()
        cpu0 = self_cpu_seconds()
        t_start = time.perf_counter()
        deadline = t_start + max_seconds
        for i in range(count):
            if time.perf_counter() >= deadline:
                res.notes.append(
                    f"stopped after {i} of {count} requests at the {max_seconds:g}s limit"
                )
                break
            lat, ok = await _one(session, op, port, "seq", i)
            latencies.append(lat)
            res.errors += 0 if ok else 1
        res.wall = time.perf_counter() - t_start
        meter.stop()
        res.client_cores = (self_cpu_seconds() - cpu0) / meter.wall
    res.agent_cores, res.machine_cores = meter.cores, meter.machine_cores
    _fill_latency(res, latencies)
    return res


async def concurrent(
    port: int, op: str, mode: str, in_flight: int, duration: float, agent_pid: int
) -> PhaseResult:
    import aiohttp

    res = PhaseResult(mode, op, "conc")
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=in_flight)
    latencies: list[float] = []
    counter = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        meter = CpuMeter(agent_pid).start()
        cpu0 = self_cpu_seconds()
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker() -> None:
            nonlocal counter
            while counter < MAX_CONCURRENT_REQUESTS and time.perf_counter() < deadline:
                n = counter
                counter += 1
                lat, ok = await _one(session, op, port, "conc", n)
                latencies.append(lat)
                res.errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        res.wall = time.perf_counter() - t_start
        meter.stop()
        res.client_cores = (self_cpu_seconds() - cpu0) / meter.wall
    res.agent_cores, res.machine_cores = meter.cores, meter.machine_cores
    if counter >= MAX_CONCURRENT_REQUESTS:
        res.notes.append(f"stopped at the {MAX_CONCURRENT_REQUESTS:,}-request cap")
    _fill_latency(res, latencies)
    return res


def _fill_latency(res: PhaseResult, latencies: list[float]) -> None:
    latencies.sort()
    res.requests = len(latencies)
    res.p50_ms = percentile(latencies, 50) * 1000
    res.p99_ms = percentile(latencies, 99) * 1000
    res.max_ms = latencies[-1] * 1000 if latencies else math.nan


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sequential latency and 64-in-flight throughput of service registration and "
        "KV writes on one meshd agent, in -dev and in data-dir (journaled) mode.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--modes",
        default="dev,data-dir",
        help="comma-separated: dev (in-memory) and/or data-dir (non-dev server)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="PARENT",
        help="directory in which the data-dir mode creates its temporary data dir "
        "(default: the system temp dir); put it on the disk you care about",
    )
    p.add_argument("--ops", default="register,kv", help="comma-separated: register and/or kv")
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per op")
    p.add_argument(
        "--seq-max-seconds",
        type=float,
        default=30.0,
        help="stop a sequential phase early after this long",
    )
    p.add_argument("--in-flight", type=int, default=64, help="concurrent requests in flight")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrent phase")
    args = p.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.op_list = [o.strip() for o in args.ops.split(",") if o.strip()]
    for m in args.mode_list:
        if m not in ("dev", "data-dir"):
            p.error(f"unknown mode {m!r}")
    for o in args.op_list:
        if o not in ("register", "kv"):
            p.error(f"unknown op {o!r}")
    if args.data_dir and not os.path.isdir(args.data_dir):
        p.error(f"--data-dir {args.data_dir} is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import aiohttp  # noqa: F401  (checked up front so a missing module fails fast)
    except ImportError as e:
        raise BenchError(
            "aiohttp is missing from this Python; run from the repo's "
            "environment (pip install -e /work/main)"
        ) from e
    print(f"== writes: {machine_summary()}")
    results: list[PhaseResult] = []
    for mode in args.mode_list:
        agent = MeshdAgent(mode=mode, dns=False, data_dir=args.data_dir)
        with agent:
            where = ""
            if mode == "data-dir":
                where = f", data dir on {fs_type(agent.workdir)} ({agent.workdir})"
            print(
                f"meshd agent ({mode}) pid {agent.pid}: HTTP {agent.http_port}{where}", flush=True
            )
            for op in args.op_list:
                print(f"  {mode} {op}: {args.requests} sequential ...", flush=True)
                results.append(
                    asyncio.run(
                        sequential(
                            agent.http_port,
                            op,
                            mode,
                            args.requests,
                            args.seq_max_seconds,
                            agent.pid,
                        )
                    )
                )
                print(
                    f"  {mode} {op}: {args.in_flight} in flight for {args.duration:g}s ...",
                    flush=True,
                )
                results.append(
                    asyncio.run(
                        concurrent(
                            agent.http_port, op, mode, args.in_flight, args.duration, agent.pid
                        )
                    )
                )
            if agent.proc is not None and agent.proc.poll() is not None:
                raise BenchError(f"meshd died during the run:\n{agent.log_tail()}")
    report(results, args)
    return 0


def report(results: list[PhaseResult], args: argparse.Namespace) -> None:
    rows = []
    for r in results:
        kind = "sequential" if r.kind == "seq" else f"{args.in_flight} in flight"
        rows.append(
            [
                r.mode,
                r.op,
                kind,
                f"{r.requests:,}",
                str(r.errors),
                fmt(r.rate, 0),
                fmt(r.p50_ms, 3),
                fmt(r.p99_ms, 3),
                fmt(r.max_ms, 3),
                fmt(r.agent_cores * 100, 0) + "%",
                fmt(r.client_cores * 100, 0) + "%",
                fmt((r.machine_cores - r.agent_cores - r.client_cores) * 100, 0) + "%",
            ]
        )
    print()
    where = (
        f" (data-dir parent: {args.data_dir or tempfile.gettempdir()}, "
        f"{fs_type(args.data_dir or tempfile.gettempdir())})"
        if "data-dir" in args.mode_list
        else ""
    )
    print(
        table(
            [
                "mode",
                "op",
                "load",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "agent CPU",
                "client CPU",
                "other CPU",
            ],
            rows,
            left=3,
            title=f"Writes{where}; CPU 100% = one core",
        )
    )
    for r in results:
        for note in r.notes:
            print(f"note ({r.mode} {r.op} {r.kind}): {note}")
    for err in _first_errors:
        print(f"first errors: {err}")
    values: dict[str, float | int | str] = {}
    for r in results:
        key = f"{r.mode.replace('-', '')}_{r.op}_{r.kind}"
        values[f"{key}_rps"] = r.rate
        values[f"{key}_p50_ms"] = r.p50_ms
        values[f"{key}_p99_ms"] = r.p99_ms
        if r.kind == "seq":
            values[f"{key}_max_ms"] = r.max_ms
        values[f"{key}_errors"] = r.errors
    print(result_line("writes", values))


if __name__ == "__main__":
    run_main(main)
