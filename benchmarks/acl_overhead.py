#!/usr/bin/env python3
"""What ACLs cost: DNS queries/s and `GET /v1/health/service/web` req/s, ACLs off vs on.

What it does (all on 127.0.0.1), in one run:

1. for each configuration, ACLs off then ACLs on (`default_policy = "deny"`), starts a `-dev`
   agent; with ACLs on it creates a token whose one policy has 20 rules (services, a deny,
   nodes, keys, agents) and makes it the agent's `dns` token;
2. registers the 100 DNS services of dns_qps.py and the 3 `web` instances of http_reads.py,
   and checks that every name answers before measuring (so no run measures refusals);
3. runs dnsperf (A queries, saturation) and wrk (`GET /v1/health/service/web?passing`, the
   20-rule token in `?token=`) against it, and stops the agent;
4. repeats the pair `--rounds` times, alternating off/on so a noisy neighbour hits both, and
   prints each run, the best of each configuration and the % difference (target: ACLs on at
   most 10% lower).

The machine's load average is printed before and after: on a shared machine, compare runs only
when it is low and similar.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from _common import (
    BenchError,
    MeshdAgent,
    find_tool,
    fmt,
    http,
    machine_summary,
    require_tool,
    result_line,
    run_main,
    table,
)
from dns_qps import PerfResult, register_services, run_dnsperf, verify_answers, write_query_files
from http_reads import register_web, run_aiohttp, run_wrk, wait_for_instances

TARGET_PCT = 10.0
MGMT = str(uuid.uuid4())
# 20 rules, as a service's token might carry: its services, a deny, discovery reads
RULES = "\n".join(
    [
        *(f'service "app{i:02d}" {{ policy = "read" }}' for i in range(12)),
        'service "secret" { policy = "deny" }',
        'service_prefix "svc" { policy = "read" }',
        'service_prefix "web" { policy = "read" }',
        'node_prefix "" { policy = "read" }',
        'key_prefix "app/" { policy = "read" }',
        'key "app/secret" { policy = "deny" }',
        'agent_prefix "" { policy = "read" }',
        'session_prefix "" { policy = "read" }',
    ]
)


@dataclass
class Run:
    acl: bool
    dns_qps: float = math.nan
    http_rps: float = math.nan
    http_errors: int = 0
    dns_notes: str = ""
    dns_cpu_us: float = math.nan  # agent CPU per query: steadier than q/s on a busy machine
    http_cpu_us: float = math.nan


def _acl_config(workdir: str) -> str:
    path = Path(workdir) / "acl.hcl"
    path.write_text(
        'acl {\n  enabled = true\n  default_policy = "deny"\n'
        f'  tokens {{\n    initial_management = "{MGMT}"\n    agent = "{MGMT}"\n  }}\n}}\n'
    )
    return str(path)


def _token(port: int) -> str:
    """A token with one 20-rule policy; it becomes the agent's dns token too."""
    if len([r for r in RULES.splitlines() if r.strip()]) != 20:
        raise BenchError("the benchmark policy must have 20 rules")
    policy = http("PUT", port, "/v1/acl/policy", {"Name": "bench-20", "Rules": RULES}, token=MGMT)
    made = http("PUT", port, "/v1/acl/token", {"Policies": [{"ID": policy["ID"]}]}, token=MGMT)
    secret = str(made["SecretID"])
    http("PUT", port, "/v1/agent/token/dns", {"Token": secret}, token=MGMT)
    return secret


def one_run(acl: bool, args: argparse.Namespace, qfile: Path, dnsperf: str) -> Run:
    run = Run(acl)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-acl-") as tmp:
        extra = [f"-config-file={_acl_config(tmp)}"] if acl else []
        with MeshdAgent(mode="dev", dns=True, extra=extra) as agent:
            admin = MGMT if acl else None
            token = _token(agent.http_port) if acl else None
            register_services(agent.http_port, token=admin)
            register_web(agent.http_port, token=admin)
            path = "/v1/health/service/web?passing" + (f"&token={token}" if token else "")
            wait_for_instances(agent.http_port, path)
            verify_answers(agent.dns_port, with_srv=False)
            label = "ACLs on" if acl else "ACLs off"
            print(f"{label}: agent pid {agent.pid}, every name answers", flush=True)
            perf = run_dnsperf(
                dnsperf,
                agent.dns_port,
                qfile,
                agent.pid,
                PerfResult(label, "A", f"max {args.max_qps}"),
                duration=args.duration,
                clients=args.clients,
                threads=1,
                outstanding=args.outstanding,
                max_qps=args.max_qps,
                per_query=False,
            )
            run.dns_qps = perf.qps
            run.dns_cpu_us = _per_op(perf.server_cores, perf.qps)
            run.dns_notes = "; ".join(n for n in perf.notes if "per-query" not in n)
            wrk = find_tool("wrk")
            if wrk is not None and not args.aiohttp:
                load = run_wrk(wrk, agent, None, path, args)
            else:
                load = run_aiohttp(agent, None, path, args)
            run.http_rps, run.http_errors = load.rps, load.errors
            run.http_cpu_us = _per_op(load.agent_cores, load.rps)
    return run


