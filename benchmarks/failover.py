#!/usr/bin/env python3
"""Leader failover: how long after `kill -9` of the Raft leader a 3-server cluster takes writes.

A 3-server meshd cluster runs on 127.0.0.1 (distinct ports, data dirs in a temporary
directory). Each run:

1. finds the leader every server agrees on (GET /v1/status/leader, matched by Raft port);
2. sends it SIGKILL (t = 0 just before the signal);
3. starts a `PUT /v1/kv/x` try every 20 ms, alternating between the two survivors, each try
   with its own short timeout (0.5 s by default); tries overlap, so a try that hangs while
   there is no leader does not delay the next one. The first try answered 200 `true` ends
   the measurement (its answer time counts). GET /v1/status/leader on both survivors is polled
   every 20 ms too, to show when a survivor first named the new leader (polled independently,
   so with 20 ms granularity it can come out a little after the first accepted write);
4. restarts the killed server on the same data dir and waits until all three servers report
   3 Raft peers and agree on one leader, then lets the cluster settle briefly.

It prints every run and the median / max. Target (DESIGN.md): writes accepted again < 3 s.
Every loop is bounded: a run gives up after --max-wait seconds, a restart after 90 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import time
from dataclasses import dataclass

from _cluster import MeshdCluster, MeshdNode, Procs, keygen, loadavg, wait_quiet, wait_until
from _common import LOOPBACK, fmt, machine_summary, result_line, run_main, table

TARGET_S = 3.0  # DESIGN.md: writes accepted again within 3 s of losing the leader


@dataclass
class Run:
    n: int
    old_leader: str
    write_s: float = math.nan  # kill -> first accepted write
    leader_s: float = math.nan  # kill -> a survivor names a live new leader
    new_leader: str = ""
    via: str = ""  # the survivor that accepted the first write
    tries: int = 0
    failed_tries: int = 0  # answered, but not 200 `true` (or the connection failed)
    timed_out: int = 0  # no answer within the try timeout
    rejoin_s: float = math.nan  # restart -> 3 peers and an agreed leader again


async def measure(
    cluster: MeshdCluster,
    victim: MeshdNode,
    survivors: list[MeshdNode],
    run: Run,
    interval: float,
    try_timeout: float,
    max_wait: float,
) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[float, str]] = loop.create_future()
    timeout = aiohttp.ClientTimeout(total=try_timeout)
    raft_to_name = {n.raft_addr: n.name for n in cluster.nodes}
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one_try(node: MeshdNode, i: int) -> None:
            url = f"http://{LOOPBACK}:{node.http_port}/v1/kv/x"
            try:
                async with session.put(url, data=f"run{run.n}-try{i}".encode()) as r:
                    body = await r.read()
                    if r.status == 200 and body.strip() == b"true":
                        if not done.done():
                            done.set_result((time.perf_counter(), node.name))
                        return
            except TimeoutError:
                run.timed_out += 1
                return
            except aiohttp.ClientError:
                pass
            run.failed_tries += 1

        async def leader_of(node: MeshdNode) -> str:
            url = f"http://{LOOPBACK}:{node.http_port}/v1/status/leader"
            try:
                async with session.get(url) as r:
                    leader = await r.json()
            except (TimeoutError, aiohttp.ClientError, ValueError):
                return ""
            return leader if isinstance(leader, str) and leader != victim.raft_addr else ""

        async def watch_leader(t0: float) -> None:
            # independent of the write tries: ends when a survivor names a new leader
            while time.perf_counter() - t0 < max_wait:
                for leader in await asyncio.gather(*(leader_of(s) for s in survivors)):
                    if leader:
                        run.leader_s = time.perf_counter() - t0
                        run.new_leader = raft_to_name.get(leader, leader)
                        return
                await asyncio.sleep(interval)

        t0 = time.perf_counter()
        victim.proc.kill9()
        watcher = asyncio.create_task(watch_leader(t0))
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while not done.done() and time.perf_counter() - t0 < max_wait:
            task = asyncio.create_task(one_try(survivors[i % len(survivors)], i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            next_at = t0 + i * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(done), max(0.0, next_at - time.perf_counter())
                )
        run.tries = i
        if done.done():
            t_ok, via = done.result()
            run.write_s, run.via = t_ok - t0, via
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher, max(1.0, max_wait - (time.perf_counter() - t0)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Kill -9 the leader of a 3-server meshd cluster and time until a write "
        "through a survivor succeeds; restart it; repeat.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=10, help="leader kills")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between write tries")
    p.add_argument("--try-timeout", type=float, default=0.5, help="timeout of one write try")
    p.add_argument(
        "--max-wait",
        type=float,
        default=30.0,
        help="give a run up as failed after this many seconds",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds to let the cluster settle after a restarted server rejoined",
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
    if args.runs < 1 or args.interval <= 0 or args.try_timeout <= 0 or args.max_wait <= 0:
        p.error("--runs, --interval, --try-timeout and --max-wait must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = wait_quiet(args.wait_quiet)
    print(f"== failover: {machine_summary()}")
    print(quiet.describe(), flush=True)
    runs: list[Run] = []
    with Procs("meshd-bench-failover-", keep=args.keep) as procs:
        t0 = time.monotonic()
        # a multi-server cluster refuses to start without its key, so it always has one
        cluster = MeshdCluster(procs, encrypt=keygen()).start()
        print(f"3 servers formed in {time.monotonic() - t0:.1f}s (with a cluster key)", flush=True)
        for n in range(1, args.runs + 1):
            leader = cluster.leader()
            survivors = [s for s in cluster.nodes if s is not leader]
            run = Run(n, leader.name)
            asyncio.run(
                measure(
                    cluster, leader, survivors, run, args.interval, args.try_timeout, args.max_wait
                )
            )
            runs.append(run)
            t_restart = time.monotonic()
            leader.proc.start()
            cluster.wait_formed(timeout=90)
            run.rejoin_s = time.monotonic() - t_restart
            print(
                f"  run {n:2d}: killed {run.old_leader}, write accepted after "
                f"{fmt(run.write_s * 1000, 0)} ms via {run.via or '-'}; new leader "
                f"{run.new_leader or '?'} visible after {fmt(run.leader_s * 1000, 0)} ms; "
                f"rejoined in {run.rejoin_s:.1f}s",
                flush=True,
            )
            if math.isnan(run.write_s):
                print(f"    no write accepted within {args.max_wait:g}s:\n{cluster.logs()}")
            time.sleep(args.settle)
            wait_until(
                lambda: cluster.agreed_leader() is not None,
                30,
                "a leader after settle",
                logs=cluster.logs,
            )
    report(runs, args, quiet.load_start)
    return 0 if all(not math.isnan(r.write_s) for r in runs) else 1


def report(runs: list[Run], args: argparse.Namespace, load0: float) -> None:
    rows = [
        [
            str(r.n),
            r.old_leader,
            fmt(r.leader_s * 1000, 0),
            r.new_leader or "-",
            fmt(r.write_s * 1000, 0),
            r.via or "-",
            str(r.tries),
            str(r.failed_tries),
            str(r.timed_out),
            fmt(r.rejoin_s, 1),
        ]
        for r in runs
    ]
    ok = sorted(r.write_s for r in runs if not math.isnan(r.write_s))
    elected = sorted(r.leader_s for r in runs if not math.isnan(r.leader_s))
    median = statistics.median(ok) if ok else math.nan
    worst = ok[-1] if ok else math.nan
    rows.append(
        [
            "median",
            "",
            fmt(statistics.median(elected) * 1000, 0) if elected else "n/a",
            "",
            fmt(median * 1000, 0),
            "",
            "",
            "",
            "",
            "",
        ]
    )
    rows.append(
        [
            "max",
            "",
            fmt(elected[-1] * 1000, 0) if elected else "n/a",
            "",
            fmt(worst * 1000, 0),
            "",
            "",
            "",
            "",
            "",
        ]
    )
    print()
    print(
        table(
            [
                "run",
                "killed",
                "leader seen ms",
                "new leader",
                "write ok ms",
                "via",
                "tries",
                "refused",
                "timed out",
                "rejoin s",
            ],
            rows,
            left=2,
            title=f"Failover: kill -9 of the leader -> first accepted PUT /v1/kv/x "
            f"(tries every {args.interval * 1000:g} ms, {args.try_timeout:g}s "
            f"timeout each)",
        )
    )
    failed = sum(1 for r in runs if math.isnan(r.write_s))
    # the figure tests/multihost/test_failures.py asserted until timings left the tests
    met = bool(ok) and worst < TARGET_S and not failed
    print(
        f"target < {TARGET_S:g} s: {'met' if met else 'NOT met'} "
        f"(median {fmt(median, 2)} s, max {fmt(worst, 2)} s, {failed} runs without a write)"
    )
    load_end = loadavg()[0]
    print(f"1-min load average: {load0:.2f} at start, {load_end:.2f} at end")
    print(
        result_line(
            "failover",
            {
                "runs": len(runs),
                "median_s": median,
                "max_s": worst,
                "min_s": ok[0] if ok else math.nan,
                "leader_seen_median_s": statistics.median(elected) if elected else math.nan,
                "failed_runs": failed,
                "target_s": TARGET_S,
                "target_met": "yes" if met else "no",
                "load_start": load0,
                "load_end": load_end,
            },
        )
    )


if __name__ == "__main__":
    run_main(main)
