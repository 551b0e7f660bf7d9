#!/usr/bin/env python3
"""Latency the mesh adds: client -> api directly vs client -> web's Envoy -> mTLS -> api's Envoy.

Set-up, all on 127.0.0.1:

- "api": a tiny HTTP/1.1 responder (benchmarks/_upstream.py, its own process) answering every
  request with 200 and a 3-byte body;
- a `meshd agent -dev` with gRPC (xDS) on a free port;
- api registered with a TTL check (passing) and a connect sidecar on a fixed free port; web
  registered with a sidecar whose upstream "api" listens on a local bind port (both sidecars
  with Address 127.0.0.1, so their public listeners bind loopback, not 0.0.0.0);
- two Envoys, `meshd connect envoy -sidecar-for api|web ... -- --concurrency 1`.

The meshed path is client -> web sidecar (upstream listener) -> mTLS -> api sidecar (public
listener) -> api; the direct path is client -> api. Both are measured for api's protocol `tcp`
(the default: tcp_proxy on both Envoys) and `http` (service-defaults Protocol http: HTTP
connection managers, routes, XFCC), switched with a service-defaults entry; the script waits
until both Envoys' active listeners show the new filter chains.

Loads, one path at a time (direct and meshed alternate):

1. fixed rate, open loop: the built-in asyncio client issues requests on a schedule
   (default 1,000 req/s for 15 s per path, in 3 segments of 5 s alternating direct and meshed,
   after 1 s of unmeasured warm-up of each) over a pool of 16 keep-alive connections, and
   measures each latency from the request's *scheduled* time, so a stall is not hidden (no
   coordinated omission). It also reports the service time (from the actual write to the
   answer) and how late the client sent (its own jitter; a timer thread keeps the schedule,
   since asyncio's timers only have ~1 ms resolution; lateness shows in the scheduled-time
   figures of both paths alike);
2. max throughput, closed loop: `wrk -t1 -c16 -d10s --latency` (Debian package wrk).

A third row, `chain`, is http through a discovery chain on web's Envoy: a service-router (a
header route that does not match, then a catch-all route with retries) in front of a 50/50
service-splitter over two subsets of api; its target is < 0.2 ms added p99 over `http`.

Anchors: Istio documents +2.65 ms at p90 for its sidecars; the target here is added p99 < 1 ms
at 1,000 req/s. On a 2-core machine the client, both Envoys and the upstream share the cores;
their CPU use is printed with each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _cluster import (
    MeshdNode,
    Proc,
    Procs,
    envoy_admin,
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
    children_cpu_seconds,
    cpu_seconds,
    fmt,
    free_ports,
    machine_summary,
    percentile,
    result_line,
    run_bounded,
    run_main,
    self_cpu_seconds,
    table,
)

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
REQUEST_TIMEOUT = 5.0


# --------------------------------------------------------------------------- open-loop client


class ClientConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection; one request at a time."""

    def __init__(self) -> None:
        self.buf = b""
        self.fut: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"connection closed: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.fut is None or self.fut.done():
            return
        try:
            parsed = self._parse()
        except ValueError as e:
            self.fut.set_exception(e)
            return
        if parsed is not None:
            status, used = parsed
            self.buf = self.buf[used:]
            self.fut.set_result(status)

    def _parse(self) -> tuple[int, int] | None:
        """(status, bytes used) of one complete response at the buffer's start, or None."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buf[:end].lower()
        status = int(head[9:12])
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
        if m:
            used = end + 4 + int(m.group(1))
            return (status, used) if len(self.buf) >= used else None
        if b"\r\ntransfer-encoding: chunked" in head:
            pos = end + 4
            while True:
                line_end = self.buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(self.buf[pos:line_end].split(b";")[0], 16)
                if size == 0:
                    used = line_end + 4  # no trailers
                    return (status, used) if len(self.buf) >= used else None
                pos = line_end + 2 + size + 2
                if len(self.buf) < pos:
                    return None
        raise ValueError(f"response without a length: {head[:200]!r}")

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one port; the most recently used idle one is reused first."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.idle: asyncio.LifoQueue[ClientConn] = asyncio.LifoQueue()
        self.all: list[ClientConn] = []

    async def _connect(self) -> ClientConn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(ClientConn, LOOPBACK, self.port)
        self.all.append(conn)
        return conn

    async def open(self) -> Pool:
        for _ in range(self.size):
            self.idle.put_nowait(await self._connect())
        return self

    async def get(self) -> ClientConn:
        conn = await self.idle.get()
        if conn.closed:
            conn = await self._connect()
        return conn

    def put(self, conn: ClientConn) -> None:
        self.idle.put_nowait(conn)

    async def replace(self, conn: ClientConn) -> None:
        conn.close()
        with contextlib.suppress(OSError):
            self.idle.put_nowait(await self._connect())

    def close(self) -> None:
        for c in self.all:
            c.close()


@dataclass
class Load:
    path: str  # "direct" or "meshed"
    protocol: str
    kind: str  # "rate" or "max"
    requests: int = 0
    errors: int = 0
    wall: float = math.nan
    lat: dict[int, float] = field(default_factory=dict)  # percentile -> ms (scheduled time)
    svc: dict[int, float] = field(default_factory=dict)  # percentile -> ms (service time)
    late_p99_ms: float = math.nan  # how late the client sent, p99
    max_ms: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)  # process -> cores busy
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.wall if self.wall > 0 else math.nan


PCTS = (50, 90, 99)


@dataclass
class Samples:
    """Raw results of open-loop runs against one path, merged across rounds."""

    lat: list[float] = field(default_factory=list)  # seconds from the scheduled send
    svc: list[float] = field(default_factory=list)  # seconds from the actual send
    late: list[float] = field(default_factory=list)  # actual send - scheduled send
    errors: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds
    notes: list[str] = field(default_factory=list)

    def into(self, res: Load) -> Load:
        lat, svc, late = sorted(self.lat), sorted(self.svc), sorted(self.late)
        res.requests, res.errors, res.wall = len(lat), self.errors, self.wall
        res.lat = {p: percentile(lat, p) * 1000 for p in PCTS}
        res.svc = {p: percentile(svc, p) * 1000 for p in PCTS}
        res.late_p99_ms = percentile(late, 99) * 1000
        res.max_ms = lat[-1] * 1000 if lat else math.nan
        res.cpu = {k: v / self.wall for k, v in self.cpu.items()} if self.wall > 0 else {}
        res.notes += self.notes
        return res


async def open_loop(port: int, rate: float, duration: float, conns: int, out: Samples) -> None:
    """`rate` req/s for `duration` s on a schedule; latency from each scheduled time."""
    req = b"GET / HTTP/1.1\r\nHost: api\r\nUser-Agent: meshd-bench\r\n\r\n"
    pool = await Pool(port, conns).open()
    total = int(rate * duration)
    sent = 0
    first_error = ""
    tasks: set[asyncio.Task[None]] = set()

    async def one(sched: float) -> None:
        nonlocal first_error
        conn = await pool.get()
        t_send = time.perf_counter()
        try:
            status = await asyncio.wait_for(conn.request(req), REQUEST_TIMEOUT)
        except (OSError, ValueError, TimeoutError) as e:
            out.errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            await pool.replace(conn)
            return
        now = time.perf_counter()
        pool.put(conn)
        if status != 200:
            out.errors += 1
            first_error = first_error or f"HTTP {status}"
            return
        out.lat.append(now - sched)
        out.svc.append(now - t_send)
        out.late.append(t_send - sched)

    # The schedule is kept by a thread: time.sleep() wakes within ~0.1 ms, asyncio's timers
    # only within ~1 ms (epoll's millisecond timeout). The thread hands each due request to
    # the event loop, which sends it; `late` records how far behind schedule that was.
    loop = asyncio.get_running_loop()
    all_sent = loop.create_future()
    stop = threading.Event()
    t0 = time.perf_counter() + 0.02

    def start_one(sched: float) -> None:
        nonlocal sent
        sent += 1
        task = loop.create_task(one(sched))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def ticker() -> None:
        hard_stop = t0 + duration + 10.0  # bounded even if the schedule cannot be kept
        for i in range(total):
            sched = t0 + i / rate
            delay = sched - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if stop.is_set() or time.perf_counter() > hard_stop:
                break
            loop.call_soon_threadsafe(start_one, sched)
        loop.call_soon_threadsafe(lambda: all_sent.done() or all_sent.set_result(None))

    thread = threading.Thread(target=ticker, name="open-loop-ticker", daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(asyncio.shield(all_sent), duration + 15.0)
    finally:
        stop.set()
        thread.join(timeout=5)
    if tasks:
        await asyncio.wait(set(tasks), timeout=REQUEST_TIMEOUT + 5)
    out.wall += time.perf_counter() - t0
    pool.close()
    if first_error:
        out.notes.append(f"first error: {first_error}")
    if sent < total:
        out.notes.append(f"only {sent} of {total} scheduled requests were sent")


# --------------------------------------------------------------------------- wrk


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        return math.nan
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def run_wrk(
    wrk: str, port: int, res: Load, connections: int, duration: float, workdir: Path
) -> Load:
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        f"http://{LOOPBACK}:{port}/",
    ]
    proc = run_bounded(cmd, timeout=duration + 30, stdout_path=workdir / "wrk.out")
    out = proc.stdout
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (exit {proc.returncode}):\n{proc.stderr}\n{out}")
    for pct in (50, 90, 99):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res.lat[pct] = _ms(m.group(1)) if m else math.nan
    m = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if m:
        res.requests = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    rps = float(m.group(1)) if m else math.nan
    res.wall = res.requests / rps if rps > 0 else math.nan
    m = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    res.max_ms = _ms(m.group(1)) if m else math.nan
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res.errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", out)
    if m:
        res.notes.append(f"wrk socket errors:{m.group(1)}")
    return res


# --------------------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    agent: MeshdNode
    upstream: Proc
    api_port: int
    up_port: int  # web's local bind port for upstream api
    envoys: dict[str, tuple[Proc, int]]

    def check(self) -> None:
        for name, p in [
            ("agent", self.agent.proc),
            ("upstream", self.upstream),
            *((f"envoy {k}", v[0]) for k, v in self.envoys.items()),
        ]:
            if not p.alive():
                raise BenchError(f"{name} exited:\n{p.log_tail()}")


def put_ok(port: int, path: str, body: object) -> None:
    status, raw = request(port, "PUT", path, body=body, timeout=10)
    if status != 200:
        raise BenchError(f"PUT {path} -> {status}: {raw[:300]!r}")


def build_mesh(procs: Procs) -> Mesh:
    api_port, api_pub, web_port, web_pub, up_port, api_admin, web_admin = free_ports(7)
    upstream = procs.add(
        "upstream",
        [sys.executable, str(Path(__file__).with_name("_upstream.py")), f"--port={api_port}"],
    ).start()
    agent = start_meshd(procs, "dev", "dev", grpc=True)
    wait_agent_ready(agent)
    wait_until(
        lambda: request(api_port, "GET", "/")[0] == 200, 15, "the upstream", logs=upstream.log_tail
    )
    put_ok(
        agent.http_port,
        "/v1/agent/service/register",
        {
            "Name": "api",
            "ID": "api",
            "Port": api_port,
            "Meta": {"version": "v1"},
            "Check": {"CheckID": "api-ttl", "TTL": "10m", "Status": "passing"},
            "Connect": {"SidecarService": {"Port": api_pub, "Address": LOOPBACK}},
        },
    )
    put_ok(
        agent.http_port,
        "/v1/agent/service/register",
        {
            "Name": "web",
            "ID": "web",
            "Port": web_port,
            "Check": {"CheckID": "web-ttl", "TTL": "10m", "Status": "passing"},
            "Connect": {
                "SidecarService": {
                    "Port": web_pub,
                    "Address": LOOPBACK,
                    "Proxy": {"Upstreams": [{"DestinationName": "api", "LocalBindPort": up_port}]},
                }
            },
        },
    )
    envoys = {
        sid: start_envoy(procs, agent, sid, admin)
        for sid, admin in (("api", api_admin), ("web", web_admin))
    }
    mesh = Mesh(agent, upstream, api_port, up_port, envoys)

    def through_mesh() -> bool:
        mesh.check()
        return request(up_port, "GET", "/", timeout=2)[0] == 200

    wait_until(
        through_mesh,
        60,
        "a 200 through both Envoys",
        interval=0.2,
        logs=lambda: "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs.procs),
    )
    return mesh


# The "chain" row: http plus a router (a header route that does not match, then a catch-all
# with retries) in front of a 50/50 splitter over two subsets that both select the one api
# instance, so every request runs route matching, a weighted-cluster pick and a retry policy.
CHAIN_ENTRIES: list[dict[str, object]] = [
    {
        "Kind": "service-resolver",
        "Name": "api",
        "Subsets": {
            "a": {"Filter": "Service.Meta.version == v1"},
            "b": {"Filter": "Service.Meta.version == v1"},
        },
    },
    {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [{"Weight": 50, "ServiceSubset": "a"}, {"Weight": 50, "ServiceSubset": "b"}],
    },
    {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
                "Destination": {"ServiceSubset": "b"},
            },
            {
                "Match": {"HTTP": {"PathPrefix": "/"}},
                "Destination": {
                    "NumRetries": 2,
                    "RetryOnConnectFailure": True,
                    "RetryOnStatusCodes": [503],
                },
            },
        ],
    },
]


def set_chain(mesh: Mesh, on: bool) -> None:
    """Write (in order) or delete (in reverse) the chain entries; wait for web's routes."""
    port = mesh.agent.http_port
    if on:
        for entry in CHAIN_ENTRIES:
            put_ok(port, "/v1/config", entry)
    else:
        for entry in reversed(CHAIN_ENTRIES):
            status, raw = request(port, "DELETE", f"/v1/config/{entry['Kind']}/{entry['Name']}")
            if status != 200:
                raise BenchError(f"DELETE {entry['Kind']}/api -> {status}: {raw[:300]!r}")
    admin = mesh.envoys["web"][1]

    def routed() -> bool:
        dump = envoy_admin(admin, "/config_dump")
        return ("weighted_clusters" in dump) == on

    wait_until(routed, 30, f"web's routes {'with' if on else 'without'} the chain", interval=0.1)


