#!/usr/bin/env python3
"""DNS queries/s of one meshd agent, measured with dnsperf, side by side with dnsmasq.

What it does (all on 127.0.0.1):

1. starts `meshd agent -dev` on free ports and registers 100 services `svc000`..`svc099`, one
   instance each on 127.0.10.1..127.0.10.100, port 8080, with a passing TTL check;
2. checks that every name answers (A and SRV) before measuring anything;
3. runs dnsperf at saturation against meshd with three query files: A only, SRV only
   (`_svcNNN._tcp.service.consul`) and a 50/50 A+SRV mix;
4. runs dnsperf at a fixed offered rate (default 20,000 q/s, the target) with the mixed file,
   to measure latency at the target load rather than at saturation;
5. starts dnsmasq serving the same A names from a hosts file and runs the same A-only file.

dnsmasq is compared on A queries only (the same file for both servers): A records come straight
from its hosts file, whereas SRV would need 100 `--srv-host` options that exercise a different
code path; meshd's SRV and mixed rates are reported on their own.

Latency percentiles come from dnsperf's per-query report (`-v`): dnsperf 2.10 prints each
response's latency, and p50/p99 are computed from those. If the installed dnsperf prints no
per-query latencies, only dnsperf's own average and max are shown, and the table says so.

CPU: meshd's utime+stime (all threads, from /proc/<pid>/stat) over the run's wall time gives the
cores it used; "QPS/core" is QPS divided by that. dnsperf's own CPU is shown too: on a small
machine the load generator competes with the server for cores.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    LOOPBACK,
    BenchError,
    CpuMeter,
    MeshdAgent,
    children_cpu_seconds,
    fmt,
    free_port,
    http,
    machine_summary,
    managed_process,
    percentile,
    require_tool,
    result_line,
    run_bounded,
    run_main,
    table,
)

N_SERVICES = 100
TARGET_QPS = 20_000
TARGET_P99_MS = 2.0
TARGET_RATIO = 0.5


def service_name(i: int) -> str:
    return f"svc{i:03d}"


def service_addr(i: int) -> str:
    return f"127.0.10.{i + 1}"


# --------------------------------------------------------------------------- setup


def register_services(http_port: int, token: str | None = None) -> None:
    for i in range(N_SERVICES):
        name = service_name(i)
        http(
            "PUT",
            http_port,
            "/v1/agent/service/register",
            {
                "ID": name,
                "Name": name,
                "Address": service_addr(i),
                "Port": 8080,
                "Check": {"TTL": "30m", "Status": "passing"},
            },
            token=token,
        )


def write_query_files(workdir: Path) -> dict[str, Path]:
    a_lines = [f"{service_name(i)}.service.consul A" for i in range(N_SERVICES)]
    srv_lines = [f"_{service_name(i)}._tcp.service.consul SRV" for i in range(N_SERVICES)]
    mixed = [line for pair in zip(a_lines, srv_lines, strict=True) for line in pair]
    files = {"A": a_lines, "SRV": srv_lines, "A+SRV": mixed}
    out: dict[str, Path] = {}
    for label, lines in files.items():
        path = workdir / f"queries-{label.replace('+', '-')}.txt"
        path.write_text("\n".join(lines) + "\n")
        out[label] = path
    return out


def dns_query(port: int, name: str, qtype: str, timeout: float = 2.0) -> list[str]:
    """The answer section of one UDP query, as text (uses dnslib, a meshd dependency)."""
    from dnslib import DNSRecord

    q = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.pack(), (LOOPBACK, port))
        data, _ = s.recvfrom(65535)
    reply = DNSRecord.parse(data)
    return [str(rr.rdata) for rr in reply.rr]


def verify_answers(port: int, with_srv: bool) -> None:
    """Every name resolves to its address (and SRV to port 8080), so no run measures NXDOMAIN."""
    for i in range(N_SERVICES):
        name = service_name(i)
        got = dns_query(port, f"{name}.service.consul", "A")
        if got != [service_addr(i)]:
            raise BenchError(f"{name}.service.consul A answered {got}, wanted {service_addr(i)}")
        if with_srv:
            srv = dns_query(port, f"_{name}._tcp.service.consul", "SRV")
            if not srv or " 8080 " not in srv[0]:
                raise BenchError(f"_{name}._tcp.service.consul SRV answered {srv}")


def wait_dns(port: int, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if dns_query(port, name, "A", timeout=0.5):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"DNS server on port {port} did not answer {name} within {timeout:.0f}s")


# --------------------------------------------------------------------------- dnsperf


@dataclass
class PerfResult:
    server: str
    queries: str
    offered: str
    qps: float = math.nan
    sent: int = 0
    completed: int = 0
    lost: int = 0
    rcodes: str = ""
    avg_ms: float = math.nan
    max_ms: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    per_query: bool = False
    server_cores: float = math.nan
    dnsperf_cores: float = math.nan
    machine_cores: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def qps_per_core(self) -> float:
        if math.isnan(self.server_cores) or self.server_cores <= 0:
            return math.nan
        return self.qps / self.server_cores


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else math.nan


def parse_dnsperf(out: str, res: PerfResult) -> None:
    res.qps = _num(r"Queries per second:\s+([\d.]+)", out)
    res.sent = int(_num(r"Queries sent:\s+(\d+)", out) or 0)
    res.completed = int(_num(r"Queries completed:\s+(\d+)", out) or 0)
    res.lost = int(_num(r"Queries lost:\s+(\d+)", out) or 0)
    m = re.search(r"Response codes:\s*(.*)", out)
    res.rcodes = m.group(1).strip() if m else ""
    res.avg_ms = _num(r"Average Latency \(s\):\s+([\d.]+)", out) * 1000
    res.max_ms = _num(r"Average Latency \(s\):.*max ([\d.]+)", out) * 1000
    lat = sorted(
        float(m.group(1)) * 1000
        for m in re.finditer(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.MULTILINE)
    )
    if lat:
        res.per_query = True
        res.p50_ms, res.p99_ms = percentile(lat, 50), percentile(lat, 99)
    else:
        res.notes.append("dnsperf printed no per-query latencies: only average and max shown")
    if res.completed and not re.fullmatch(r"NOERROR \d+ \(100\.00%\)", res.rcodes):
        res.notes.append(f"not every answer was NOERROR: {res.rcodes}")
    if res.lost:
        res.notes.append(f"{res.lost} of {res.sent} queries timed out (counted as lost)")


def run_dnsperf(
    dnsperf: str,
    port: int,
    qfile: Path,
    server_pid: int,
    res: PerfResult,
    duration: float,
    clients: int,
    threads: int,
    outstanding: int,
    max_qps: int,
    per_query: bool,
) -> PerfResult:
    args = [
        dnsperf,
        "-s",
        LOOPBACK,
        "-p",
        str(port),
        "-d",
        str(qfile),
        "-l",
        f"{duration:g}",
        "-c",
        str(clients),
        "-T",
        str(threads),
        "-q",
        str(outstanding),
        "-Q",
        str(max_qps),
    ]
    if per_query:
        args.append("-v")
    print(f"  running: {' '.join(args)}", flush=True)
    meter = CpuMeter(server_pid).start()
    kids0 = children_cpu_seconds()
    proc = run_bounded(args, timeout=duration + 60, stdout_path=qfile.with_suffix(".out"))
    meter.stop()
    res.server_cores = meter.cores
    res.dnsperf_cores = (children_cpu_seconds() - kids0) / meter.wall if meter.wall else math.nan
    res.machine_cores = meter.machine_cores
    if proc.returncode != 0 or "Queries per second" not in proc.stdout:
        raise BenchError(
            f"dnsperf failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            f"\n{proc.stdout[-2000:]}"
        )
    parse_dnsperf(proc.stdout, res)
    return res


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="DNS QPS of meshd (A, SRV, mixed) vs dnsmasq (A), measured with dnsperf. "
        "Needs the Debian packages dnsperf and dnsmasq-base (or dnsmasq).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--duration", type=float, default=15.0, help="seconds per saturation run (dnsperf -l)"
    )
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c (client sockets)")
    p.add_argument("--threads", type=int, default=1, help="dnsperf -T")
    p.add_argument(
        "--outstanding", type=int, default=100, help="dnsperf -q: queries in flight at saturation"
    )
    p.add_argument(
        "--max-qps", type=int, default=100_000, help="dnsperf -Q for the saturation runs"
    )
    p.add_argument(
        "--latency-qps",
        default=f"{TARGET_QPS},5000",
        help="comma-separated offered rates (dnsperf -Q) for fixed-rate latency runs "
        "with the A+SRV file; empty or 0 skips them",
    )
    p.add_argument(
        "--latency-duration",
        type=float,
        default=10.0,
        help="seconds of each fixed-rate latency run",
    )
    p.add_argument("--no-dnsmasq", action="store_true", help="skip the dnsmasq comparison")
    p.add_argument(
        "--no-per-query",
        action="store_true",
        help="do not pass -v to dnsperf (no p50/p99, only avg/max)",
    )
    args = p.parse_args(argv)
    try:
        args.latency_rates = [int(x) for x in str(args.latency_qps).split(",") if x.strip()]
    except ValueError:
        p.error("--latency-qps takes comma-separated integers")
    args.latency_rates = [r for r in args.latency_rates if r > 0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dnsperf = require_tool("dnsperf", "dnsperf")
    dnsmasq = None if args.no_dnsmasq else require_tool("dnsmasq", "dnsmasq-base")
    per_query = not args.no_per_query
    print(f"== dns_qps: {machine_summary()}")
    results: list[PerfResult] = []

    with tempfile.TemporaryDirectory(prefix="meshd-bench-dns-") as tmp:
        workdir = Path(tmp)
        qfiles = write_query_files(workdir)
        common = dict(
            duration=args.duration,
            clients=args.clients,
            threads=args.threads,
            outstanding=args.outstanding,
            per_query=per_query,
        )

        with MeshdAgent(mode="dev", dns=True) as agent:
            print(f"meshd agent pid {agent.pid}: HTTP {agent.http_port}, DNS {agent.dns_port}")
            t0 = time.monotonic()
            register_services(agent.http_port)
            print(f"registered {N_SERVICES} services in {time.monotonic() - t0:.2f}s")
            verify_answers(agent.dns_port, with_srv=True)
            print("every A and SRV name answers correctly")
            for label in ("A", "SRV", "A+SRV"):
                res = PerfResult("meshd", label, f"max {args.max_qps}")
                results.append(
                    run_dnsperf(
                        dnsperf,
                        agent.dns_port,
                        qfiles[label],
                        agent.pid,
                        res,
                        max_qps=args.max_qps,
                        **common,
                    )
                )
            for rate in args.latency_rates:
                res = PerfResult("meshd", "A+SRV", f"fixed {rate}")
                fixed = dict(common, duration=args.latency_duration)
                results.append(
                    run_dnsperf(
                        dnsperf,
                        agent.dns_port,
                        qfiles["A+SRV"],
                        agent.pid,
                        res,
                        max_qps=rate,
                        **fixed,
                    )
                )
            if agent.proc is not None and agent.proc.poll() is not None:
                raise BenchError(f"meshd died during the run:\n{agent.log_tail()}")

        if dnsmasq is not None:
            hosts = workdir / "hosts"
            hosts.write_text(
                "".join(
                    f"{service_addr(i)} {service_name(i)}.service.consul\n"
                    for i in range(N_SERVICES)
                )
            )
            port = free_port()
            cmd = [
                dnsmasq,
                "--no-daemon",
                f"--port={port}",
                f"--listen-address={LOOPBACK}",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts}",
                "--conf-file=/dev/null",
                f"--pid-file={workdir / 'dnsmasq.pid'}",
                "--user=root",
                "--group=root",
            ]
            with (
                open(workdir / "dnsmasq.log", "wb") as log,
                managed_process(cmd, stdout=log, stderr=log, stdin=None) as proc,
            ):
                print(f"dnsmasq pid {proc.pid}: DNS {port}")
                wait_dns(port, "svc000.service.consul")
                verify_answers(port, with_srv=False)
                res = PerfResult("dnsmasq", "A", f"max {args.max_qps}")
                results.append(
                    run_dnsperf(
                        dnsperf, port, qfiles["A"], proc.pid, res, max_qps=args.max_qps, **common
                    )
                )

    report(results, args, per_query)
    return 0


def _key(r: PerfResult) -> str:
    q = {"A": "a", "SRV": "srv", "A+SRV": "mix"}[r.queries]
    suffix = r.offered.split()[1] if r.offered.startswith("fixed") else ""
    return f"{r.server}_{q}" + (f"_at{suffix}" if suffix else "")


def report(results: list[PerfResult], args: argparse.Namespace, per_query: bool) -> None:
    rows = []
    for r in results:
        other = r.machine_cores - r.server_cores - r.dnsperf_cores
        rows.append(
            [
                r.server,
                r.queries,
                r.offered,
                fmt(r.qps, 0),
                fmt(r.server_cores, 2),
                fmt(r.qps_per_core, 0),
                fmt(r.dnsperf_cores, 2),
                fmt(other, 2),
                fmt(r.avg_ms, 3),
                fmt(r.p50_ms, 3),
                fmt(r.p99_ms, 3),
                fmt(r.max_ms, 3),
                f"{r.lost}/{r.sent}",
            ]
        )
    print()
    print(
        table(
            [
                "server",
                "queries",
                "dnsperf -Q",
                "QPS",
                "srv cores",
                "QPS/core",
                "dnsperf cores",
                "other cores",
                "avg ms",
                "p50 ms",
                "p99 ms",
                "max ms",
                "lost/sent",
            ],
            rows,
            left=3,
            title=f"DNS (dnsperf -c {args.clients} -T {args.threads} -q {args.outstanding}; "
            f"{args.duration:g}s per 'max' run, {args.latency_duration:g}s per "
            f"'fixed' run)",
        )
    )
    for r in results:
        for note in r.notes:
            print(f"note ({r.server} {r.queries} {r.offered}): {note}")
    if not per_query:
        print("note: per-query latencies disabled (--no-per-query): p50/p99 not measured")

    by_key = {_key(r): r for r in results}
    targets: list[list[str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "NOT met"

    for key in ("meshd_a", "meshd_srv", "meshd_mix"):
        r = by_key.get(key)
        if r is not None:
            ok = r.qps >= TARGET_QPS and r.server_cores <= 1.05
            targets.append(
                [
                    f">= {TARGET_QPS:,} QPS on one core ({r.queries})",
                    f"{fmt(r.qps, 0)} QPS on {fmt(r.server_cores)} cores "
                    f"({fmt(r.qps_per_core, 0)}/core)",
                    verdict(ok),
                ]
            )
    fixed = by_key.get(f"meshd_mix_at{TARGET_QPS}")
    if fixed is not None and per_query:
        ok = fixed.qps >= 0.98 * TARGET_QPS and fixed.p99_ms < TARGET_P99_MS
        targets.append(
            [
                f"p99 < {TARGET_P99_MS:g} ms at {TARGET_QPS:,} q/s offered (A+SRV)",
                f"p99 {fmt(fixed.p99_ms, 3)} ms, achieved {fmt(fixed.qps, 0)} QPS",
                verdict(ok),
            ]
        )
    m_a, d_a = by_key.get("meshd_a"), by_key.get("dnsmasq_a")
    ratio = m_a.qps / d_a.qps if m_a and d_a and d_a.qps else math.nan
    if d_a is not None:
        targets.append(
            [
                f">= {TARGET_RATIO}x dnsmasq (same A-only file)",
                f"{fmt(ratio, 3)}x ({fmt(m_a.qps if m_a else math.nan, 0)} vs "
                f"{fmt(d_a.qps, 0)} QPS)",
                verdict(None if math.isnan(ratio) else ratio >= TARGET_RATIO),
            ]
        )
    print()
    print(table(["target", "measured", "verdict"], targets, title="DNS targets", left=2))
    values: dict[str, float | int | str] = {}
    for key, r in by_key.items():
        values[f"{key}_qps"] = r.qps
        values[f"{key}_cores"] = r.server_cores
        values[f"{key}_qps_per_core"] = r.qps_per_core
        values[f"{key}_p50_ms"] = r.p50_ms
        values[f"{key}_p99_ms"] = r.p99_ms
    values["ratio_meshd_dnsmasq"] = ratio
    print(result_line("dns_qps", values))


if __name__ == "__main__":
    run_main(main)
