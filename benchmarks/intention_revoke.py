#!/usr/bin/env python3
"""Intention changes reaching the sidecars: deny web -> api refuses web's requests; delete serves.

The set-up is mesh_overhead.py's (a `meshd agent -dev` with xDS, an upstream "api", web's and
api's Envoys, all on 127.0.0.1); api's protocol is tcp (the default) or http (--protocol).
Then, --changes times:

1. write `deny web -> api` (PUT /v1/connect/intentions/exact) and, from its HTTP 200, send a
   request through web's upstream listener every --poll-ms (a fresh connection each, as a new
   client would open) until one is refused (a reset at L4, a 403 at L7); record the time;
2. delete the intention and, the same way, wait until a request is served again.

Every wait is bounded (--max-wait, counted as a miss). Target: both under 1 s, the bound the
integration tests asserted before timings moved out of the tests.
"""

from __future__ import annotations

import argparse
import http.client
import math
import time

from _cluster import Procs, loadavg, request, wait_quiet
from _common import (
    BenchError,
    fmt,
    machine_summary,
    percentile,
    result_line,
    run_main,
    table,
)
from mesh_overhead import build_mesh, put_ok, set_protocol

INTENTION = "/v1/connect/intentions/exact?source=web&destination=api"
TARGET_MS = 1000.0


def served(port: int) -> bool:
    """One request through the mesh on a new connection: answered 200, or refused."""
    try:
        return request(port, "GET", "/", timeout=1)[0] == 200
    except (ConnectionError, TimeoutError, http.client.HTTPException):
        return False


def wait_served(port: int, want: bool, period: float, max_wait: float) -> float:
    """perf_counter() when a request first comes out as `want` (served or refused), or NaN."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        t_try = time.perf_counter()
        if served(port) == want:
            return time.perf_counter()
        pause = period - (time.perf_counter() - t_try)
        if pause > 0:
            time.sleep(pause)
    return math.nan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time from writing (deleting) a deny intention to web's requests to api "
        "being refused (served again) by the Envoy sidecars.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--changes", type=int, default=20, help="deny + delete rounds")
    p.add_argument("--protocol", choices=("tcp", "http"), default="tcp", help="api's protocol")
    p.add_argument("--poll-ms", type=float, default=5.0, help="request period while waiting")
    p.add_argument("--max-wait", type=float, default=10.0, help="seconds before a miss")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-min load average to drop below 0.7",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = p.parse_args(argv)
    if args.changes < 1 or args.poll_ms <= 0 or args.max_wait <= 0:
        p.error("--changes, --poll-ms and --max-wait must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = wait_quiet(args.wait_quiet)
    print(f"== intention_revoke: {machine_summary()}")
    print(quiet.describe(), flush=True)
    deny_ms: list[float] = []
    allow_ms: list[float] = []
    with Procs("meshd-bench-intent-", keep=args.keep) as procs:
        mesh = build_mesh(procs)
        if args.protocol == "http":
            set_protocol(mesh, "http", drain=1.0)
        http_port, period = mesh.agent.http_port, args.poll_ms / 1000
        print(f"mesh up (api protocol {args.protocol}); {args.changes} rounds ...", flush=True)
        for _ in range(args.changes):
            put_ok(http_port, INTENTION, {"Action": "deny"})
            t_write = time.perf_counter()
            deny_ms.append(
                (wait_served(mesh.up_port, False, period, args.max_wait) - t_write) * 1e3
            )
            status, raw = request(http_port, "DELETE", INTENTION, timeout=10)
            if status != 200:
                raise BenchError(f"DELETE {INTENTION} -> {status}: {raw[:300]!r}")
            t_delete = time.perf_counter()
            back = wait_served(mesh.up_port, True, period, args.max_wait)
            allow_ms.append((back - t_delete) * 1e3)
            if math.isnan(back):
                raise BenchError("api never served again after the deny was deleted")
            mesh.check()
    report(deny_ms, allow_ms, args, quiet.load_start)
    return 0 if not any(math.isnan(v) for v in deny_ms) else 1


def report(
    deny_ms: list[float], allow_ms: list[float], args: argparse.Namespace, load0: float
) -> None:
    def stats(values: list[float]) -> list[float]:
        ok = sorted(v for v in values if not math.isnan(v))
        return [
            percentile(ok, 50),
            percentile(ok, 90),
            percentile(ok, 99),
            ok[-1] if ok else math.nan,
            float(len(values) - len(ok)),
        ]

    deny, allow = stats(deny_ms), stats(allow_ms)
    rows = [
        [name, str(len(v)), *(fmt(x, 1) for x in s[:4]), str(int(s[4]))]
        for name, v, s in (
            ("deny written -> request refused", deny_ms, deny),
            ("deny deleted -> request served", allow_ms, allow),
        )
    ]
    print()
    print(
        table(
            ["interval", "rounds", "p50 ms", "p90 ms", "p99 ms", "max ms", "missed"],
            rows,
            title=f"Intentions through the Envoy sidecars (api protocol {args.protocol}, "
            f"a request every {args.poll_ms:g} ms)",
        )
    )
    met = not deny[4] and not allow[4] and max(deny[3], allow[3]) < TARGET_MS
    print(
        f"target max < {TARGET_MS:g} ms: {'met' if met else 'NOT met'} "
        f"(deny max {fmt(deny[3], 1)} ms, delete max {fmt(allow[3], 1)} ms)"
    )
    load_end = loadavg()[0]
    print(f"1-min load average: {load0:.2f} at start, {load_end:.2f} at end")
    print(
        result_line(
            "intention_revoke",
            {
                "rounds": len(deny_ms),
                "protocol": args.protocol,
                "deny_p50_ms": deny[0],
                "deny_p99_ms": deny[2],
                "deny_max_ms": deny[3],
                "allow_p50_ms": allow[0],
                "allow_max_ms": allow[3],
                "missed": int(deny[4] + allow[4]),
                "target_met": "yes" if met else "no",
                "load_start": load0,
                "load_end": load_end,
            },
        )
    )


if __name__ == "__main__":
    run_main(main)
