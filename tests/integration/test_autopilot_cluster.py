"""Leadership transfer and autopilot's dead-server cleanup on three real server processes
(loopback, each with its own RPC and Raft ports)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, server_cluster, start_all, wait_for


@pytest.fixture
def cluster() -> Iterator[list[MeshdProcess]]:
    with tempfile.TemporaryDirectory() as tmp:
        procs = server_cluster(tmp)
        try:
            start_all(procs)
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
