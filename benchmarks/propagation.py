#!/usr/bin/env python3
"""Change propagation: a service registered on agent A -> an Envoy on agent B has the endpoint.

Two agents on 127.0.0.1 with distinct ports:

- A: a server (`-server -bootstrap-expect=1 -data-dir=TMP`, Raft port from a config file);
- B: a client agent (`-retry-join=127.0.0.1:<A's server port>`) with gRPC (xDS) enabled.

On B, web is registered with a connect sidecar whose upstream is "api", and that sidecar runs
as a real Envoy (`meshd connect envoy -sidecar-for web ... -- --concurrency 1`). One api
instance (api-0) is registered on A first, so the upstream cluster already has an endpoint.

Then, --changes times (default 100):

1. register a new api instance on A, `PUT /v1/agent/service/register`, with a connect sidecar
   on a new port (Address 127.0.0.1). The sidecar's checks are replaced by one TTL check that
   starts passing (`SidecarService.Checks`), because the default sidecar checks (TCP
   "listening", 1 s interval, plus an alias) would make the figure measure the health-check
   interval rather than propagation: no Envoy listens on these sidecar ports;
2. poll B's Envoy admin `/clusters` every 5 ms (keep-alive connection) until the new
   endpoint `127.0.0.1:<port>` is listed as healthy, and record the time from the register
   call's HTTP 200 (and from the call's start) to the poll answer that showed it;
3. deregister the instance (on A) and wait, the same way, until B's Envoy dropped it (also
   recorded).

Every wait is bounded (--max-wait, default 10 s, counted as a miss). The resolution is the
poll period plus one admin round trip. Target (DESIGN.md): p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import time
from dataclasses import dataclass

from _cluster import (
    MeshdNode,
    Procs,
    loadavg,
    request,
    start_envoy,
    start_meshd,
    wait_agent_ready,
    wait_quiet,
    wait_until,
)
from _common import (
    LOOPBACK,
    BenchError,
    fmt,
    free_ports,
    machine_summary,
    percentile,
    result_line,
    run_main,
    table,
)


class Keepalive:
    """A keep-alive HTTP/1.1 connection to one loopback port, reopened after an error."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Change:
    n: int
    port: int
    call_ms: float = math.nan  # the register call itself
    from_200_ms: float = math.nan
    from_start_ms: float = math.nan
    polls: int = 0
    removed_ms: float = math.nan  # deregister's 200 -> gone from B's Envoy


def endpoint_state(clusters: str, addr: str) -> str:
    """ "healthy", "unhealthy" or "" (absent) for `addr` in Envoy's /clusters text output."""
    state = ""
    for line in clusters.splitlines():
        if f"::{addr}::health_flags::" in line:
            state = "healthy" if line.endswith("::healthy") else "unhealthy"
    return state


def register_api(a: Keepalive, n: int, service_port: int, sidecar_port: int) -> int:
    body = {
        "Name": "api",
        "ID": f"api-{n}",
        "Port": service_port,
        "Connect": {
            "SidecarService": {
                "Port": sidecar_port,
                "Address": LOOPBACK,
                "Checks": [
                    {
                        "CheckID": f"api-{n}-sidecar-ttl",
                        "Name": "bench sidecar TTL",
                        "TTL": "10m",
                        "Status": "passing",
                    }
                ],
            }
        },
    }
    status, raw = a.call("PUT", "/v1/agent/service/register", json.dumps(body).encode())
    if status != 200:
        raise BenchError(f"register api-{n} -> {status}: {raw[:300]!r}")
    return status


