"""Liveness that scales out: agents attach to every server, a server's death does not fail its
agents, transitions are batched, and a new leader writes nothing about unchanged nodes."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from cluster import Cluster, Node, wait

from meshd.liveness import placement

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)
FAILURE_TIMEOUT = 3.0  # tests/multihost/cluster.py's node_failure_timeout


def _spread_names(servers: list[Node], per_server: int) -> list[str]:
    """Client names the placement puts on each server in turn, `per_server` each."""
    rpc = [f"{s.host.addr}:8300" for s in servers]
    names: list[str] = []
    for target in rpc * per_server:
        names.append(
            next(
                f"c{i}"
                for i in range(10_000)
                if f"c{i}" not in names and placement(f"c{i}", rpc)[0] == target
            )
        )
    return names


def _names_on(target: Any, server_hosts: list[Any], n: int) -> list[str]:
    """`n` client names the placement puts on the server of host `target` first."""
    rpc = [f"{h.addr}:8300" for h in server_hosts]
    mine = f"{target.addr}:8300"
    ours = (f"r{i}" for i in range(10_000) if placement(f"r{i}", rpc)[0] == mine)
    return [next(ours) for _ in range(n)]


def _cluster(net: Any, n_clients: int, names: list[str] | None = None) -> Cluster:
    """Three servers; clients named so that each server is some client's first choice (or as
    given)."""
    c = Cluster(net, n_servers=3)
    joins = [f"-retry-join={s.host.addr}" for s in c.servers]
    names = names or _spread_names(c.servers, (n_clients + 2) // 3)[:n_clients]
    hosts = net.hosts[3 : 3 + n_clients]
    c.clients = [c._node(h, name, list(joins)) for h, name in zip(hosts, names, strict=True)]
    return c.start()


def until(pred: Any, timeout: float, msg: str = "") -> Any:
    """`wait`, where an error answer (a Raft membership change under way: autopilot removes a
    server cut off for long, and adds it back) counts as "not yet"."""

    def soft() -> Any:
        try:
            return pred()
        except AssertionError:
            return None

    return wait(soft, timeout, msg)


def _members(node: Node) -> dict[str, dict[str, Any]]:
    status, body, _ = node.get("/v1/agent/members")
    assert status == 200, body
    return {m["Name"]: m for m in body}


def _serf(node: Node) -> dict[str, str]:
    status, body, _ = node.get("/v1/health/state/any")
    assert status == 200, body
    return {c["Node"]: c["Status"] for c in body if c["CheckID"] == "serfHealth"}


def _counter(node: Node, name: str) -> int:
    status, body, _ = node.get("/v1/agent/metrics")
    assert status == 200, body
    return next(int(c["Count"]) for c in body["Counters"] if c["Name"] == name)


class Watch:
    """Every serfHealth verdict the leader's catalog shows, sampled until stopped."""

    def __init__(self, cluster: Cluster, nodes: list[str]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.seen: dict[str, set[str]] = {n: set() for n in nodes}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            for s in self.cluster.servers:
                if s.proc is None or s.proc.poll() is not None:
                    continue
                try:
                    serf = _serf(s)
                except (ConnectionError, TimeoutError, AssertionError):
                    continue
                for n in self.nodes:
                    if n in serf:
                        self.seen[n].add(serf[n])
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _attached(node: Node) -> dict[str, str]:
    return {n: m["Tags"].get("liveness_server", "") for n, m in _members(node).items()}


def test_heartbeats_spread_then_a_server_dies_then_five_clients_die(network_factory):
    net = network_factory(9)
    c = _cluster(net, 6)
    try:
        names = {s.host.addr: s.name for s in c.servers}
        expected = {
            cl.name: names[placement(cl.name, [f"{a}:8300" for a in names])[0].split(":")[0]]
            for cl in c.clients
        }
        until(lambda: _attached(c.servers[0]).items() >= expected.items(), 30, c.logs())
        assert set(expected.values()) == {"s1", "s2", "s3"}  # every server owns agents
        assert all(v == "passing" for v in _serf(c.servers[0]).values())

        # a follower dies: its agents move to another server and never turn critical
        leader = c.leader_node()
        victim = next(s for s in c.servers if s is not leader)
        moved = [n for n, s in expected.items() if s == victim.name]
        with Watch(c, [cl.name for cl in c.clients]) as watch:
            victim.kill()
            alive = [s.name for s in c.servers if s is not victim]
            until(
                lambda: all(_attached(leader).get(n) in alive for n in moved),
                20,
                f"{moved} did not re-attach:\n{c.logs()}",
            )
            until(lambda: _serf(leader).get(victim.name) == "critical", 20, "dead server")
            time.sleep(FAILURE_TIMEOUT * 2)  # well past every timer the death could start
        assert all(watch.seen[n] == {"passing"} for n in watch.nodes), watch.seen

        # five clients die at once: each is failed within the timeout (plus the beat interval
        # and a batch window), and their verdicts share Raft entries
        time.sleep(1)
        batches = _counter(leader, "meshd.liveness.batches")
        batched = _counter(leader, "meshd.liveness.batch.nodes")
        dying = c.clients[:5]
        threads = [threading.Thread(target=cl.kill) for cl in dying]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        until(
            lambda: all(_serf(leader)[cl.name] == "critical" for cl in dying),
            FAILURE_TIMEOUT + 3,
            "dead clients not detected in time",
        )
        time.sleep(0.5)
        assert _serf(leader)[c.clients[5].name] == "passing"
        assert _counter(leader, "meshd.liveness.batch.nodes") - batched == 5
        assert _counter(leader, "meshd.liveness.batches") - batches < 5
    finally:
        c.close()


def test_a_new_leader_rewrites_nothing_and_the_old_leaders_agents_stay_alive(network_factory):
    net = network_factory(7)
    c = _cluster(net, 4)
    try:
        leader = c.leader_node()
        until(lambda: len(_serf(leader)) == 7, 30, c.logs())
        time.sleep(1)
        batches = _counter(leader, "meshd.liveness.batches")
        index = int(leader.get("/v1/catalog/nodes")[2]["X-Consul-Index"])
        status, body, _ = leader.request("POST", "/v1/operator/raft/transfer-leader")
        assert status == 200, body
        new = until(lambda: (n := c.leader_node()) is not leader and n, 20, "no new leader")
        time.sleep(FAILURE_TIMEOUT * 2)  # past the new leader's grace period
        assert all(v == "passing" for v in _serf(new).values())
        # no NodeStatusBatch at all; the index moved by less than one entry per node
        assert _counter(new, "meshd.liveness.batches") == batches
        after = int(new.get("/v1/catalog/nodes")[2]["X-Consul-Index"])
        assert after - index < 7, (index, after)

        # the leader dies: the agents it held move and none is failed
        owned = [n for n, s in _attached(new).items() if s == new.name and n.startswith("c")]
        survivors = [s for s in c.servers if s is not new]
        with Watch(c, [cl.name for cl in c.clients]) as watch:
            new.kill()
            third = until(lambda: (n := c.leader_node()) is not new and n, 20, "no new leader")
            assert third in survivors
            until(
                lambda: all(_attached(third).get(n) in {s.name for s in survivors} for n in owned),
                20,
                f"{owned} did not re-attach:\n{c.logs()}",
            )
            time.sleep(FAILURE_TIMEOUT * 2)
        assert all(watch.seen[n] == {"passing"} for n in watch.nodes), watch.seen
    finally:
        c.close()


def test_a_cut_off_server_loses_its_agents_without_failing_them(network_factory):
    """Unplugged, the server answers nothing (no reset): its agents time out and move; when it
    comes back, its stale word that they failed is refused."""
    net = network_factory(6)
    c = _cluster(net, 3)
    try:
        leader = c.leader_node()
        until(lambda: len(_serf(leader)) == 6, 30, c.logs())
        victim = next(s for s in c.servers if s is not leader)
        moved = [n for n, s in _attached(leader).items() if s == victim.name and n[0] == "c"]
        assert moved
        others = {s.name for s in c.servers if s is not victim}
        with Watch(c, [cl.name for cl in c.clients]) as watch:
            victim.host.link_down()
            try:
                until(
                    lambda: all(_attached(leader).get(n) in others for n in moved),
                    20,
                    f"{moved} did not re-attach:\n{c.logs()}",
                )
                time.sleep(FAILURE_TIMEOUT * 2)
            finally:
                victim.host.link_up()
            until(lambda: _serf(leader).get(victim.name) == "passing", 30, "server back")
            time.sleep(FAILURE_TIMEOUT * 2)  # its reports reach the leader again
        assert all(watch.seen[n] == {"passing"} for n in watch.nodes), watch.seen

        # a client attached to a follower leaves: once its leave returns, the leader lists it
        owners = _attached(leader)
        leaver = next(cl for cl in c.clients if owners[cl.name] != leader.name)
        assert leaver.put("/v1/agent/leave")[0] == 200
        assert _members(leader)[leaver.name]["Status"] == 3
    finally:
        c.close()


def test_a_server_dying_with_its_agents_fails_them_in_one_entry(network_factory):
    """A rack goes: a server and the five agents attached to it die together. The server is
    failed by the leader's own timer; its agents, silent everywhere, after their grace period,
    all at once: one Raft entry carrying the five."""
    net = network_factory(8)
    c = _cluster(net, 5, _names_on(net.hosts[2], net.hosts[:3], 5))
    rack = c.servers[2]
    try:
        leader = c.leader_node()
        if leader.name == rack.name:  # the rack's server must be a follower
            status, body, _ = leader.request("POST", "/v1/operator/raft/transfer-leader")
            assert status == 200, body
            leader = until(lambda: (n := c.leader_node()).name != rack.name and n, 20, "leader")
        until(lambda: len(_serf(leader)) == 8, 30, c.logs())
        until(lambda: set(_attached(leader).values()) >= {rack.name}, 20, c.logs())
        assert {_attached(leader)[cl.name] for cl in c.clients} == {rack.name}
        killers = [threading.Thread(target=n.kill) for n in [rack, *c.clients]]
        for t in killers:
            t.start()
        for t in killers:
            t.join()
        until(lambda: _serf(leader).get(rack.name) == "critical", 20, "dead server")
        time.sleep(0.5)
        batches = _counter(leader, "meshd.liveness.batches")
        batched = _counter(leader, "meshd.liveness.batch.nodes")
        assert all(_serf(leader)[cl.name] == "passing" for cl in c.clients)  # grace period
        until(
            lambda: all(_serf(leader)[cl.name] == "critical" for cl in c.clients),
            2 * FAILURE_TIMEOUT + 3,
            "agents silent everywhere were not failed",
        )
        assert _counter(leader, "meshd.liveness.batch.nodes") - batched == 5
        assert _counter(leader, "meshd.liveness.batches") - batches == 1
    finally:
        c.close()
