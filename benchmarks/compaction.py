"""Raft log compaction in one process: what a write waits while the server writes a snapshot.

    python benchmarks/compaction.py                      # 200,000 instances on 10,000 nodes
    python benchmarks/compaction.py --instances 60000

One real on-disk Raft node (`RaftNode`, a lone server) holding a catalog of M instances (each
with a check), filled through Raft in batches of 500. One writer then commits sequentially for
a second (baseline), a snapshot is forced, and it goes on until the snapshot is written and the
journal cut: per-write latency in both phases, the Raft thread's share (the snapshot view), the
background build time, the journal cut, the file size, and a restart that must load the same
state. No network and no fleet, so the figure isolates compaction from the rest of
`scale.py`. Not a test; figures drift on a shared machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cluster import loadavg
from _common import fmt, machine_summary, percentile, result_line, run_main

import meshd.server.raft as raft_module
from meshd.server.raft import RaftNode, RaftSettings, reserve_port
from meshd.server.store import Store
from meshd.structs import Batch, HealthCheck, NodeService, Register


async def _ready(node: RaftNode) -> None:
    while not node.ready():
        await asyncio.sleep(0.05)


def _op(i: int, nodes: int) -> Register:
    name = f"node-{i % nodes}"
    svc = NodeService(ID=f"s{i}", Service=f"svc-{i % 2000}", Tags=["a", "b"], Port=i % 60000)
    check = HealthCheck(Node=name, CheckID=f"c{i}", Name="c", Status="passing", ServiceID=f"s{i}")
    return Register(Node=name, Address="10.0.0.1", Service=svc, Check=check)


async def _writes(node: RaftNode, until: Any) -> list[float]:
    out: list[float] = []
    i = 0
    while not until():
        t = time.monotonic()
        svc = NodeService(ID=f"w{i % 50}", Service="writer", Port=i % 60000)
        await node.apply(Register(Node="writer", Address="10.0.0.2", Service=svc))
        out.append(time.monotonic() - t)
        i += 1
    return out


async def run(instances: int, nodes: int, data_dir: str) -> dict[str, float]:
    held = reserve_port("127.0.0.1")
    addr = f"127.0.0.1:{held.getsockname()[1]}"
    store = Store()
    node = RaftNode(store, RaftSettings(self_addr=addr, peers=[], data_dir=data_dir))
    held.close()
    await _ready(node)
    t0 = time.monotonic()
    for b in range(0, instances, 500):
        await node.apply(Batch(Ops=[_op(i, nodes) for i in range(b, min(b + 500, instances))]))
    out: dict[str, float] = {"fill_s": time.monotonic() - t0}
    cuts: list[float] = []
    cut = raft_module.rewrite_journal

    def timed_cut(*args: Any) -> Any:
        t = time.monotonic()
        journal = cut(*args)
        cuts.append(time.monotonic() - t)
        return journal

    raft_module.rewrite_journal = timed_cut
    end = time.monotonic() + 1.0
    base = await _writes(node, lambda: time.monotonic() > end)
    writer = node.snapshots
    assert writer is not None
    node._sync.forceLogCompaction()
    during = await _writes(node, lambda: bool(cuts))
    raft_module.rewrite_journal = cut
    for name, values in (("baseline", base), ("during", during)):
        values.sort()
        out[f"{name}_writes"] = len(values)
        out[f"{name}_p50_ms"] = percentile(values, 50) * 1000
        out[f"{name}_p99_ms"] = percentile(values, 99) * 1000
        out[f"{name}_max_ms"] = values[-1] * 1000
    out["raft_thread_view_ms"] = writer.view_seconds * 1000
    out["journal_cut_ms"] = cuts[0] * 1000
    out["build_s"] = writer.build_seconds
    out["snapshot_bytes"] = writer.bytes
    expected = store.dump()
    node.close()
    await asyncio.sleep(0.5)
    restarted = Store()
    t0 = time.monotonic()
    again = RaftNode(restarted, RaftSettings(self_addr=addr, peers=[], data_dir=data_dir))
    while restarted.index < store.index:
        await asyncio.sleep(0.05)
    out["restart_load_s"] = time.monotonic() - t0
    out["restart_same_state"] = float(restarted.dump() == expected)
    again.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--instances", type=int, default=200000)
    ap.add_argument("--nodes", type=int, default=10000)
    args = ap.parse_args()
    print(machine_summary())
    print(f"load average at start: {' '.join(fmt(x) for x in loadavg())}")
    data_dir = tempfile.mkdtemp(prefix="meshd-compaction-")
    try:
        out = asyncio.run(run(args.instances, args.nodes, data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    out["load_1min_end"] = loadavg()[0]
    print(f"\ncompaction: {args.instances} instances on {args.nodes} nodes, one on-disk Raft node")
    for k, v in out.items():
        print(f"  {k:24s} {fmt(v)}")
    print(result_line("compaction", {k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    run_main(main)
