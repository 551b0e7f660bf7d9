"""Leader election with `meshd lock` over a real 3-server cluster: the holder's host dies.

Three contenders, one per client host, each run `meshd lock` in a loop through their own
agent. Every child appends `start HOST T` when it runs and `end HOST T` when it is told to stop;
all hosts share one clock (namespaces on one machine), so the file is a history of holders.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster import Cluster, Node, wait
from helpers import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)

PREFIX = "mh/leader"
SESSION_TTL = 15.0  # what `meshd lock` creates its sessions with
LOCK_DELAY = 15.0  # the default lock-delay of those sessions


def _contender(node: Node, history: Path) -> subprocess.Popen[bytes]:
    child = (
        f"trap 'echo end {node.name} $(date +%s.%N) >> {history}; exit 0' TERM; "
        f"echo start {node.name} $(date +%s.%N) >> {history}; "
        "while :; do sleep 0.1; done"
    )
    meshd = f"{sys.executable} -m meshd lock -http-addr={node.http} {PREFIX}"
    loop = f'while :; do {meshd} "$CHILD"; sleep 0.5; done'
    return node.host.popen(
        ["sh", "-c", loop],
        os.path.join(os.path.dirname(node.log_path), f"lock-{node.name}.log"),
        env={**os.environ, "PYTHONPATH": REPO, "CHILD": child},
    )


def _history(path: Path) -> list[tuple[str, str, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        word, who, t = line.split()
        out.append((word, who, float(t)))
    return out


def _holders(path: Path) -> list[tuple[str, float, float]]:
    """(host, start, end) per holding; end is infinity while it still holds."""
    spans: list[tuple[str, float, float]] = []
    open_: dict[str, float] = {}
    for word, who, t in _history(path):
        if word == "start":
            assert who not in open_, f"{who} started twice without an end"
            open_[who] = t
        else:
            spans.append((who, open_.pop(who), t))
    spans += [(who, t, float("inf")) for who, t in open_.items()]
    return sorted(spans, key=lambda s: s[1])


def test_holder_host_dies_new_holder_and_never_two(network_factory, tmp_path: Path) -> None:
    net = network_factory(6)
    cluster = Cluster(net, n_servers=3)
    history = tmp_path / "history"
    loops: list[subprocess.Popen[bytes]] = []
    try:
        cluster.start()
        loops = [_contender(c, history) for c in cluster.clients]
        first = wait(lambda: _holders(history), 60, "no first holder:\n" + cluster.logs())[0][0]
        time.sleep(2.0)  # the others are waiting on the lock by now
        holder = next(c for c in cluster.clients if c.name == first)
        _, entry, _ = cluster.servers[0].get(f"/v1/kv/{PREFIX}/.lock")
        _, session, _ = cluster.servers[0].get(f"/v1/session/info/{entry[0]['Session']}")
        assert session[0]["Node"] == first  # the servers' view agrees with the history
        lock_index = entry[0]["LockIndex"]

        killed_at = time.time()
        holder.kill()

        def new_holder() -> str:
            return next(
                (h for h, _, end in _holders(history) if h != first and end == float("inf")), ""
            )

        successor = wait(new_holder, SESSION_TTL + LOCK_DELAY, "no new holder:\n" + cluster.logs())
        took = next(s for h, s, _ in _holders(history) if h == successor) - killed_at
        print(f"new holder {successor} {took:.1f}s after the holder's agent was killed")

        status, entry, _ = cluster.servers[1].get(f"/v1/kv/{PREFIX}/.lock")
        assert status == 200 and entry[0]["LockIndex"] > lock_index
        _, session, _ = cluster.servers[1].get(f"/v1/session/info/{entry[0]['Session']}")
        assert session[0]["Node"] == successor
        # the old holder's child was stopped (its agent is gone, so its lock counts as lost)
        spans = _holders(history)
        assert any(h == first and end != float("inf") for h, _, end in spans)
        for (h1, _, end1), (h2, start2, _) in itertools.pairwise(spans):
            assert end1 <= start2, f"{h1} still held the lock when {h2} started: {spans}"
            print(f"{h1} -> {h2}: {start2 - end1:.1f}s between the old child's end and the new")
    finally:
        for p, c in zip(loops, cluster.clients, strict=False):
            c.host.kill(p)
        cluster.close()


def test_holder_keeps_the_lock_across_a_leader_failover(network_factory, tmp_path: Path) -> None:
    """TTL timers live on the leader: a new one must restart them, and renewals must reach it,
    so a live holder never loses its lock because the servers changed leader."""
    net = network_factory(5)
    cluster = Cluster(net, n_servers=3)
    history = tmp_path / "history"
    loops: list[subprocess.Popen[bytes]] = []
    try:
        cluster.start()
        loops = [_contender(c, history) for c in cluster.clients]
        holder = wait(lambda: _holders(history), 60, "no holder:\n" + cluster.logs())[0][0]
        _, entry, _ = cluster.clients[0].get(f"/v1/kv/{PREFIX}/.lock")
        sid = entry[0]["Session"]
        old_leader = cluster.leader_node()
        old_leader.kill()
        survivors = [s for s in cluster.servers if s is not old_leader]
        cluster.wait_leader(among=survivors)
        # a new leader gives every session a full lifetime (2x TTL) from taking office: past
        # that, the session is alive only if its holder's renewals reached the new leader
        time.sleep(2 * SESSION_TTL + 5)
        spans = _holders(history)
        assert spans == [(holder, spans[0][1], float("inf"))], spans
        status, info, _ = survivors[0].get(f"/v1/session/info/{sid}")
        assert status == 200 and [s["ID"] for s in info] == [sid]
        _, entry, _ = survivors[0].get(f"/v1/kv/{PREFIX}/.lock")
        assert entry[0]["Session"] == sid
    finally:
        for p, c in zip(loops, cluster.clients, strict=False):
            c.host.kill(p)
        cluster.close()