def _per_op(cores: float, rate: float) -> float:
    """Microseconds of the agent's CPU per operation."""
    return cores / rate * 1e6 if rate > 0 else math.nan


def _pct(off: float, on: float) -> float:
    return (on - off) / off * 100 if off > 0 else math.nan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="DNS QPS and HTTP req/s with ACLs off vs on (a 20-rule token), same run. "
        "Needs dnsperf; uses wrk when installed, else a built-in aiohttp client.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    p.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument("--max-qps", type=int, default=100_000, help="dnsperf -Q")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--connections", type=int, default=32, help="wrk -c")
    p.add_argument("--concurrency", type=int, default=64, help="aiohttp client requests")
    p.add_argument("--aiohttp", action="store_true", help="use the aiohttp client, not wrk")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dnsperf = require_tool("dnsperf", "dnsperf")
    load_before = os.getloadavg()
    print(f"== acl_overhead: {machine_summary()}; load average {load_before[0]:.2f}")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="meshd-bench-acl-q-") as tmp:
        qfile = write_query_files(Path(tmp))["A"]
        for _ in range(args.rounds):
            for acl in (False, True):
                runs.append(one_run(acl, args, qfile, dnsperf))
    load_after = os.getloadavg()
    report(runs, args, load_before[0], load_after[0])
    return 0


def report(runs: list[Run], args: argparse.Namespace, load0: float, load1: float) -> None:
    rows = [
        [
            "on" if r.acl else "off",
            fmt(r.dns_qps, 0),
            fmt(r.dns_cpu_us, 1),
            fmt(r.http_rps, 0),
            fmt(r.http_cpu_us, 1),
            str(r.http_errors),
            r.dns_notes or "-",
        ]
        for r in runs
    ]
    print()
    print(
        table(
            ["ACLs", "DNS q/s", "CPU us/q", "HTTP req/s", "CPU us/req", "HTTP non-200", "notes"],
            rows,
            title=f"each run ({args.duration:g}s of dnsperf A queries, then of HTTP reads)",
        )
    )
    best = {
        acl: (
            max((r.dns_qps for r in runs if r.acl is acl), default=math.nan),
            max((r.http_rps for r in runs if r.acl is acl), default=math.nan),
        )
        for acl in (False, True)
    }
    dns_pct = _pct(best[False][0], best[True][0])
    http_pct = _pct(best[False][1], best[True][1])
    # the agent's CPU per operation, lowest of each: what ACLs add to each query or request,
    # much less disturbed by other load than throughput
    cpu = {
        acl: (
            min((r.dns_cpu_us for r in runs if r.acl is acl), default=math.nan),
            min((r.http_cpu_us for r in runs if r.acl is acl), default=math.nan),
        )
        for acl in (False, True)
    }
    dns_cpu_pct = _pct(cpu[False][0], cpu[True][0])
    http_cpu_pct = _pct(cpu[False][1], cpu[True][1])
    targets = [
        [
            f"DNS q/s: ACLs on >= off - {TARGET_PCT:g}%",
            f"{fmt(best[False][0], 0)} -> {fmt(best[True][0], 0)} ({fmt(dns_pct, 1)}%)",
            "met" if dns_pct >= -TARGET_PCT else "NOT met",
        ],
        [
            f"HTTP req/s: ACLs on >= off - {TARGET_PCT:g}%",
            f"{fmt(best[False][1], 0)} -> {fmt(best[True][1], 0)} ({fmt(http_pct, 1)}%)",
            "met" if http_pct >= -TARGET_PCT else "NOT met",
        ],
    ]
    targets += [
        [
            "DNS: agent CPU per query (lowest)",
            f"{fmt(cpu[False][0], 1)} -> {fmt(cpu[True][0], 1)} us ({fmt(dns_cpu_pct, 1)}%)",
            "-",
        ],
        [
            "HTTP: agent CPU per request (lowest)",
            f"{fmt(cpu[False][1], 1)} -> {fmt(cpu[True][1], 1)} us ({fmt(http_cpu_pct, 1)}%)",
            "-",
        ],
    ]
    print()
    print(table(["target (best of each)", "off -> on", "verdict"], targets, left=2))
    print(f"load average: {load0:.2f} before, {load1:.2f} after")
    print(
        result_line(
            "acl_overhead",
            {
                "dns_off_qps": best[False][0],
                "dns_on_qps": best[True][0],
                "dns_diff_pct": dns_pct,
                "http_off_rps": best[False][1],
                "http_on_rps": best[True][1],
                "http_diff_pct": http_pct,
                "dns_cpu_us_off": cpu[False][0],
                "dns_cpu_us_on": cpu[True][0],
                "http_cpu_us_off": cpu[False][1],
                "http_cpu_us_on": cpu[True][1],
                "loadavg_before": load0,
                "loadavg_after": load1,
            },
        )
    )


if __name__ == "__main__":
    run_main(main)
