"""kill -9 servers of a 3-server cluster while they compact their Raft logs under writes: every
acknowledged write is on every server after the restarts, and the restarted server rejoins."""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time

import pytest
from cluster import UNREACHABLE, Cluster, wait

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


def test_servers_killed_while_compacting_under_writes_lose_nothing(network_factory):
    net = network_factory(3)
    extra = os.path.join(tempfile.mkdtemp(prefix="meshd-mh-compact-"), "compact.json")
    with open(extra, "w") as f:  # a snapshot every 35-52 entries: most kills land in one
        json.dump({"raft_snapshot_threshold": 35}, f)
    c = Cluster(net, n_servers=3, extra=[f"-config-file={extra}"])
    acked: set[str] = set()
    lock = threading.Lock()
    rng = random.Random()
    try:
        c.start(clients=False)
        for round_ in range(3):
            victim = c.servers[round_]  # each server once; the first is often the leader
            stop = threading.Event()

            def writer(w: int, round_: int = round_, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    key = f"compact/{round_}/{w}/{i}"
                    target = c.servers[(w + i) % 3]
                    try:
                        status, body, _ = target.put(f"/v1/kv/{key}", key.encode(), timeout=5)
                    except UNREACHABLE:
                        status, body = 0, None  # not acknowledged: it may or may not be there
                    if status == 200 and body is True:
                        with lock:
                            acked.add(key)
                    i += 1

            threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(1.0, 2.5))
            victim.kill()
            time.sleep(rng.uniform(0.3, 1.0))  # the survivors keep committing meanwhile
            victim.start()
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join()
            c.wait_leader(timeout=40)
        snapshots = [os.path.join(s.data_dir, "raft", "snapshot.bin") for s in c.servers]
        assert all(os.path.exists(p) for p in snapshots), "a server never compacted"
        want = sorted(acked)
        assert len(want) > 100

        def complete(server) -> bool:
            try:
                status, keys, _ = server.get("/v1/kv/compact/?keys&stale", timeout=10)
            except UNREACHABLE:
                return False
            return status == 200 and set(want) <= set(keys)

        for s in c.servers:
            wait(lambda s=s: complete(s), 40, f"{s.name} lacks acknowledged writes:\n{s.log()}")
        s0 = c.servers[0]
        for key in random.sample(want, 20):
            assert s0.get(f"/v1/kv/{key}?raw&stale")[1] == key.encode()
    finally:
        c.close()
