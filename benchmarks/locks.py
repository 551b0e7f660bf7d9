#!/usr/bin/env python3
"""KV locks on a 3-server meshd cluster: acquire/release round trips, and hand-over on death.

1. Round trips: a session on a client agent; `PUT ?acquire=` then `PUT ?release=` of one key,
   sequentially, --ops times (bounded by --max-seconds). Each request goes client agent ->
   server RPC -> Raft commit, so this is a committed write each.
2. Hand-over: client agents c1 (holder) and c2 (contender). c1's session holds the key; c2
   waits on it with a blocking read and acquires as soon as it is free. c1 is killed with
   SIGKILL (t = 0); the hand-over time is when c2's acquire answers `true`. It is bounded
   below by node failure detection (the servers' `limits.node_failure_timeout`, 5 s by default)
   plus the session's lock-delay (--lock-delay); the rest is what meshd adds. c1 is restarted
   between runs.

Prints both tables and a RESULT line. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from _cluster import MeshdCluster, MeshdNode, Procs, request, start_meshd, wait_agent_ready
from _common import BenchError, fmt, machine_summary, percentile, result_line, run_main, table

KEY = "bench/lock"


def _put(node: MeshdNode, path: str, body: Any = b"", timeout: float = 10.0) -> Any:
    status, raw = request(node.http_port, "PUT", path, body, timeout=timeout)
    if status != 200:
        raise BenchError(f"PUT {path} on {node.name} -> {status}: {raw[:200]!r}")
    return json.loads(raw)


def _session(node: MeshdNode, lock_delay: str) -> str:
    return str(_put(node, "/v1/session/create", {"LockDelay": lock_delay, "Name": "bench"})["ID"])


def round_trips(node: MeshdNode, ops: int, max_seconds: float) -> dict[str, list[float]]:
    sid = _session(node, "0s")
    out: dict[str, list[float]] = {"acquire": [], "release": [], "round trip": []}
    deadline = time.perf_counter() + max_seconds
    for _ in range(ops):
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        if _put(node, f"/v1/kv/{KEY}-rt?acquire={sid}") is not True:
            raise BenchError("acquire of a free key refused")
        t1 = time.perf_counter()
        _put(node, f"/v1/kv/{KEY}-rt?release={sid}")
        t2 = time.perf_counter()
        out["acquire"].append(t1 - t0)
        out["release"].append(t2 - t1)
        out["round trip"].append(t2 - t0)
    _put(node, f"/v1/session/destroy/{sid}")
    return out


def hand_over(holder: MeshdNode, contender: MeshdNode, lock_delay: str, max_wait: float) -> float:
    """Seconds from SIGKILL of the holder's agent to the contender's acquire."""
    a, b = _session(holder, lock_delay), _session(contender, lock_delay)
    if _put(holder, f"/v1/kv/{KEY}?acquire={a}") is not True:
        raise BenchError("the holder could not take the free key")
    t0 = time.perf_counter()
    holder.proc.kill9()
    index = 0
    while time.perf_counter() - t0 < max_wait:
        status, raw = request(
            contender.http_port, "GET", f"/v1/kv/{KEY}?index={index}&wait=5s", timeout=10
        )
        rows = json.loads(raw) if status == 200 else []
        if rows and rows[0].get("Session"):
            index = rows[0]["ModifyIndex"]
            continue
        if _put(contender, f"/v1/kv/{KEY}?acquire={b}") is True:
            took = time.perf_counter() - t0
            _put(contender, f"/v1/session/destroy/{b}")
            return took
        time.sleep(0.05)  # free but refused: inside the lock-delay
        index = 0
    raise BenchError(f"no hand-over within {max_wait}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ops", type=int, default=300, help="acquire/release pairs")
    p.add_argument("--max-seconds", type=float, default=60.0, help="bound on the round trips")
    p.add_argument("--runs", type=int, default=3, help="hand-overs (holder killed each time)")
    p.add_argument("--lock-delay", default="0s", help="the sessions' LockDelay")
    p.add_argument("--max-wait", type=float, default=60.0, help="bound on one hand-over")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)
    print(machine_summary())
    with Procs("meshd-bench-locks-", keep=args.keep) as procs:
        cluster = MeshdCluster(procs).start()
        joins = [f"127.0.0.1:{n.server_port}" for n in cluster.nodes]
        c1 = start_meshd(procs, "c1", "client", retry_join=joins)
        c2 = start_meshd(procs, "c2", "client", retry_join=joins)
        for c in (c1, c2):
            wait_agent_ready(c)
        time.sleep(2.0)  # both nodes registered with serfHealth passing
        rt = round_trips(c2, args.ops, args.max_seconds)
        rows = []
        for name, values in rt.items():
            s = sorted(values)
            rows.append(
                [name, str(len(s)), fmt(percentile(s, 50) * 1e3), fmt(percentile(s, 99) * 1e3)]
            )
        print(table(["through a client agent", "n", "p50 ms", "p99 ms"], rows))
        takes: list[float] = []
        for _ in range(args.runs):
            takes.append(hand_over(c1, c2, args.lock_delay, args.max_wait))
            c1.proc.start()
            wait_agent_ready(c1)
            time.sleep(2.0)  # its serfHealth is passing again
        print(
            table(
                ["hand-over after kill -9 of the holder's agent", "value"],
                [
                    ["node_failure_timeout (servers' default)", "5s"],
                    ["lock-delay", args.lock_delay],
                    ["runs (s)", " ".join(fmt(t) for t in takes)],
                    ["median s", fmt(statistics.median(takes))],
                ],
            )
        )
        acq = sorted(rt["acquire"])
        print(
            result_line(
                "locks",
                {
                    "acquire_p50_ms": percentile(acq, 50) * 1e3,
                    "acquire_p99_ms": percentile(acq, 99) * 1e3,
                    "roundtrip_p50_ms": percentile(sorted(rt["round trip"]), 50) * 1e3,
                    "roundtrip_p99_ms": percentile(sorted(rt["round trip"]), 99) * 1e3,
                    "handover_median_s": statistics.median(takes),
                    "handover_max_s": max(takes),
                },
            )
        )
    return 0


if __name__ == "__main__":
    run_main(main)
