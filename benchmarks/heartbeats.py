"""Server CPU per heartbeat: one HTTP request per beat (before) vs a frame on the liveness socket.

One real meshd server (data dir, cluster key) and N simulated nodes in this process, each sending
`--rounds` heartbeats as fast as `--inflight` allows, first as `POST /rpc/heartbeat` (the
transport every beat used before issue 13; pooled keep-alive connections, HMAC-signed), then over
one WebSocket per node (`meshd.agent.liveness_client.HeartbeatLink`, what client agents use now).
Prints the server's CPU per beat for each, and this process's (the senders'). Not a test.

Then a fleet: `--steady` new nodes (a third of 10,000 by default) arriving at once (how long
until all are `serfHealth` passing), then beating once a second over sockets for `--seconds`:
the server's CPU (cores) and the heartbeat round-trip p99.

    python benchmarks/heartbeats.py [--nodes 1000] [--rounds 10] [--inflight 64] [--steady 3334]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchError,
    CpuMeter,
    MeshdAgent,
    fmt,
    http,
    install_sigterm_as_interrupt,
    machine_summary,
    percentile,
    result_line,
    self_cpu_seconds,
    table,
)

from meshd.agent.liveness_client import HeartbeatLink
from meshd.rpc import Heartbeat
from meshd.rpc_client import RPCClient

COORD = {"Vec": [0.001] * 8, "Error": 0.4, "Adjustment": 0.0, "Height": 1e-5}


def beat(i: int, prefix: str = "sim") -> Heartbeat:
    return Heartbeat(
        Node=f"{prefix}-{i}",
        Address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
        Datacenter="dc1",
        Coord=COORD,
        KeyFingerprints=["0123456789abcdef"],
    )


async def run_rounds(
    nodes: int, rounds: int, inflight: int, send: Callable[[int], Awaitable[Any]]
) -> int:
    """Every node beats once per round; at most `inflight` beats outstanding. Beats sent."""
    gate = asyncio.Semaphore(inflight)

    async def one(i: int) -> None:
        async with gate:
            await send(i)

    for _ in range(rounds):
        await asyncio.gather(*(one(i) for i in range(nodes)))
    return nodes * rounds


async def measure(
    server_pid: int,
    nodes: int,
    rounds: int,
    inflight: int,
    send: Callable[[int], Awaitable[Any]],
) -> dict[str, float]:
    await run_rounds(nodes, 1, inflight, send)  # warm-up: connections, nodes in the catalog
    await asyncio.sleep(1.0)  # the first-beat writes settle
    meter = CpuMeter(server_pid).start()
    mine = self_cpu_seconds()
    start = time.monotonic()
    sent = await run_rounds(nodes, rounds, inflight, send)
    wall = time.monotonic() - start
    meter.stop()
    client = self_cpu_seconds() - mine
    return {
        "beats": sent,
        "beats_per_s": sent / wall,
        "server_us": meter.cpu / sent * 1e6,
        "client_us": client / sent * 1e6,
        "server_cores": meter.cores,
    }


def passing(http_port: int, prefix: str) -> int:
    checks = http("GET", http_port, "/v1/health/state/passing")
    return sum(1 for c in checks if c["CheckID"] == "serfHealth" and c["Node"].startswith(prefix))


async def steady(
    srv: MeshdAgent, nodes: int, seconds: float, send: Callable[[int], Awaitable[Any]]
) -> dict[str, float]:
    """The fleet arrives at once (how long until every node is `serfHealth` passing), then
    every node beats once a second (phases spread over the second), as a fleet does."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await run_rounds(nodes, 1, 64, send)
    while await asyncio.to_thread(passing, srv.http_port, "fleet-") < nodes:
        if loop.time() - t0 > 120:
            raise BenchError("the fleet's nodes did not all turn passing within 120 s")
        await asyncio.sleep(0.05)
    arrival = loop.time() - t0
    await asyncio.sleep(1.0)
    server_pid = srv.pid
    rtts: list[float] = []
    meter = CpuMeter(server_pid).start()
    stop = loop.time() + seconds

    async def node(i: int) -> None:
        await asyncio.sleep(i / nodes)
        due = loop.time()
        while loop.time() < stop:
            t0 = loop.time()
            await send(i)
            rtts.append(loop.time() - t0)
            due += 1.0
            await asyncio.sleep(max(0.0, due - loop.time()))

    await asyncio.gather(*(node(i) for i in range(nodes)))
    meter.stop()
    rtts.sort()
    return {
        "arrival_s": arrival,
        "beats_per_s": len(rtts) / meter.wall,
        "server_cores": meter.cores,
        "p99_ms": percentile(rtts, 99) * 1000,
    }


async def main_async(args: argparse.Namespace) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    with MeshdAgent(mode="data-dir", node="hb-server", dns=False, extra=[f"-encrypt={key}"]) as srv:
        addr = f"127.0.0.1:{srv.server_port}"
        rpc = RPCClient([addr], base64.b64decode(key))
        beats = [beat(i) for i in range(args.nodes)]
        results: dict[str, dict[str, float]] = {}
        try:

            async def by_request(i: int) -> Any:
                return await rpc.call("heartbeat", beats[i], Any, timeout=10.0, addr=addr)

            results["HTTP request per beat (before)"] = await measure(
                srv.pid, args.nodes, args.rounds, args.inflight, by_request
            )
            links = [HeartbeatLink(rpc, b.Node) for b in beats]

            async def by_socket(i: int) -> Any:
                return await links[i].beat(beats[i])

            results["liveness socket frame (now)"] = await measure(
                srv.pid, args.nodes, args.rounds, args.inflight, by_socket
            )
            for link in links:
                await link.close()
            fleet = [beat(i, "fleet") for i in range(args.steady)]
            fleet_links = [HeartbeatLink(rpc, b.Node) for b in fleet]

            async def fleet_beat(i: int) -> Any:
                return await fleet_links[i].beat(fleet[i])

            held = await steady(srv, args.steady, args.seconds, fleet_beat)
            for link in fleet_links:
                await link.close()
        finally:
            await rpc.close()
    rows = [
        [
            name,
            f"{int(r['beats']):,}",
            fmt(r["beats_per_s"], 0),
            fmt(r["server_us"], 1),
            fmt(r["client_us"], 1),
            fmt(r["server_cores"], 2),
        ]
        for name, r in results.items()
    ]
    print(machine_summary())
    print(
        table(
            ["transport", "beats", "beats/s", "server us/beat", "sender us/beat", "server cores"],
            rows,
            title=f"{args.nodes} simulated nodes, {args.rounds} rounds, {args.inflight} in flight",
        )
    )
    before, now = results.values()
    print(f"server CPU per beat, now / before: {now['server_us'] / before['server_us']:.2f}")
    print(
        f"{args.steady} new nodes at once: all serfHealth passing after "
        f"{held['arrival_s']:.2f} s (their first beats included)"
    )
    print(
        f"steady fleet on one server over sockets: {args.steady} nodes at 1 beat/s for "
        f"{args.seconds:.0f} s: {held['beats_per_s']:,.0f} beats/s, server "
        f"{held['server_cores']:.3f} cores, heartbeat round trip p99 {held['p99_ms']:.1f} ms"
    )
    print(result_line("heartbeats_steady", {"nodes": args.steady, **held}))
    for name, r in results.items():
        print(result_line("heartbeats", {"transport": name.split()[0].lower(), **r}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--steady", type=int, default=3334, help="fleet share of one server (10k/3)")
    p.add_argument("--seconds", type=float, default=10.0)
    install_sigterm_as_interrupt()
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
