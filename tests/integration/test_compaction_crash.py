"""kill -9 a server while it compacts its Raft log under writes: every acknowledged write is
there after the restart. A lone server is the hard case: no peer holds another copy."""

from __future__ import annotations

import random
import threading
import time
import urllib.error

from helpers import server_agent, wait_for


def _metric(proc, name: str) -> float:
    text = proc.get("/v1/agent/metrics?format=prometheus").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_kill_during_compaction_under_writes_loses_no_acknowledged_write(tmp_path) -> None:
    # a snapshot every 40-60 entries (each server draws 1-1.5x the threshold): with four
    # writers one is being written most of the time
    server = server_agent(str(tmp_path), config={"raft_snapshot_threshold": 40})
    server.start()
    acked: set[str] = set()
    rng = random.Random()
    try:
        for round_ in range(4):
            stop = threading.Event()

            def writer(w: int, round_: int = round_, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    key = f"crash/{round_}/{w}/{i}"
                    try:
                        r = server.put(f"/v1/kv/{key}", key.encode(), timeout=5)
                    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                        return  # the server died under us: this write was never acknowledged
                    if r.status == 200 and r.json() is True:
                        acked.add(key)
                    i += 1

            threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.8, 2.0))
            snapshots = _metric(server, "meshd_snapshot_bytes")
            assert server.proc is not None
            server.proc.kill()  # SIGKILL: no shutdown path runs
            server.proc.wait()
            stop.set()
            for t in threads:
                t.join()
            assert snapshots > 0, "no snapshot was written before the kill"
            server.start()
            missing = [k for k in sorted(acked) if server.get(f"/v1/kv/{k}?raw").body != k.encode()]
            assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost"
        # and the server keeps compacting after its restarts
        for i in range(150):
            assert server.put(f"/v1/kv/after/{i}", b"x").json() is True
        wait_for(lambda: _metric(server, "meshd_snapshot_bytes") > 0, timeout=10)
    finally:
        server.stop()