def wait_endpoint(
    admin: Keepalive, addr: str, present: bool, period: float, max_wait: float
) -> tuple[float, int]:
    """Poll /clusters until `addr` is healthy (present) or gone; (time seen, polls) or NaN."""
    deadline = time.perf_counter() + max_wait
    polls = 0
    while time.perf_counter() < deadline:
        t_poll = time.perf_counter()
        status, raw = admin.call("GET", "/clusters")
        now = time.perf_counter()
        polls += 1
        if status == 200:
            state = endpoint_state(raw.decode(errors="replace"), addr)
            if (state == "healthy") if present else (state == ""):
                return now, polls
        pause = period - (time.perf_counter() - t_poll)
        if pause > 0:
            time.sleep(pause)
    return math.nan, polls


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time from registering a service on one agent to its endpoint appearing "
        "in an Envoy sidecar on another agent.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--changes", type=int, default=100, help="instances to register (one by one)")
    p.add_argument("--poll-ms", type=float, default=5.0, help="Envoy admin poll period")
    p.add_argument(
        "--max-wait",
        type=float,
        default=10.0,
        help="seconds to wait for one change before counting it as missed",
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
    if args.changes < 1 or args.poll_ms <= 0 or args.max_wait <= 0:
        p.error("--changes, --poll-ms and --max-wait must be positive")
    return args


def setup(procs: Procs) -> tuple[MeshdNode, MeshdNode, int]:
    """Server A, client B, web + Envoy on B; returns (A, B, Envoy admin port)."""
    a = start_meshd(procs, "server-a", "server", bootstrap_expect=1)
    wait_agent_ready(a)
    b = start_meshd(
        procs, "client-b", "client", retry_join=[f"{LOOPBACK}:{a.server_port}"], grpc=True
    )
    wait_agent_ready(b)
    web_port, web_pub, up_port, admin_port = free_ports(4)
    status, raw = request(
        b.http_port,
        "PUT",
        "/v1/agent/service/register",
        body={
            "Name": "web",
            "ID": "web",
            "Port": web_port,
            "Connect": {
                "SidecarService": {
                    "Port": web_pub,
                    "Address": LOOPBACK,
                    "Proxy": {"Upstreams": [{"DestinationName": "api", "LocalBindPort": up_port}]},
                }
            },
        },
        timeout=10,
    )
    if status != 200:
        raise BenchError(f"register web on B -> {status}: {raw[:300]!r}")
    envoy, admin = start_envoy(procs, b, "web", admin_port)
    wait_until(
        lambda: request(admin, "GET", "/ready", timeout=1)[0] == 200,
        60,
        "web's Envoy to be ready",
        interval=0.1,
        logs=envoy.log_tail,
    )
    return a, b, admin


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = wait_quiet(args.wait_quiet)
    print(f"== propagation: {machine_summary()}")
    print(quiet.describe(), flush=True)
    changes: list[Change] = []
    with Procs("meshd-bench-prop-", keep=args.keep) as procs:
        t0 = time.monotonic()
        a, b, admin_port = setup(procs)
        api_conn, admin = Keepalive(a.http_port, timeout=15), Keepalive(admin_port)
        try:
            ports = free_ports(2 * (args.changes + 1))
            register_api(api_conn, 0, ports[0], ports[1])
            seen, _ = wait_endpoint(admin, f"{LOOPBACK}:{ports[1]}", True, 0.005, 60)
            if math.isnan(seen):
                raise BenchError(
                    "the first api instance never reached web's Envoy:\n"
                    + "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs.procs)
                )
            print(
                f"server A, client B and web's Envoy on B up in {time.monotonic() - t0:.1f}s; "
                f"api-0 in B's Envoy; {args.changes} changes ...",
                flush=True,
            )
            period = args.poll_ms / 1000
            for n in range(1, args.changes + 1):
                svc_port, sidecar_port = ports[2 * n], ports[2 * n + 1]
                addr = f"{LOOPBACK}:{sidecar_port}"
                ch = Change(n, sidecar_port)
                t_start = time.perf_counter()
                register_api(api_conn, n, svc_port, sidecar_port)
                t_200 = time.perf_counter()
                seen, ch.polls = wait_endpoint(admin, addr, True, period, args.max_wait)
                ch.call_ms = (t_200 - t_start) * 1000
                ch.from_200_ms = (seen - t_200) * 1000
                ch.from_start_ms = (seen - t_start) * 1000
                status, raw = api_conn.call("PUT", f"/v1/agent/service/deregister/api-{n}")
                if status != 200:
                    raise BenchError(f"deregister api-{n} -> {status}: {raw[:300]!r}")
                t_dereg = time.perf_counter()
                gone, _ = wait_endpoint(admin, addr, False, period, args.max_wait)
                ch.removed_ms = (gone - t_dereg) * 1000
                changes.append(ch)
                if n % 25 == 0:
                    print(f"  {n} changes done", flush=True)
                for node in (a, b):
                    if not node.proc.alive():
                        raise BenchError(f"{node.name} exited:\n{node.proc.log_tail()}")
        finally:
            api_conn.close()
            admin.close()
    report(changes, args, quiet.load_start)
    return 0 if all(not math.isnan(c.from_200_ms) for c in changes) else 1


def report(changes: list[Change], args: argparse.Namespace, load0: float) -> None:
    def stats(values: list[float]) -> list[float]:
        ok = sorted(v for v in values if not math.isnan(v))
        return [
            percentile(ok, 50),
            percentile(ok, 90),
            percentile(ok, 99),
            ok[-1] if ok else math.nan,
            float(len(values) - len(ok)),
        ]

    series = {
        "register call (HTTP 200 on A)": [c.call_ms for c in changes],
        "register 200 -> endpoint in B's Envoy": [c.from_200_ms for c in changes],
        "register start -> endpoint in B's Envoy": [c.from_start_ms for c in changes],
        "deregister 200 -> endpoint gone from B's Envoy": [c.removed_ms for c in changes],
    }
    rows = []
    computed = {}
    for name, values in series.items():
        s = stats(values)
        computed[name] = s
        rows.append([name, f"{len(values)}", *(fmt(v, 1) for v in s[:4]), str(int(s[4]))])
    print()
    print(
        table(
            ["interval", "changes", "p50 ms", "p90 ms", "p99 ms", "max ms", "missed"],
            rows,
            title=f"Propagation: register on server A -> web's Envoy on client B lists "
            f"the endpoint healthy (poll every {args.poll_ms:g} ms)",
        )
    )
    print(
        "note: each new sidecar carries one TTL check registered as passing (its default TCP "
        "'listening' check, 1 s interval, is replaced), so health checking does not dominate "
        "the figure"
    )
    main_s = computed["register 200 -> endpoint in B's Envoy"]
    start_s = computed["register start -> endpoint in B's Envoy"]
    missed = int(main_s[4])
    ok = not missed and main_s[2] < 200
    print(
        f"target p99 < 200 ms (from the register 200): {'met' if ok else 'NOT met'} "
        f"(p99 {fmt(main_s[2], 1)} ms, {missed} missed)"
    )
    polls = sorted(c.polls for c in changes)
    print(f"admin polls per change: median {percentile(polls, 50)}, max {polls[-1]}")
    load_end = loadavg()[0]
    print(f"1-min load average: {load0:.2f} at start, {load_end:.2f} at end")
    removed = computed["deregister 200 -> endpoint gone from B's Envoy"]
    print(
        result_line(
            "propagation",
            {
                "changes": len(changes),
                "p50_ms": main_s[0],
                "p90_ms": main_s[1],
                "p99_ms": main_s[2],
                "max_ms": main_s[3],
                "missed": missed,
                "from_start_p50_ms": start_s[0],
                "from_start_p99_ms": start_s[2],
                "register_call_p50_ms": computed["register call (HTTP 200 on A)"][0],
                "removal_p50_ms": removed[0],
                "removal_p99_ms": removed[2],
                "load_start": load0,
                "load_end": load_end,
            },
        )
    )


if __name__ == "__main__":
    run_main(main)
