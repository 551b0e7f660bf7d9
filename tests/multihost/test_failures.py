"""Scenarios 2-5: leader loss under load, partitions, full restarts, a client agent dying."""

from __future__ import annotations

import os
import random
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from cluster import UNREACHABLE, Cluster, Node, node_request, wait
from helpers import run_meshd
from linearizability import INF, Op, check

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


@pytest.fixture
def servers(network_factory):
    net = network_factory(4)
    c = Cluster(net, n_servers=3)
    try:
        c.start(clients=False)
        yield c
    finally:
        c.close()


def _http(
    node: Node, method: str, path: str, body: bytes | None = None, timeout: float = 2.0
) -> tuple[int, bytes]:
    r = node_request(node.http + path, method, body, timeout)
    return r.status, r.body


class Load:
    """Clients writing and reading one KV register, recording every operation's window."""

    def __init__(self, nodes: list[Node], clients: int = 3) -> None:
        self.nodes = nodes
        self.history: list[Op] = []
        self.acked: list[str] = []  # keys of other acknowledged writes (durability check)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, cid: int) -> None:
        n = 0
        rng = random.Random(cid)
        while not self.stop.is_set() and n < 2000:
            n += 1
            node = rng.choice([x for x in self.nodes if x.proc and x.proc.poll() is None])
            start = time.monotonic()
            if rng.random() < 0.5:
                value = f"{cid}-{n}"
                try:
                    status, body = _http(node, "PUT", "/v1/kv/lin", value.encode())
                    ok = status == 200 and body.strip() == b"true"
                except UNREACHABLE:
                    ok = False
                end = time.monotonic()
                with self.lock:
                    self.history.append(Op("w", value, start, end if ok else INF, ok))
                try:
                    status, body = _http(node, "PUT", f"/v1/kv/acked/{cid}-{n}", b"1")
                    if status == 200:
                        with self.lock:
                            self.acked.append(f"acked/{cid}-{n}")
                except UNREACHABLE:
                    pass
            else:
                try:
                    status, body = _http(node, "GET", "/v1/kv/lin?raw&consistent")
                except UNREACHABLE:
                    continue
                end = time.monotonic()
                if status == 200:
                    value = body.decode()
                elif status == 404:
                    value = None
                else:
                    continue
                with self.lock:
                    self.history.append(Op("r", value, start, end, True))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def assert_acked_present(cluster: Cluster, load: Load) -> None:
    node = cluster.leader_node()
    status, body = _http(node, "GET", "/v1/kv/acked/?keys", timeout=10)
    import json

    present = set(json.loads(body)) if status == 200 else set()
    missing = [k for k in load.acked if k not in present]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


def test_leader_killed_under_load(servers):
    with Load(servers.servers) as load:
        time.sleep(2)
        leader = servers.leader_node()
        survivors = [s for s in servers.servers if s is not leader]
        leader.kill()
        # the survivors take writes again (how fast is benchmarks/failover.py's figure)
        wait(
            lambda: _http(survivors[0], "PUT", "/v1/kv/probe", b"x")[0] == 200,
            30,
            "no write accepted after leader loss",
            interval=0.05,
        )
        time.sleep(2)
    assert servers.wait_leader(survivors) != ""
    writes = sum(1 for o in load.history if o.kind == "w" and o.ok)
    assert writes > 20, f"only {writes} writes succeeded"
    assert check(load.history), "KV register history is not linearizable"
    assert_acked_present(servers, load)


def test_partitioned_leader_cannot_commit(servers):
    net = servers.net
    leader = servers.leader_node()
    others = [s for s in servers.servers if s is not leader]
    assert leader.put("/v1/kv/part", b"before")[1] is True
    net.partition([leader.host], [o.host for o in others])
    try:
        status, _ = _http(leader, "PUT", "/v1/kv/part", b"minority", timeout=12)
        assert status != 200, "the minority side acknowledged a write"
        new_leader = servers.wait_leader(others, timeout=15)
        assert new_leader.rsplit(":", 1)[0] != leader.host.addr
        assert others[0].put("/v1/kv/part", b"majority")[1] is True
    finally:
        net.heal()
    servers.wait_leader(timeout=20)

    def converged() -> bool:
        values = {_http(s, "GET", "/v1/kv/part?raw&stale")[1] for s in servers.servers}
        return values == {b"majority"}

    wait(converged, 20, "servers did not converge on one history after healing")