def set_protocol(mesh: Mesh, protocol: str, drain: float) -> float:
    """Write service-defaults for api; wait until both Envoys' listeners use it. Seconds.

    `chain` is http with the router/splitter chain above; the other protocols remove it."""
    t0 = time.monotonic()
    if protocol != "chain":
        set_chain(mesh, False)  # a tcp api cannot keep a splitter: the servers refuse it
    put_ok(
        mesh.agent.http_port,
        "/v1/config",
        {
            "Kind": "service-defaults",
            "Name": "api",
            "Protocol": "http" if protocol == "chain" else protocol,
        },
    )
    if protocol == "chain":
        set_chain(mesh, True)
    want, other = (TCP_PROXY, HCM) if protocol == "tcp" else (HCM, TCP_PROXY)

    # api's public listener (api's Envoy) and web's listener for upstream api (web's Envoy)
    listener_prefix = {"api": "public_listener:", "web": "api:"}

    def applied() -> bool:
        mesh.check()
        for sid, (_, admin) in mesh.envoys.items():
            dump = json.loads(envoy_admin(admin, "/config_dump?resource=dynamic_listeners"))
            active = json.dumps(
                [
                    c.get("active_state")
                    for c in dump.get("configs", [])
                    if str(c.get("name", "")).startswith(listener_prefix[sid])
                ]
            )
            if want not in active or other in active:
                return False
        return True

    wait_until(applied, 30, f"both Envoys to use protocol {protocol}", interval=0.1)
    took = time.monotonic() - t0
    time.sleep(drain)  # let listeners that were replaced finish draining
    wait_until(
        lambda: request(mesh.up_port, "GET", "/", timeout=2)[0] == 200,
        30,
        "a 200 through the mesh after the protocol change",
    )
    return took


