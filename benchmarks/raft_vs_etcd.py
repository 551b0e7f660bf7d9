#!/usr/bin/env python3
"""Replicated write latency and throughput: a 3-server meshd cluster vs a 3-member etcd cluster.

Both clusters run side by side on 127.0.0.1 (each server with its own ports and data dir in one
temporary directory) and are driven by the same aiohttp client in this process:

- meshd: `PUT /v1/kv/bench/<target>/<n>` (128-byte value; the answer must be 200 `true`);
- etcd:  `POST /v3/kv/put` with `{"key": base64, "value": base64}` (etcd 3.4's JSON gateway;
  the answer must be 200 with a `header`).

For each target (meshd leader, etcd leader, and by default each one's follower too) it measures

1. sequential latency: one keep-alive connection, one request at a time (default 2,000, after
   50 unmeasured warm-ups);
2. throughput: 64 requests in flight for 10 s (also capped by a request count).

The leaders are found with GET /v1/status/leader (meshd, mapped to the server by its Raft port)
and POST /v3/maintenance/status (etcd). A meshd follower forwards the write to its leader; an
etcd follower does the same through its Raft proposal path. Both clusters write their journal to
the same filesystem and sync it before acknowledging (meshd: msync per batch; etcd: fdatasync of
its WAL), and neither uses TLS. meshd's Raft and RPC are encrypted and authenticated with the
cluster key, which a multi-server meshd cluster requires; etcd runs without authentication.

Targets (DESIGN.md): meshd p50 <= 2x etcd's, throughput >= etcd's. CPU is reported as cores
busy (100% = one core) for the three servers together and for the client; on a 2-core machine
the client and the servers compete for CPU, and the client is identical for both systems.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from _cluster import (
    EtcdCluster,
    MeshdCluster,
    Procs,
    keygen,
    loadavg,
    wait_quiet,
)
from _common import (
    LOOPBACK,
    BenchError,
    cpu_seconds,
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
VALUE = b"v" * 128
WARMUP = 50


@dataclass
class Target:
    system: str  # "meshd" or "etcd"
    role: str  # "leader" or "follower"
    port: int
    pids: list[int]  # every server of that system, for CPU accounting

    @property
    def label(self) -> str:
        return f"{self.system} -> {self.role}"


@dataclass
class Phase:
    target: Target
    kind: str  # "seq" or "conc"
    requests: int = 0
    errors: int = 0
    wall: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    server_cores: float = math.nan
    busiest_cores: float = math.nan  # the busiest single server
    client_cores: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.wall if self.wall > 0 else math.nan


_first_errors: list[str] = []


def _note_error(text: str) -> None:
    if len(_first_errors) < 5:
        _first_errors.append(text)


def make_writer(
    session: object, target: Target, tag: str
) -> Callable[[int], Awaitable[tuple[float, bool]]]:
    """An async function doing write number n against `target`: (seconds, ok)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    base = f"http://{LOOPBACK}:{target.port}"
    b64_value = base64.b64encode(VALUE).decode()

    async def meshd_put(n: int) -> tuple[float, bool]:
        t0 = time.perf_counter()
        try:
            async with session.put(f"{base}/v1/kv/bench/{tag}/{n:07d}", data=VALUE) as r:
                body = await r.read()
                ok = r.status == 200 and body.strip() == b"true"
                if not ok:
                    _note_error(f"meshd HTTP {r.status}: {body[:200]!r}")
        except (TimeoutError, aiohttp.ClientError) as e:
            ok = False
            _note_error(f"meshd {type(e).__name__}: {e}")
        return time.perf_counter() - t0, ok

    async def etcd_put(n: int) -> tuple[float, bool]:
        key = base64.b64encode(f"bench/{tag}/{n:07d}".encode()).decode()
        payload = json.dumps({"key": key, "value": b64_value}).encode()
        t0 = time.perf_counter()
        try:
            async with session.post(
                f"{base}/v3/kv/put", data=payload, headers={"Content-Type": "application/json"}
            ) as r:
                body = await r.read()
                ok = r.status == 200 and b'"header"' in body and b'"error"' not in body
                if not ok:
                    _note_error(f"etcd HTTP {r.status}: {body[:200]!r}")
        except (TimeoutError, aiohttp.ClientError) as e:
            ok = False
            _note_error(f"etcd {type(e).__name__}: {e}")
        return time.perf_counter() - t0, ok

    return meshd_put if target.system == "meshd" else etcd_put


def _cpu(pids: list[int]) -> list[float]:
    return [cpu_seconds(p) for p in pids]


