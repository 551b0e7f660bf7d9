#!/usr/bin/env python3
"""64-operation transactions vs single KV puts, on 3 meshd servers (loopback, journaled).

Both phases write 128-byte values to the leader's HTTP API with the same client and the same
concurrency (default 16 requests in flight, for `--seconds` each, also capped by a request
count): `PUT /v1/kv/<key>` one key per request, and `PUT /v1/txn` with 64 `set` operations per
request. It prints requests/s, keys written/s and latency for both, and the ratio of keys/s. A
transaction is one Raft entry, so the ratio shows what batching 64 writes into one entry buys.
Every answer must be 200; anything else is counted as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Callable

import aiohttp
from _cluster import MeshdCluster, Procs
from _common import LOOPBACK, fmt, machine_summary, percentile, result_line, run_main, table

VALUE = b"v" * 128
B64 = base64.b64encode(VALUE).decode()
MAX_REQUESTS = 200_000


async def _phase(
    port: int, concurrency: int, seconds: float, make: Callable[[int], tuple[str, bytes]]
) -> tuple[int, list[float], int]:
    """(requests, latencies in s, errors) of `concurrency` workers for `seconds`."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal counter, errors
            while time.monotonic() < deadline and counter < MAX_REQUESTS:
                n = counter
                counter += 1
                path, body = make(n)
                t0 = time.perf_counter()
                async with session.put(f"http://{LOOPBACK}:{port}{path}", data=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        if errors <= 3:
                            print(f"error {r.status}: {(await r.text())[:200]}")
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies, errors


def _single(n: int) -> tuple[str, bytes]:
    return f"/v1/kv/bench/single/{n}", VALUE


def _txn(n: int) -> tuple[str, bytes]:
    ops = [{"KV": {"Verb": "set", "Key": f"bench/txn/{n}/{i}", "Value": B64}} for i in range(64)]
    return "/v1/txn", json.dumps(ops).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the cluster's data dir and logs")
    args = ap.parse_args()
    print(machine_summary(), flush=True)
    rows = []
    results: dict[str, float] = {}
    with Procs("meshd-bench-txn-", keep=args.keep) as procs:
        leader = MeshdCluster(procs).start().wait_formed()
        print(f"3 servers formed; leader {leader.name}", flush=True)
        for name, make, keys in (("single put", _single, 1), ("txn x64", _txn, 64)):
            t0 = time.monotonic()
            count, lat, errors = asyncio.run(
                _phase(leader.http_port, args.concurrency, args.seconds, make)
            )
            elapsed = time.monotonic() - t0
            lat.sort()
            rps = count / elapsed
            results[name] = rps * keys
            rows.append(
                [
                    name,
                    str(count),
                    fmt(rps, 0),
                    fmt(rps * keys, 0),
                    fmt(percentile(lat, 50) * 1000),
                    fmt(percentile(lat, 99) * 1000),
                    str(errors),
                ]
            )
    print(
        table(
            ["phase", "requests", "req/s", "keys/s", "p50 ms", "p99 ms", "errors"],
            rows,
            title=f"3 servers, {args.concurrency} in flight, {args.seconds:.0f} s per phase",
        )
    )
    ratio = results["txn x64"] / results["single put"] if results["single put"] else 0.0
    print(f"keys/s with 64-op transactions / keys/s with single puts: {ratio:.1f}x")
    print(
        result_line(
            "txn",
            {
                "single_keys_per_s": results["single put"],
                "txn_keys_per_s": results["txn x64"],
                "ratio": ratio,
            },
        )
    )
    return 0


if __name__ == "__main__":
    run_main(main)
