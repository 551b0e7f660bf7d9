"""Scale: a real 3-server meshd cluster on loopback and a simulated fleet in this process.

    python benchmarks/scale.py                                  # 1,000 nodes, 10,000 instances
    python benchmarks/scale.py --nodes 5000 --instances 50000
    python benchmarks/scale.py --nodes 10000 --instances 200000 --watchers 1000
    python benchmarks/scale.py --nodes 10000 --instances 200000 --beat-interval 4
        # a fleet this process cannot beat for at 1/s: each node every 4 s, timeout 20 s

The fleet is N simulated nodes in one asyncio loop, each heartbeating once a second (Consul's
rate) through the real agent->server transport (`_fleet.send_heartbeat`: a client agent's
liveness socket, `meshd.agent.liveness_client.HeartbeatLink`, one per node, placed on its
server by the agents' own rendezvous hash), M service instances registered through the real
RPC (one anti-entropy `Batch` per node, as an agent's first sync sends them), and W
blocking watchers (RPC reads with MinIndex, one per service, spread over the servers) in
`--watcher-procs` processes of their own (benchmarks/_watchers.py: in this one process they,
not the servers, were what a burst waited for).
Figures printed (issue 13's list):

- per-server CPU (cores) and RSS over a steady window of heartbeats, the fleet's own CPU;
- heartbeat round trip p50/p99 (as the fleet sees it);
- a node's death -> its instances leave `?passing`, and leave DNS (server s1's DNS port);
- a burst of changes (default 10,000, batched 500 per write) -> every watcher has the last
  change of its service; one change -> its watcher, p50/p99 (from the write's acknowledgement
  and from sending it);
- write latency p50/p99/max while the servers compact their Raft logs (8 sequential writers
  until each server wrote a snapshot, seen as `raft/snapshot.bin` changing);
- `GET /v1/catalog/services` p50/p99 on a follower and the leader;
- nodes that flapped: failed at least once, apart from those this process itself left
  without a beat for a whole timeout (`nodes_flapped_while_beating` must be 0).

Not a test: figures drift 25% or more on this shared 2-core machine; the 1-minute load average
is printed beside them. The fleet shares the cores with the servers: at 5,000 nodes and up its
own CPU (printed) is a large part of the machine, so treat server CPU there as a lower bound of
contention, not of cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import MeshdCluster, Procs, keygen, loadavg, request
from _common import (
    LOOPBACK,
    BenchError,
    cpu_seconds,
    fmt,
    free_ports,
    machine_summary,
    percentile,
    result_line,
    run_main,
    self_cpu_seconds,
)
from _fleet import Fleet, address
from _watchers import WatcherPool, WideClient

from meshd import queries as q
from meshd.keyring import hmac_key
from meshd.rpc_client import RPCError
from meshd.structs import Batch, KVOp

FAILURE_TIMEOUT = 5.0  # the servers' node_failure_timeout (meshd's default) at 1 beat/s
BATCH = 500  # registrations per write in the burst


async def _bounded(jobs: list[Callable[[], Awaitable[None]]], width: int) -> None:
    slots = asyncio.Semaphore(width)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ms(values: list[float], pct: float) -> float:
    return percentile(sorted(values), pct) * 1000


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: MeshdCluster, key: str) -> None:
        self.args = args
        self.cluster = cluster
        servers = [f"{LOOPBACK}:{n.server_port}" for n in cluster.nodes]
        self.rpc = WideClient(servers, hmac_key(key))
        self.key = key
        self.servers = servers
        self.fleet = Fleet(
            self.rpc, servers, args.nodes, args.instances, args.beat_interval, args.failure_timeout
        )
        self.out: dict[str, float] = {}

    async def run(self) -> dict[str, float]:
        f, out = self.fleet, self.out
        beats = asyncio.create_task(f.beat_forever())
        t0 = time.monotonic()
        await self._until(lambda: self._alive_nodes() >= f.n, 60 + f.n / 50, "nodes alive")
        out["nodes_alive_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        batches = [Batch(Ops=[f.register_op(j) for j in f.instances_of(i)]) for i in range(f.n)]
        await _bounded([functools.partial(f.write, b) for b in batches], 32)
        out["register_per_s"] = f.m / (time.monotonic() - t0)
        # the fleet's own objects (links, tasks, sessions) live for the run: keep the collector
        # of this process from pausing the measurements below (the servers freeze theirs too)
        gc.collect()
        gc.freeze()
        await self._steady(15.0)
        await self._catalog_services()
        await self._watchers()
        await self._node_death()
        await self._compaction()
        flapped = await asyncio.to_thread(self._flapped)
        # the fleet's fault: it sent no beat for a whole timeout (this process was saturated)
        late = {f.node(i) for i in f.late - f.dead}
        self.out["nodes_beat_late"] = len(late)
        self.out["nodes_flapped"] = len(flapped)
        self.out["nodes_flapped_while_beating"] = len(flapped - late)  # the servers': must be 0
        f.stop()
        beats.cancel()
        await f.close()
        await self.rpc.close()
        return out

    async def _until(self, pred: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(pred):
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for {what}\n{self.cluster.logs()}")
            await asyncio.sleep(0.5)

    def _alive_nodes(self) -> int:
        leader = self.cluster.nodes[0]
        _, raw = request(leader.http_port, "GET", "/v1/health/state/passing", timeout=30)
        checks = json.loads(raw)
        return sum(1 for c in checks if c["CheckID"] == "serfHealth" and c["Node"][:4] == "sim-")

    def _flapped(self) -> set[str]:
        """Nodes (other than the one killed) whose serfHealth ever changed: it is written once
        when a node first beats and again only on a transition, so ModifyIndex != CreateIndex
        means the node was failed at least once."""
        victim = self.fleet.node(self.fleet.n - 1)
        _, raw = request(self.cluster.nodes[0].http_port, "GET", "/v1/health/state/any", timeout=60)
        return {
            c["Node"]
            for c in json.loads(raw)
            if c["CheckID"] == "serfHealth"
            and c["Node"][:4] == "sim-"
            and c["Node"] != victim
            and c["ModifyIndex"] != c["CreateIndex"]
        }

    async def _steady(self, seconds: float) -> None:
        f = self.fleet
        pids = [n.proc.pid for n in self.cluster.nodes]
        cpu0 = [cpu_seconds(p) for p in pids]
        me0, wall0 = self_cpu_seconds(), time.monotonic()
        f.latencies.clear()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - wall0
        for n, p, c0 in zip(self.cluster.nodes, pids, cpu0, strict=True):
            self.out[f"{n.name}_cores"] = (cpu_seconds(p) - c0) / wall
            self.out[f"{n.name}_rss_mb"] = _rss_mb(p)
        self.out["fleet_cores"] = (self_cpu_seconds() - me0) / wall
        self.out["heartbeats_per_s"] = len(f.latencies) / wall
        self.out["heartbeat_p50_ms"] = _ms(f.latencies, 50)
        self.out["heartbeat_p99_ms"] = _ms(f.latencies, 99)
        self.out["heartbeat_failures"] = f.failures
        self.out["heartbeats_skipped"] = f.skipped  # a node whose last beat was still out

    async def _catalog_services(self) -> None:
        leader = self.cluster.leader()
        follower = next(n for n in self.cluster.nodes if n is not leader)
        for name, node in (("follower", follower), ("leader", leader)):
            times = []
            for _ in range(100):
                t = time.monotonic()
                status, _ = await asyncio.to_thread(
                    request, node.http_port, "GET", "/v1/catalog/services"
                )
                times.append(time.monotonic() - t)
                if status != 200:
                    raise BenchError(f"/v1/catalog/services -> {status}")
            self.out[f"catalog_services_{name}_p50_ms"] = _ms(times, 50)
            self.out[f"catalog_services_{name}_p99_ms"] = _ms(times, 99)

    async def _watchers(self) -> None:
        w = min(self.args.watchers, self.fleet.names)
        pool = WatcherPool(self.servers, self.key, w, self.args.watcher_procs)
        await pool.start()
        try:
            await self._until(lambda: len(pool.marks) >= w, 60, "every watcher's first read")
            await asyncio.sleep(1.0)  # every watcher parked on its blocking read
            await self._burst(pool, w)
        finally:
            await pool.close()

    async def _burst(self, pool: WatcherPool, w: int) -> None:
        f = self.fleet
        # the burst: `burst` changes, each a new port on an instance of a watched service
        rounds = max(1, self.args.burst // w)
        ops: list[Any] = [
            f.register_op(k + (r % 10) * f.names if k + (r % 10) * f.names < f.m else k, 40000 + r)
            for r in range(rounds)
            for k in range(w)
        ]
        last_port = 40000 + rounds - 1
        t0 = time.monotonic()
        burst = [Batch(Ops=ops[b : b + BATCH]) for b in range(0, len(ops), BATCH)]
        await _bounded([functools.partial(f.write, b) for b in burst], 8)
        acked = time.monotonic()
        await self._until(
            lambda: all(pool.seen(k) >= last_port for k in range(w)), 180, "the burst"
        )
        self.out["burst_changes"] = len(ops)
        self.out["burst_watchers"] = w
        self.out["burst_all_seen_s"] = max(pool.marks[k][1] for k in range(w)) - t0
        self.out["burst_written_s"] = acked - t0
        # one change at a time
        from_ack, from_send = [], []
        for n in range(200):
            k = random.randrange(w)
            pool.woke[k].clear()
            port = 50000 + n
            t = time.monotonic()
            await f.write(f.register_op(k, port))
            t_ack = time.monotonic()
            await asyncio.wait_for(pool.woke[k].wait(), 10)
            seen = pool.marks[k][1]
            from_ack.append(max(0.0, seen - t_ack))
            from_send.append(seen - t)
        self.out["one_change_from_ack_p50_ms"] = _ms(from_ack, 50)
        self.out["one_change_from_ack_p99_ms"] = _ms(from_ack, 99)
        self.out["one_change_from_send_p99_ms"] = _ms(from_send, 99)

    async def _node_death(self) -> None:
        f = self.fleet
        victim = f.n - 1
        service = f.service_of(victim)  # instance `victim` is on node `victim`
        addr = address(victim)
        f.dead.add(victim)
        await asyncio.sleep(0.05)
        t0 = f.last_beat.get(victim, time.monotonic())
        gone_passing = gone_dns = 0.0
        timeout = self.args.failure_timeout
        deadline = time.monotonic() + timeout + 30
        while (not gone_passing or not gone_dns) and time.monotonic() < deadline:
            now = time.monotonic()
            # a busy server's refusal: asked again on the next round
            with contextlib.suppress(RPCError, OSError, dns.exception.DNSException):
                gone_passing, gone_dns = await self._death_seen(
                    service, victim, addr, now - t0, gone_passing, gone_dns
                )
            await asyncio.sleep(0.05)
        self.out["death_to_not_passing_s"] = gone_passing or float("nan")
        self.out["death_to_dns_gone_s"] = gone_dns or float("nan")
        self.out["failure_timeout_s"] = timeout
        self.out["beat_interval_s"] = f.interval

    async def _death_seen(
        self, service: str, victim: int, addr: str, elapsed: float, passing: float, dns_: float
    ) -> tuple[float, float]:
        """(seconds until out of ?passing, until out of DNS), 0 for not yet."""
        f, leader = self.fleet, self.servers[0]
        if not passing:
            rows = _decode((await f.read(q.ServiceNodes(Service=service), leader)).Value)
            mine = [r for r in rows if r["Node"]["Node"] == f.node(victim)]
            if mine and all(any(c["Status"] == "critical" for c in r["Checks"]) for r in mine):
                passing = elapsed
        if not dns_ and self.args.dns_port > 0:
            query = dns.message.make_query(f"{service}.service.consul", dns.rdatatype.A)
            resp = await dns.asyncquery.tcp(query, LOOPBACK, port=self.args.dns_port, timeout=5)
            if addr not in {r.address for rr in resp.answer for r in rr}:
                dns_ = elapsed
        return passing, dns_

    async def _compaction(self) -> None:
        """8 sequential writers until every server wrote a snapshot; a write is "during
        compaction" when it overlaps [change - 1.5 s, change + 0.5 s] of any snapshot file
        change (seen every 0.1 s; the old in-line compaction took up to ~1 s here)."""
        f = self.fleet
        snaps = [self.args.procs_dir / n.name / "raft" / "snapshot.bin" for n in self.cluster.nodes]
        seen = [_mtime(p) for p in snaps]
        first = list(seen)
        changes: list[float] = []
        writes: list[tuple[float, float]] = []  # (sent, latency)
        done = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not done.is_set():
                t = time.monotonic()
                await f.write(KVOp(Verb="set", Key=f"stall/{w}/{i % 100}", Value=b"x" * 64))
                writes.append((t, time.monotonic() - t))
                i += 1

        writers = [asyncio.create_task(writer(w)) for w in range(8)]
        t0 = time.monotonic()
        finish = t0 + self.args.compaction_wait
        while time.monotonic() < finish:
            now_seen = [_mtime(p) for p in snaps]
            changes += [time.monotonic() for a, b in zip(now_seen, seen, strict=True) if a != b]
            seen = now_seen
            if all(a != b for a, b in zip(seen, first, strict=True)):
                finish = min(finish, time.monotonic() + 2.0)  # the last one's journal cut
            await asyncio.sleep(0.1)
        done.set()
        await asyncio.gather(*writers)
        inside: list[float] = []
        outside: list[float] = []
        for t, lat in writes:
            near = any(c - 1.5 <= t + lat and t <= c + 0.5 for c in changes)
            (inside if near else outside).append(lat)
        self.out["compactions_seen"] = len(changes)
        self.out["writes_total"] = len(writes)
        self.out["write_p50_ms"] = _ms([lat for _, lat in writes], 50)
        self.out["write_in_compaction_p99_ms"] = _ms(inside, 99)
        self.out["write_in_compaction_max_ms"] = max(inside, default=0.0) * 1000
        self.out["write_outside_p99_ms"] = _ms(outside, 99)
        self.out["write_outside_max_ms"] = max(outside, default=0.0) * 1000
        self.out["snapshot_bytes"] = max((_size(p) for p in snaps), default=0)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _decode(raw: Any) -> Any:
    return msgspec.msgpack.decode(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument(
        "--watcher-procs",
        type=int,
        default=4,
        help="processes the watchers run in (agents are on hosts of their own)",
    )
    ap.add_argument("--burst", type=int, default=10000)
    ap.add_argument(
        "--beat-interval",
        type=float,
        default=1.0,
        help="seconds between a node's beats (Consul's rate: 1); the failure timeout is 5x it."
        " Above 1 it lets one process simulate fleets larger than it can beat for at 1/s",
    )
    ap.add_argument("--compaction-wait", type=float, default=180.0)
    ap.add_argument("--keep", action="store_true", help="keep logs and data dirs")
    args = ap.parse_args()
    print(machine_summary())
    print(f"load average at start: {' '.join(fmt(x) for x in loadavg())}")
    key = keygen()
    (args.dns_port,) = free_ports(1)
    with Procs("meshd-scale-", keep=args.keep) as procs:
        args.procs_dir = procs.dir
        args.failure_timeout = FAILURE_TIMEOUT * max(1.0, args.beat_interval)
        config = {"limits": {"node_failure_timeout": args.failure_timeout}}
        cluster = MeshdCluster(procs, 3, encrypt=key, config=config, dns_port=args.dns_port)
        cluster.start()
        bench = Bench(args, cluster, key)
        out = asyncio.run(bench.run())
        out["load_1min_end"] = loadavg()[0]
        # pysyncobj logs this when a follower drops entries it had and re-appends the leader's
        out["raft_truncation_logs"] = sum(
            n.proc.log_path.read_text(errors="replace").count("truncating already-applied")
            for n in cluster.nodes
        )
    print(f"\nscale: {args.nodes} nodes, {args.instances} instances, {args.watchers} watchers")
    for k, v in out.items():
        print(f"  {k:34s} {fmt(v) if isinstance(v, float) else v}")
    print(result_line("scale", {k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    if os.environ.get("MESHD_SCALE_SEED"):
        random.seed(int(os.environ["MESHD_SCALE_SEED"]))
    run_main(main)