def _finish(res: Phase, latencies: list[float], cpu0: list[float], self0: float) -> Phase:
    used = [b - a for a, b in zip(cpu0, _cpu(res.target.pids), strict=True)]
    res.server_cores = sum(used) / res.wall
    res.busiest_cores = max(used) / res.wall
    res.client_cores = (self_cpu_seconds() - self0) / res.wall
    latencies.sort()
    res.requests = len(latencies)
    res.p50_ms = percentile(latencies, 50) * 1000
    res.p99_ms = percentile(latencies, 99) * 1000
    res.max_ms = latencies[-1] * 1000 if latencies else math.nan
    return res


async def sequential(target: Target, count: int, max_seconds: float) -> Phase:
    import aiohttp

    res = Phase(target, "seq")
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        for i in range(WARMUP):
            await make_writer(session, target, f"{target.role}-seq-warm")(i)
        put = make_writer(session, target, f"{target.role}-seq")
        latencies: list[float] = []
        cpu0, self0 = _cpu(target.pids), self_cpu_seconds()
        t_start = time.perf_counter()
        deadline = t_start + max_seconds
        for i in range(count):
            if time.perf_counter() >= deadline:
                res.notes.append(f"stopped after {i} of {count} at the {max_seconds:g}s limit")
                break
            lat, ok = await put(i)
            latencies.append(lat)
            res.errors += 0 if ok else 1
        res.wall = time.perf_counter() - t_start
    return _finish(res, latencies, cpu0, self0)


