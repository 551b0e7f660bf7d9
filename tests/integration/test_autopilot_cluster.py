"""Leadership transfer and autopilot's dead-server cleanup on three real server processes
(loopback, each with its own RPC and Raft ports)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, dev_agent, free_ports, wait_for


def _servers(tmp: str, n: int = 3) -> list[MeshdProcess]:
    ports = [free_ports(2) for _ in range(n)]
    procs = []
    for i, (rpc, raft) in enumerate(ports):
        conf = os.path.join(tmp, f"s{i}.json")
        with open(conf, "w") as f:
            json.dump(
                {
                    "server": True,
                    "bootstrap_expect": n,
                    "node_name": f"ap{i}",
                    "data_dir": os.path.join(tmp, f"s{i}"),
                    "ports": {"server": rpc, "raft": raft},
                    "retry_join": [f"127.0.0.1:{p}" for j, (p, _) in enumerate(ports) if j != i],
                    "limits": {"node_failure_timeout": 2},
                },
                f,
            )
        proc = dev_agent("-config-file", conf)
        proc.args.remove("-dev")
        proc.rpc_port = rpc  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


@pytest.fixture
def cluster() -> Iterator[list[MeshdProcess]]:
    with tempfile.TemporaryDirectory() as tmp:
        procs = _servers(tmp)
        try:
            threads = [threading.Thread(target=p.start, kwargs={"timeout": 60}) for p in procs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            yield procs
        finally:
            for p in procs:
                p.stop()


def _peers(p: MeshdProcess) -> list[str]:
    return sorted(p.get("/v1/status/peers").json())


def _rpc(p: MeshdProcess) -> str:
    return f"127.0.0.1:{p.rpc_port}"  # type: ignore[attr-defined]


def test_transfer_leader_and_dead_server_cleanup(cluster):
    s0 = cluster[0]
    everyone = sorted(_rpc(p) for p in cluster)
    wait_for(lambda: _peers(s0) == everyone, 30)
    leader = s0.get("/v1/status/leader").json()
    target = next(a for a in everyone if a != leader)
    r = s0.request("POST", f"/v1/operator/raft/transfer-leader?id={target}")
    assert r.status == 200 and r.json() == {"Success": True}
    wait_for(lambda: all(p.get("/v1/status/leader").json() == target for p in cluster), 15)

    def all_alive() -> bool:
        health = s0.get("/v1/operator/autopilot/health").json()
        return [s["SerfStatus"] for s in health["Servers"]] == ["alive"] * 3

    wait_for(all_alive, 15)

    # kill a follower: autopilot removes it from Raft, the two left keep a quorum
    victim = next(p for p in cluster if _rpc(p) != target)
    survivor = next(p for p in cluster if p is not victim)
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait()
    wait_for(lambda: _rpc(victim) not in _peers(survivor), 30)
    assert survivor.put("/v1/kv/after-cleanup", b"ok").json() is True
    state = survivor.get("/v1/operator/autopilot/state").json()
    assert len(state["Servers"]) == 2
    # it comes back: the leader adds it to Raft again
    victim.start(timeout=60)
    wait_for(lambda: _peers(survivor) == everyone, 40)
    wait_for(lambda: victim.get("/v1/kv/after-cleanup?raw&stale").body == b"ok", 30)


def test_cleanup_off_keeps_the_dead_server(cluster):
    s0 = cluster[0]
    everyone = sorted(_rpc(p) for p in cluster)
    wait_for(lambda: _peers(s0) == everyone, 30)
    conf = s0.get("/v1/operator/autopilot/configuration").json()
    assert s0.put(
        "/v1/operator/autopilot/configuration", dict(conf, CleanupDeadServers=False)
    ).json()
    leader = s0.get("/v1/status/leader").json()
    victim = next(p for p in cluster if _rpc(p) != leader)
    survivor = next(p for p in cluster if p is not victim)
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait()
    wait_for(
        lambda: any(
            m["Status"] == 4
            for m in survivor.get("/v1/agent/members").json()
            if m["Addr"] == "127.0.0.1" and m["Port"] == victim.rpc_port  # type: ignore[attr-defined]
        ),
        20,
    )
    health = survivor.get("/v1/operator/autopilot/health")
    assert health.status == 429 and health.json()["Healthy"] is False
    # the leader acts every 0.5 s: over several rounds the dead server stays a peer
    for _ in range(6):
        assert _rpc(victim) in _peers(survivor)
        time.sleep(0.5)
