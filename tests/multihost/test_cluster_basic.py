"""Scenario 1 and 6: a 3-server cluster with client agents on separate hosts."""

from __future__ import annotations

import os

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cluster import Cluster, Node, keygen, wait

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


@pytest.fixture
def cluster(network_factory):
    net = network_factory(6)
    c = Cluster(net, n_servers=3)
    try:
        c.start()
        yield c
    finally:
        c.close()


def dns_a(node: Node, name: str) -> set[str]:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, node.host.addr, port=8600, timeout=3)
    return {x.address for rr in r.answer if rr.rdtype == dns.rdatatype.A for x in rr}


def test_register_on_a_found_on_c(cluster):
    a, _, c = cluster.clients
    status, _, _ = a.put(
        "/v1/agent/service/register",
        {"Name": "web", "ID": "web-a", "Port": 8080, "Check": {"TTL": "5m", "Status": "passing"}},
    )
    assert status == 200
    wait(lambda: c.get("/v1/health/service/web?passing")[1], 10, "web not visible on c")
    rows = c.get("/v1/health/service/web?passing")[1]
    assert rows[0]["Node"]["Node"] == a.name and rows[0]["Node"]["Address"] == a.host.addr
    wait(lambda: dns_a(c, "web.service.consul") == {a.host.addr}, 10, "DNS on c")
    members = c.get("/v1/agent/members")[1]
    assert {m["Name"] for m in members} >= {"s1", "s2", "s3", "c1", "c2", "c3"}
    assert all(m["Status"] == 1 for m in members)
    peers = c.get("/v1/status/peers")[1]
    assert len(peers) == 3
    conf = cluster.servers[0].get("/v1/operator/raft/configuration")[1]
    assert sum(s["Leader"] for s in conf["Servers"]) == 1


def test_writes_on_follower_are_forwarded_and_reads_stale(cluster):
    leader = cluster.leader_node()
    follower = next(s for s in cluster.servers if s is not leader)
    assert follower.put("/v1/kv/fwd", b"v")[1] is True
    assert leader.get("/v1/kv/fwd?raw")[1] == b"v"
    status, _body, headers = follower.get("/v1/kv/fwd?stale")
    assert status == 200 and "X-Consul-LastContact" in headers
    status, _body, _ = follower.get("/v1/kv/fwd?consistent")
    assert status == 200


def test_server_without_key_is_refused(network_factory):
    net = network_factory(4)
    c = Cluster(net, n_servers=3)
    try:
        c.start(clients=False)
        leader_before = c.wait_leader()
        # a would-be server with the wrong key on the 4th host
        rogue_key = keygen()
        rogue = Node(
            net.hosts[3],
            "rogue",
            [
                "-server",
                "-bootstrap-expect=3",
                f"-retry-join={net.hosts[0].addr}",
                f"-data-dir={c.tmp}/rogue",
                f"-encrypt={rogue_key}",
            ],
            f"{c.tmp}/rogue",
            f"{c.tmp}/rogue.log",
        ).start()
        # and one with no key at all on a non-loopback address refuses to start
        nokey = Node(
            net.hosts[3],
            "nokey",
            [
                "-server",
                "-bootstrap-expect=3",
                f"-retry-join={net.hosts[0].addr}",
                f"-data-dir={c.tmp}/nokey",
                "-http-port=8510",
                "-dns-port=8610",
                "-server-port=8310",
            ],
            f"{c.tmp}/nokey",
            f"{c.tmp}/nokey.log",
        ).start()
        assert nokey.proc.wait(20) != 0
        assert "cluster key" in nokey.log()
        import time

        time.sleep(4)
        assert c.wait_leader() == leader_before
        assert len(c.servers[0].get("/v1/status/peers")[1]) == 3
        assert c.servers[0].put("/v1/kv/still", b"ok")[1] is True
        assert rogue.leader() == ""
        rogue.kill()
    finally:
        c.close()


def test_rpc_requires_tls_and_client_cert(cluster):
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    server = cluster.servers[0].host.addr
    # plaintext HTTP: the TLS listener closes the connection without any HTTP answer
    with pytest.raises(http.client.RemoteDisconnected):
        urllib.request.urlopen(f"http://{server}:8300/rpc/info", data=b"", timeout=3)
    ctx = ssl.create_default_context(cafile=cluster.ca.ca_file)
    ctx.check_hostname = False
    # TLS without a client certificate: TLS 1.3 rejects it after the client's side of the
    # handshake, so the client reads either the server's alert or just the close
    with pytest.raises((http.client.RemoteDisconnected, ssl.SSLError)):
        urllib.request.urlopen(f"https://{server}:8300/rpc/info", data=b"", timeout=3, context=ctx)
    # with a client certificate but without the cluster key: refused by the HMAC check
    cert, key = cluster.ca.issue("probe", ["probe.client.dc1.consul"], [])
    ctx.load_cert_chain(cert, key)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"https://{server}:8300/rpc/info", data=b"", timeout=3, context=ctx)
    assert e.value.code == 403