async def concurrent(target: Target, in_flight: int, duration: float) -> Phase:
    import aiohttp

    res = Phase(target, "conc")
    latencies: list[float] = []
    counter = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=in_flight), timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        put = make_writer(session, target, f"{target.role}-conc")
        cpu0, self0 = _cpu(target.pids), self_cpu_seconds()
        t_start = time.perf_counter()
        deadline = t_start + duration

        async def worker() -> None:
            nonlocal counter
            while counter < MAX_CONCURRENT_REQUESTS and time.perf_counter() < deadline:
                n = counter
                counter += 1
                lat, ok = await put(n)
                latencies.append(lat)
                res.errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
        res.wall = time.perf_counter() - t_start
    if counter >= MAX_CONCURRENT_REQUESTS:
        res.notes.append(f"stopped at the {MAX_CONCURRENT_REQUESTS:,}-request cap")
    return _finish(res, latencies, cpu0, self0)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sequential latency and 64-in-flight throughput of replicated writes: a "
        "3-server meshd cluster vs a 3-member etcd cluster, same client, loopback.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=2000, help="sequential writes per target")
    p.add_argument(
        "--seq-max-seconds",
        type=float,
        default=30.0,
        help="stop a sequential phase early after this long",
    )
    p.add_argument("--in-flight", type=int, default=64, help="concurrent writes in flight")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrent phase")
    p.add_argument(
        "--no-followers", action="store_true", help="measure only through each cluster's leader"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-min load average to drop below 0.7",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.in_flight < 1 or args.duration <= 0:
        p.error("--requests, --in-flight and --duration must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import aiohttp  # noqa: F401
    except ImportError as e:
        raise BenchError("aiohttp is missing; run from the repo's environment") from e
    quiet = wait_quiet(args.wait_quiet)
    print(f"== raft_vs_etcd: {machine_summary()}")
    print(quiet.describe(), flush=True)
    phases: list[Phase] = []
    with Procs("meshd-bench-raft-", keep=args.keep) as procs:
        etcd = EtcdCluster(procs)  # fails fast when etcd is not installed
        t0 = time.monotonic()
        meshd = MeshdCluster(procs, encrypt=keygen()).start()
        m_leader = meshd.wait_formed()
        print(
            f"meshd: 3 servers formed in {time.monotonic() - t0:.1f}s, leader "
            f"{m_leader.name}; data on {fs_type(str(procs.dir))} ({procs.dir})",
            flush=True,
        )
        t0 = time.monotonic()
        etcd.start()
        e_leader = etcd.leader()
        if e_leader is None:
            raise BenchError("etcd has no agreed leader")
        print(
            f"etcd {etcd.version()}: 3 members formed in {time.monotonic() - t0:.1f}s, "
            f"leader {e_leader.name}",
            flush=True,
        )
        m_pids = [n.proc.pid for n in meshd.nodes]
        e_pids = [m.proc.pid for m in etcd.members]
        m_follower = next(n for n in meshd.nodes if n is not m_leader)
        e_follower = next(m for m in etcd.members if m is not e_leader)
        targets = [
            Target("meshd", "leader", m_leader.http_port, m_pids),
            Target("etcd", "leader", e_leader.client_port, e_pids),
        ]
        if not args.no_followers:
            targets += [
                Target("meshd", "follower", m_follower.http_port, m_pids),
                Target("etcd", "follower", e_follower.client_port, e_pids),
            ]
        for t in targets:
            print(f"  {t.label}: {args.requests} sequential ...", flush=True)
            phases.append(asyncio.run(sequential(t, args.requests, args.seq_max_seconds)))
        for t in targets:
            print(f"  {t.label}: {args.in_flight} in flight for {args.duration:g}s ...", flush=True)
            phases.append(asyncio.run(concurrent(t, args.in_flight, args.duration)))
        if meshd.agreed_leader() is not m_leader:
            print("note: the meshd leader changed during the run")
        if etcd.leader() is not e_leader:
            print("note: the etcd leader changed during the run")
    report(phases, args, quiet.load_start)
    return 0


def report(phases: list[Phase], args: argparse.Namespace, load0: float) -> None:
    rows = []
    for r in phases:
        load = "sequential" if r.kind == "seq" else f"{args.in_flight} in flight"
        rows.append(
            [
                r.target.label,
                load,
                f"{r.requests:,}",
                str(r.errors),
                fmt(r.rate, 0),
                fmt(r.p50_ms, 3),
                fmt(r.p99_ms, 3),
                fmt(r.max_ms, 3),
                fmt(r.server_cores * 100, 0) + "%",
                fmt(r.busiest_cores * 100, 0) + "%",
                fmt(r.client_cores * 100, 0) + "%",
            ]
        )
    print()
    enc = "meshd with its cluster key (required for 3 servers); etcd plaintext"
    print(
        table(
            [
                "target",
                "load",
                "writes",
                "errors",
                "writes/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "3 servers CPU",
                "busiest server",
                "client CPU",
            ],
            rows,
            left=2,
            title=f"Replicated writes, 3 servers each, loopback ({enc}); CPU 100% = one core",
        )
    )

    def get(system: str, role: str, kind: str) -> Phase | None:
        return next(
            (
                r
                for r in phases
                if r.target.system == system and r.target.role == role and r.kind == kind
            ),
            None,
        )

    values: dict[str, float | int | str] = {}
    ratio_rows = []
    for role in ("leader", "follower"):
        m_seq, e_seq = get("meshd", role, "seq"), get("etcd", role, "seq")
        m_conc, e_conc = get("meshd", role, "conc"), get("etcd", role, "conc")
        if not (m_seq and e_seq and m_conc and e_conc):
            continue
        p50_ratio = m_seq.p50_ms / e_seq.p50_ms if e_seq.p50_ms > 0 else math.nan
        p99_ratio = m_seq.p99_ms / e_seq.p99_ms if e_seq.p99_ms > 0 else math.nan
        tput_ratio = m_conc.rate / e_conc.rate if e_conc.rate > 0 else math.nan
        ratio_rows.append(
            [role, fmt(p50_ratio, 2) + "x", fmt(p99_ratio, 2) + "x", fmt(tput_ratio, 2) + "x"]
        )
        pre = "" if role == "leader" else "follower_"
        values.update(
            {
                f"{pre}meshd_p50_ms": m_seq.p50_ms,
                f"{pre}meshd_p99_ms": m_seq.p99_ms,
                f"{pre}etcd_p50_ms": e_seq.p50_ms,
                f"{pre}etcd_p99_ms": e_seq.p99_ms,
                f"{pre}meshd_wps": m_conc.rate,
                f"{pre}etcd_wps": e_conc.rate,
                f"{pre}p50_ratio": p50_ratio,
                f"{pre}p99_ratio": p99_ratio,
                f"{pre}throughput_ratio": tput_ratio,
            }
        )
    print()
    print(
        table(
            ["through", "p50 meshd/etcd", "p99 meshd/etcd", "writes/s meshd/etcd"],
            ratio_rows,
            title="Ratios (targets: p50 <= 2x, throughput >= 1x)",
        )
    )
    leader = get("meshd", "leader", "seq"), get("etcd", "leader", "seq")
    conc = get("meshd", "leader", "conc"), get("etcd", "leader", "conc")
    if all(leader) and all(conc):
        p50_ok = values["p50_ratio"] <= 2.0  # type: ignore[operator]
        tput_ok = values["throughput_ratio"] >= 1.0  # type: ignore[operator]
        print(
            f"target p50 <= 2x etcd: {'met' if p50_ok else 'NOT met'}; "
            f"throughput >= etcd: {'met' if tput_ok else 'NOT met'} (through the leaders)"
        )
    for r in phases:
        for note in r.notes:
            print(f"note ({r.target.label} {r.kind}): {note}")
    for err in _first_errors:
        print(f"first errors: {err}")
    errors = sum(r.errors for r in phases)
    load_end = loadavg()[0]
    print(f"1-min load average: {load0:.2f} at start, {load_end:.2f} at end")
    values.update({"errors": errors, "load_start": load0, "load_end": load_end})
    print(result_line("raft_vs_etcd", values))


if __name__ == "__main__":
    run_main(main)