def cpu_snapshot(mesh: Mesh) -> dict[str, float]:
    snap = {
        "envoys": sum(cpu_seconds(p.pid) for p, _ in mesh.envoys.values()),
        "api": cpu_seconds(mesh.upstream.pid),
        "client": self_cpu_seconds(),
        "wrk": children_cpu_seconds(),
    }
    return snap


def cpu_used(
    before: dict[str, float], after: dict[str, float], wall: float, kind: str
) -> dict[str, float]:
    used = {k: (after[k] - before[k]) / wall for k in before}
    used["client"] = used.pop("wrk") if kind == "max" else used["client"]
    used.pop("wrk", None)
    return used


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Added latency of two Envoy sidecars (mTLS) vs calling the upstream "
        "directly, for protocol tcp and http, at a fixed rate and at max.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--protocols",
        default="tcp,http,chain",
        help="comma-separated: tcp, http, chain (http through a router + splitter with retries)",
    )
    p.add_argument("--rate", type=float, default=1000.0, help="fixed-rate load, requests/s")
    p.add_argument(
        "--duration",
        type=float,
        default=15.0,
        help="seconds of fixed-rate load per path and protocol",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split each path's fixed-rate load into this many segments, "
        "alternating direct and meshed (so drift hits both alike)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of unmeasured load before each fixed-rate run",
    )
    p.add_argument(
        "--conns", type=int, default=16, help="keep-alive connections of the fixed-rate client"
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=10.0,
        help="seconds of each wrk run (0 = skip the max-throughput runs)",
    )
    p.add_argument("--max-conns", type=int, default=16, help="wrk -c")
    p.add_argument(
        "--drain",
        type=float,
        default=1.0,
        help="seconds to wait after a protocol change has reached both Envoys",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-min load average to drop below 0.7",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    args.protocol_list = [x.strip() for x in args.protocols.split(",") if x.strip()]
    for proto in args.protocol_list:
        if proto not in ("tcp", "http", "chain"):
            p.error(f"unknown protocol {proto!r}")
    if args.rate <= 0 or args.duration <= 0 or args.conns < 1 or args.rounds < 1:
        p.error("--rate, --duration, --conns and --rounds must be positive")
    if args.rate * args.duration > 1_000_000:
        p.error("--rate x --duration is capped at 1,000,000 requests")
    return args


def main(argv: list[str] | None = None) -> int:
    from _common import find_tool

    args = parse_args(argv)
    wrk = find_tool("wrk")
    if args.max_duration > 0 and wrk is None:
        raise BenchError(
            "`wrk` is not installed (apt-get install -y wrk); or pass "
            "--max-duration 0 to skip the max-throughput runs"
        )
    quiet = wait_quiet(args.wait_quiet)
    print(f"== mesh_overhead: {machine_summary()}")
    print(quiet.describe(), flush=True)
    loads: list[Load] = []
    with Procs("meshd-bench-mesh-", keep=args.keep) as procs:
        t0 = time.monotonic()
        mesh = build_mesh(procs)
        version = request(mesh.envoys["web"][1], "GET", "/server_info")[1]
        m = re.search(rb'"version":\s*"([^"]+)"', version)
        print(
            f"agent, upstream and two Envoys ({m.group(1).decode() if m else '?'}) up in "
            f"{time.monotonic() - t0:.1f}s; api :{mesh.api_port}, web's upstream "
            f":{mesh.up_port}",
            flush=True,
        )
        for proto in args.protocol_list:
            took = set_protocol(mesh, proto, args.drain)
            print(
                f"protocol {proto}: on both Envoys {took:.2f}s after the config write", flush=True
            )
            ports = {"direct": mesh.api_port, "meshed": mesh.up_port}
            samples = {path: Samples() for path in ports}
            for path in ports:  # unmeasured warm-up of both paths
                asyncio.run(open_loop(ports[path], args.rate, args.warmup, args.conns, Samples()))
            seg = args.duration / args.rounds
            print(
                f"  {proto}: {args.rate:g} req/s, direct and meshed alternating, "
                f"{args.rounds} x {seg:g}s each ...",
                flush=True,
            )
            for _ in range(args.rounds):
                for path in ports:
                    before = cpu_snapshot(mesh)
                    asyncio.run(open_loop(ports[path], args.rate, seg, args.conns, samples[path]))
                    after = cpu_snapshot(mesh)
                    for k in ("envoys", "api", "client"):
                        samples[path].cpu[k] = samples[path].cpu.get(k, 0.0) + after[k] - before[k]
                    mesh.check()
            for path in ports:
                loads.append(samples[path].into(Load(path, proto, "rate")))
            if args.max_duration > 0:
                assert wrk is not None
                for path in ("direct", "meshed"):
                    print(
                        f"  {proto} {path}: wrk -t1 -c{args.max_conns} "
                        f"-d{args.max_duration:g}s ...",
                        flush=True,
                    )
                    res = Load(path, proto, "max")
                    before = cpu_snapshot(mesh)
                    t_wrk = time.perf_counter()
                    run_wrk(wrk, ports[path], res, args.max_conns, args.max_duration, procs.dir)
                    res.cpu = cpu_used(
                        before, cpu_snapshot(mesh), time.perf_counter() - t_wrk, "max"
                    )
                    loads.append(res)
                    mesh.check()
    report(loads, args, quiet.load_start)
    return 0


def report(loads: list[Load], args: argparse.Namespace, load0: float) -> None:
    def find(proto: str, path: str, kind: str) -> Load | None:
        return next((x for x in loads if (x.protocol, x.path, x.kind) == (proto, path, kind)), None)

    def cpu(x: Load) -> str:
        return " ".join(
            f"{k} {x.cpu.get(k, math.nan) * 100:.0f}%" for k in ("envoys", "api", "client")
        )

    values: dict[str, float | int | str] = {}
    rows = []
    for x in loads:
        if x.kind != "rate":
            continue
        rows.append(
            [
                x.protocol,
                x.path,
                f"{x.requests:,}",
                str(x.errors),
                fmt(x.rate, 0),
                *(fmt(x.lat[p], 3) for p in PCTS),
                fmt(x.max_ms, 3),
                *(fmt(x.svc[p], 3) for p in PCTS),
                fmt(x.late_p99_ms, 3),
                cpu(x),
            ]
        )
    print()
    print(
        table(
            [
                "proto",
                "path",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "svc p50",
                "svc p90",
                "svc p99",
                "send late p99",
                "CPU",
            ],
            rows,
            left=2,
            title=f"Fixed rate {args.rate:g} req/s, open loop, {args.conns} "
            f"keep-alive connections (latency from the scheduled send; "
            f"svc = from the actual send; CPU 100% = one core)",
        )
    )
    added_rows = []
    for proto in args.protocol_list:
        d, m = find(proto, "direct", "rate"), find(proto, "meshed", "rate")
        if d is None or m is None:
            continue
        added = {p: m.lat[p] - d.lat[p] for p in PCTS}
        added_svc = {p: m.svc[p] - d.svc[p] for p in PCTS}
        added_rows.append([proto, "scheduled", *(fmt(added[p], 3) for p in PCTS)])
        added_rows.append([proto, "service time", *(fmt(added_svc[p], 3) for p in PCTS)])
        for p in PCTS:
            values[f"{proto}_direct_p{p}_ms"] = d.lat[p]
            values[f"{proto}_meshed_p{p}_ms"] = m.lat[p]
            values[f"{proto}_added_p{p}_ms"] = added[p]
        values[f"{proto}_errors"] = d.errors + m.errors
    print()
    print(
        table(
            ["proto", "measured from", "added p50 ms", "added p90 ms", "added p99 ms"],
            added_rows,
            left=2,
            title=f"Added by the mesh at {args.rate:g} req/s (meshed - direct, per "
            f"percentile; Istio's documented figure: +2.65 ms at p90; target: added "
            f"p99 < 1 ms)",
        )
    )
    for proto in args.protocol_list:
        key = f"{proto}_added_p99_ms"
        if key in values:
            ok = float(values[key]) < 1.0
            print(
                f"target added p99 < 1 ms ({proto}): {'met' if ok else 'NOT met'} "
                f"({fmt(float(values[key]), 3)} ms)"
            )
    if "chain_added_p99_ms" in values and "http_added_p99_ms" in values:
        extra = float(values["chain_added_p99_ms"]) - float(values["http_added_p99_ms"])
        values["chain_over_http_p99_ms"] = extra
        print(
            f"target chain p99 < http p99 + 0.2 ms: {'met' if extra < 0.2 else 'NOT met'} "
            f"({fmt(extra, 3)} ms more than http)"
        )
    max_rows = []
    for x in loads:
        if x.kind != "max":
            continue
        max_rows.append(
            [
                x.protocol,
                x.path,
                f"{x.requests:,}",
                str(x.errors),
                fmt(x.rate, 0),
                *(fmt(x.lat[p], 3) for p in PCTS),
                fmt(x.max_ms, 3),
                cpu(x),
            ]
        )
        values[f"{x.protocol}_{x.path}_max_rps"] = x.rate
    if max_rows:
        print()
        print(
            table(
                [
                    "proto",
                    "path",
                    "requests",
                    "non-2xx",
                    "req/s",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "CPU (client = wrk)",
                ],
                max_rows,
                left=2,
                title=f"Max throughput: wrk -t1 -c{args.max_conns} "
                f"-d{args.max_duration:g}s (closed loop)",
            )
        )
    for x in loads:
        for note in x.notes:
            print(f"note ({x.protocol} {x.path} {x.kind}): {note}")
    load_end = loadavg()[0]
    print(f"1-min load average: {load0:.2f} at start, {load_end:.2f} at end")
    values.update({"load_start": load0, "load_end": load_end})
    print(result_line("mesh_overhead", values))


if __name__ == "__main__":
    run_main(main)
