"""Coordinates, force-leave and join where a client agent matters: a real server process and
client agents joined to it over RPC on loopback."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import dns.message
import dns.query
import pytest
from helpers import MeshdProcess, client_agent, server_agent, wait_for

from meshd.coordinate import Coordinate


@pytest.fixture(scope="module")
def server() -> Iterator[MeshdProcess]:
    with tempfile.TemporaryDirectory() as tmp:
        s = server_agent(tmp, config={"limits": {"node_failure_timeout": 2}}).start()
        yield s
        s.stop()


def _status(server: MeshdProcess, node: str) -> int | None:
    members = server.get("/v1/agent/members").json()
    return next((m["Status"] for m in members if m["Name"] == node), None)


def test_client_coordinate_comes_from_heartbeats(server):
    client = client_agent(server, "coord-client").start()
    try:
        # the leader batches coordinates every 5 s; the client's has moved off the origin
        # once it has taken RTT samples (the server's own coordinate stays the reference)
        def moved():
            r = server.get("/v1/coordinate/node/coord-client")
            if r.status != 200:
                return None
            c = r.json()[0]["Coord"]
            return c if c["Error"] < 1.5 and any(v != 0 for v in c["Vec"]) else None

        coord = wait_for(moved, timeout=30, interval=0.5)
        assert len(coord["Vec"]) == 8
        me = client.get("/v1/agent/self").json()["Coord"]
        assert me["Error"] < 1.5
        # a loopback round trip is well under 50 ms: so is the estimate
        srv = server.get("/v1/coordinate/node/srv").json()[0]["Coord"]
        est = Coordinate.from_json(coord).distance(Coordinate.from_json(srv))
        assert 0 < est < 0.05
        # `_agent` on the client sorts from the client's own node: it comes first
        client.put("/v1/agent/service/register", {"Name": "near-both", "Port": 1})
        server.put("/v1/agent/service/register", {"Name": "near-both", "Port": 2})
        wait_for(lambda: len(client.get("/v1/catalog/service/near-both").json()) == 2)
        rows = client.get("/v1/catalog/service/near-both?near=_agent").json()
        assert rows[0]["Node"] == "coord-client"
        rows = server.get("/v1/catalog/service/near-both?near=_agent").json()
        assert rows[0]["Node"] == "srv"
    finally:
        client.stop()


def test_client_join_learns_servers_and_refuses_nothing_there(server):
    client = client_agent(server, "join-client").start()
    try:
        assert client.put(f"/v1/agent/join/127.0.0.1:{server.rpc_port}").status == 200
        r = client.put("/v1/agent/join/127.0.0.1:1")
        assert r.status == 500 and b"Failed to join" in r.body
        assert client.put("/v1/kv/join-ok", b"1").json() is True  # still connected
    finally:
        client.stop()


def test_force_leave_of_a_failed_client(server):
    kept = client_agent(server, "fl-keep").start()
    pruned = client_agent(server, "fl-prune").start()
    for c in (kept, pruned):
        assert c.proc is not None
        c.proc.kill()  # no graceful leave: the leader sees it fail
        c.proc.wait()
    wait_for(lambda: _status(server, "fl-keep") == 4 and _status(server, "fl-prune") == 4, 20)
    # through a client agent too: the request reaches the leader (the node is unknown there)
    asker = client_agent(server, "fl-asker").start()
    try:
        r = asker.put("/v1/agent/force-leave/no-such-node")
        assert r.status == 500 and b"No node found with name 'no-such-node'" in r.body
    finally:
        asker.stop()
    assert server.put("/v1/agent/force-leave/fl-keep").status == 200
    assert server.put("/v1/agent/force-leave/fl-prune?prune").status == 200
    wait_for(lambda: _status(server, "fl-keep") == 3)  # left
    wait_for(lambda: _status(server, "fl-prune") is None)  # gone from the member list
    wait_for(
        lambda: (
            not {n["Node"] for n in server.get("/v1/catalog/nodes").json()}
            & {"fl-keep", "fl-prune"}
        )
    )


def test_prepared_query_dns_on_a_client_agent(server):
    """A client agent answers `NAME.query.consul` from its watch cache (two loads: the query
    definitions, then the service)."""
    client = client_agent(server, "pq-client").start()
    try:
        client.put(
            "/v1/agent/service/register",
            {"Name": "pq-remote", "Address": "127.0.5.9", "Port": 1, "Tags": ["blue"]},
        )
        body = {"Name": "pq-blue", "Service": {"Service": "pq-remote", "Tags": ["blue"]}}
        assert server.request("POST", "/v1/query", body).status == 200
        q = dns.message.make_query("pq-blue.query.consul", "A")
        resp = dns.query.udp(q, "127.0.0.1", port=client.dns_port, timeout=5)
        assert [rr.address for rrset in resp.answer for rr in rrset] == ["127.0.5.9"]
    finally:
        client.stop()
