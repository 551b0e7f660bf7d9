"""Rotating the cluster key with /v1/operator/keyring, on real processes: a server and a
client agent (RPC signatures), and three servers (Raft encryption), with no downtime."""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
from collections.abc import Iterator

import pytest
from helpers import (
    MeshdProcess,
    client_agent,
    server_agent,
    server_cluster,
    start_all,
    wait_for,
)

from meshd.rpc import ServerInfo
from meshd.rpc_client import RPCClient, RPCError


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


K1 = new_key()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[MeshdProcess, MeshdProcess]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = server_agent(tmp, config={"encrypt": K1}).start()
        client = client_agent(server, "kr-client", f"-encrypt={K1}").start()
        try:
            yield server, client
        finally:
            client.stop()
            server.stop()


def ring(agent: MeshdProcess) -> dict:
    r = agent.get("/v1/operator/keyring")
    assert r.status in (200, 500), r.body  # 500: no leader yet, while a cluster forms
    return r.json()[0] if r.status == 200 else {}


def rpc_info(port: int, key: str) -> ServerInfo:
    async def call() -> ServerInfo:
        c = RPCClient([f"127.0.0.1:{port}"], base64.b64decode(key), default_port=port)
        try:
            return await c.call("info", b"", ServerInfo)
        finally:
            await c.close()

    return asyncio.run(call())


def test_rotate_install_use_remove(pair):
    server, client = pair
    wait_for(lambda: ring(server)["Keys"] == {K1: 2})
    assert ring(server)["PrimaryKeys"] == {K1: 2} and ring(server)["NumNodes"] == 2
    k2 = new_key()
    assert client.request("POST", "/v1/operator/keyring", {"Key": k2}).status == 200
    wait_for(lambda: ring(server)["Keys"] == {K1: 2, k2: 2})
    assert server.put("/v1/operator/keyring", {"Key": k2}).status == 200
    wait_for(lambda: ring(server)["PrimaryKeys"] == {k2: 2})
    assert client.put("/v1/kv/kr/during", b"1").json() is True
    assert server.request("DELETE", "/v1/operator/keyring", {"Key": K1}).status == 200
    wait_for(lambda: ring(server)["Keys"] == {k2: 2})
    # the client signs with the new key; the old one no longer opens the RPC port
    assert client.put("/v1/kv/kr/after", b"2").json() is True
    assert rpc_info(server.rpc_port, k2).Started
    with pytest.raises(RPCError) as e:
        rpc_info(server.rpc_port, K1)
    assert e.value.code == 403
    # a restart comes back with the rotated ring, not the retired `encrypt` of its config
    server.stop()
    server.start(timeout=30)
    assert server.get("/v1/kv/kr/after?raw").body == b"2"
    wait_for(lambda: client.put("/v1/kv/kr/restarted", b"3").status == 200, 20)


def test_bad_keyring_requests_change_nothing(pair):
    server, _ = pair

    def reported() -> dict:  # after a restart (the test before), until the agents report in
        r = ring(server)
        return r if r.get("PrimaryKeys") else {}

    before = wait_for(reported, 20)
    primary = next(iter(before["PrimaryKeys"]))
    for method, body, reason in (
        ("POST", {"Key": "not base64!"}, b"not base64"),
        ("POST", {"Key": base64.b64encode(b"short").decode()}, b"must be 16, 24 or 32"),
        ("PUT", {"Key": new_key()}, b"not in the keyring"),
        ("DELETE", {"Key": primary}, b"Removing the primary key is not allowed"),
        ("POST", {}, b"must have a Key"),
    ):
        r = server.request(method, "/v1/operator/keyring", body)
        assert r.status == 400 and reason in r.body, (method, body, r.body)
    after = ring(server)  # the counts are of agents reporting each key: they move with heartbeats
    assert set(after["Keys"]) == set(before["Keys"])
    assert set(after["PrimaryKeys"]) == set(before["PrimaryKeys"])


def test_no_keyring_without_encrypt(agent):
    r = agent.request("POST", "/v1/operator/keyring", {"Key": new_key()})
    assert r.status == 400 and b"no encryption key" in r.body


def test_rotation_on_three_servers_keeps_raft_going():
    """Raft traffic is encrypted with the ring: every step of a rotation keeps the cluster
    committing, and a server restarted afterwards rejoins with the new key alone."""
    k1, k2 = new_key(), new_key()
    with tempfile.TemporaryDirectory() as tmp:
        procs = server_cluster(tmp, config={"encrypt": k1})
        try:
            start_all(procs)
            s0 = procs[0]
            wait_for(lambda: len(s0.get("/v1/status/peers").json()) == 3, 30)
            wait_for(lambda: ring(s0).get("Keys") == {k1: 3}, 20)
            # each step once every node reports the previous one, as Consul's docs advise
            steps = (
                ("POST", k2, lambda r: r.get("Keys") == {k1: 3, k2: 3}),
                ("PUT", k2, lambda r: r.get("PrimaryKeys") == {k2: 3}),
                ("DELETE", k1, lambda r: r.get("Keys") == {k2: 3}),
            )
            for step, (method, key, done) in enumerate(steps):
                assert s0.request(method, "/v1/operator/keyring", {"Key": key}).status == 200
                assert s0.put(f"/v1/kv/rot/{step}", str(step).encode()).json() is True
                wait_for(lambda done=done: done(ring(s0)), 20)
            # every server replicates writes made after the old key left every ring
            assert procs[1].put("/v1/kv/rot/after", b"x").json() is True
            for p in procs:
                wait_for(lambda p=p: p.get("/v1/kv/rot/after?raw&stale").body == b"x", 20)
            # a follower restarted with `encrypt` = the retired key still rejoins (saved ring)
            leader = s0.get("/v1/status/leader").json()
            follower = next(p for p in procs if f"127.0.0.1:{p.rpc_port}" != leader)
            follower.stop()
            other = next(p for p in procs if p is not follower)
            assert other.put("/v1/kv/rot/while-down", b"y").json() is True
            follower.start(timeout=60)
            wait_for(lambda: follower.get("/v1/kv/rot/while-down?raw&stale").body == b"y", 30)
        finally:
            for p in procs:
                p.stop()
