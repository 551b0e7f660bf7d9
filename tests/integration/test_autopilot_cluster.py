"""Leadership transfer and autopilot's dead-server cleanup on three real server processes
(loopback, each with its own RPC and Raft ports)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, server_cluster, start_all, wait_for


@pytest.fixture
def cluster() -> Iterator[list[MeshdProcess]]:
    with tempfile.TemporaryDirectory() as tmp:
        # servers that expect peers refuse to start without a cluster key
        procs = server_cluster(tmp, config={"encrypt": base64.b64encode(os.urandom(32)).decode()})
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


def _poll_leaders(procs: list[MeshdProcess], stop: threading.Event) -> list[tuple[int, str]]:
    """Every server's /v1/status/leader, asked in a tight loop until `stop` is set."""
    answers: list[tuple[int, str]] = []

    def poll(i: int, p: MeshdProcess) -> None:
        while not stop.is_set():
            r = p.get("/v1/status/leader", timeout=5)
            answers.append((i, r.json() if r.status == 200 else f"HTTP {r.status}"))
            stop.wait(0.002)

    threads = [threading.Thread(target=poll, args=(i, p)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join()
    return answers


def test_every_server_names_a_leader_throughout_transfers(cluster):
    """During a hand-over no server is leader for a round trip; /v1/status/leader still names
    one at every poll (the new one, or the one handing over), as a rolling restart needs."""
    everyone = sorted(_rpc(p) for p in cluster)
    wait_for(lambda: _peers(cluster[0]) == everyone, 30)
    stop = threading.Event()
    result: list[list[tuple[int, str]]] = []
    poller = threading.Thread(target=lambda: result.append(_poll_leaders(cluster, stop)))
    poller.start()
    try:
        for _ in range(4):
            leader = cluster[0].get("/v1/status/leader").json()
            r = next(p for p in cluster if _rpc(p) == leader).put(
                "/v1/operator/raft/transfer-leader"
            )
            assert r.status == 200 and r.json() == {"Success": True}, r.body

            def moved(old: str = leader) -> bool:
                named = {p.get("/v1/status/leader").json() for p in cluster}
                return len(named) == 1 and old not in named

            assert wait_for(moved, 15)
            time.sleep(0.3)
    finally:
        stop.set()
        poller.join()
    answers = result[0]
    assert len(answers) > 100
    assert [a for a in answers if a[1] not in everyone] == []


def _raft_addr(p: MeshdProcess) -> str:
    with open(p.args[p.args.index("-config-file") + 1]) as f:
        return f"127.0.0.1:{json.load(f)['ports']['raft']}"


def _term(p: MeshdProcess) -> str:
    return p.get("/v1/agent/self").json()["Stats"]["raft"]["term"]


def test_restarted_followers_do_not_depose_the_leader(cluster):
    """Raft peers connect from the larger address to the smaller one: a restarted follower
    below the leader waits for the leader's reconnection, and must not call an election
    meanwhile (a rolling restart would change leaders at every such restart)."""
    everyone = sorted(_rpc(p) for p in cluster)
    wait_for(lambda: _peers(cluster[0]) == everyone, 30)
    top = max(cluster, key=_raft_addr)
    leader = cluster[0].get("/v1/status/leader").json()
    if leader != _rpc(top):
        old = next(p for p in cluster if _rpc(p) == leader)
        assert old.put(f"/v1/operator/raft/transfer-leader?id={_rpc(top)}").status == 200
        wait_for(lambda: all(p.get("/v1/status/leader").json() == _rpc(top) for p in cluster), 15)
    term = _term(top)
    followers = [p for p in cluster if p is not top]
    for follower in followers * 2:
        follower.stop()
        follower.start(timeout=60)
        wait_for(lambda f=follower: _peers(f) == everyone and f.get("/v1/status/leader").json(), 30)
        time.sleep(1.5)  # past the restarted server's election timeouts
        assert [p.get("/v1/status/leader").json() for p in cluster] == [_rpc(top)] * 3
        assert _term(top) == term


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