def test_full_cluster_restart_keeps_state(network_factory):
    net = network_factory(4)
    c = Cluster(net, n_servers=3)
    try:
        c.start()
        client = c.clients[0]
        assert (
            client.put(
                "/v1/agent/service/register",
                {"Name": "keep", "Port": 1, "Check": {"TTL": "1h", "Status": "passing"}},
            )[0]
            == 200
        )
        for i in range(50):
            assert c.servers[i % 3].put(f"/v1/kv/keep/{i}", str(i).encode())[1] is True
        for s in c.servers:
            s.kill()
        time.sleep(1)
        for s in c.servers:
            s.start()
        c.wait_leader(timeout=40)
        s0 = c.servers[0]
        keys = wait(lambda: s0.get("/v1/kv/keep/?keys")[1], 20, "KV lost")
        assert len(keys) == 50
        assert _http(s0, "GET", "/v1/kv/keep/42?raw") == (200, b"42")
        assert [r["ServiceID"] for r in s0.get("/v1/catalog/service/keep")[1]] == ["keep"]
    finally:
        c.close()


def test_client_agent_dies_and_returns(network_factory):
    net = network_factory(5)
    c = Cluster(net, n_servers=3)
    try:
        c.start()
        a, b = c.clients
        assert (
            a.put(
                "/v1/agent/service/register",
                {"Name": "flaky", "Port": 80, "Check": {"TTL": "1h", "Status": "passing"}},
            )[0]
            == 200
        )
        assert (
            a.put(
                "/v1/agent/service/register",
                {
                    "Name": "ephemeral",
                    "Port": 81,
                    "Check": {
                        "TTL": "1h",
                        "Status": "passing",
                        "DeregisterCriticalServiceAfter": "2s",
                    },
                },
            )[0]
            == 200
        )
        wait(lambda: b.get("/v1/health/service/flaky?passing")[1], 10, "flaky not visible")

        def dns_rcode() -> int:
            q = dns.message.make_query("flaky.service.consul", "A")
            return dns.query.udp(q, b.host.addr, port=8600, timeout=3).rcode()

        assert dns_rcode() == dns.rcode.NOERROR
        a.kill()
        wait(
            lambda: b.get("/v1/health/service/flaky?passing")[1] == [],
            30,
            "dead agent's service still passing",
        )
        wait(lambda: dns_rcode() == dns.rcode.NXDOMAIN, 10, "dead agent's service still in DNS")
        members = {m["Name"]: m["Status"] for m in b.get("/v1/agent/members")[1]}
        assert members[a.name] == 4  # failed
        # no zombie: the leader reaps the dead agent's service once critical for 2s
        wait(lambda: b.get("/v1/catalog/service/ephemeral")[1] == [], 15, "zombie service")
        assert b.get("/v1/catalog/service/flaky")[1]  # no deregister-after: stays, critical
        a.start()
        wait(lambda: b.get("/v1/health/service/flaky?passing")[1], 20, "service did not return")
        wait(lambda: dns_rcode() == dns.rcode.NOERROR, 10, "service not back in DNS")
        members = {m["Name"]: m["Status"] for m in b.get("/v1/agent/members")[1]}
        assert members[a.name] == 1
        # a graceful leave: the node is "left" and gone from the catalog, the process exits
        r = run_meshd("leave", http_addr=a.http)
        assert r.returncode == 0, r.stderr
        assert a.proc.wait(15) is not None
        wait(
            lambda: (
                {m["Name"]: m["Status"] for m in b.get("/v1/agent/members")[1]}.get(a.name) == 3
            ),
            10,
            "not left",
        )
        nodes = {n["Node"] for n in b.get("/v1/catalog/nodes")[1]}
        assert a.name not in nodes
        assert b.get("/v1/catalog/service/flaky")[1] == []
    finally:
        c.close()
