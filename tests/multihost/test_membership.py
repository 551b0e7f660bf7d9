"""Growing and shrinking the server set, and recovering after quorum loss."""

from __future__ import annotations

import json
import os

import pytest
from cluster import Cluster, wait
from helpers import run_meshd

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


def test_add_fourth_and_fifth_server_then_remove(network_factory):
    net = network_factory(5)
    c = Cluster(net, n_servers=3)
    try:
        c.start(clients=False)
        assert c.servers[0].put("/v1/kv/grow", b"1")[1] is True
        extra = []
        for i, host in enumerate(net.hosts[3:5], start=4):
            node = c._node(
                host,
                f"s{i}",
                ["-server", "-bootstrap-expect=3", f"-retry-join={net.hosts[0].addr}"],
            )
            node.start()
            extra.append(node)
            c.servers.append(node)
            wait(
                lambda n=i: len(c.servers[0].get("/v1/status/peers")[1]) == n,
                30,
                f"s{i} not added:\n{node.log()}",
            )
        wait(
            lambda: all(len(s.get("/v1/status/peers")[1]) == 5 for s in c.servers),
            20,
            "peer sets disagree",
        )
        assert extra[-1].get("/v1/kv/grow?raw&stale")[0] == 200
        assert extra[-1].put("/v1/kv/grow", b"2")[1] is True
        # remove s5 with the CLI, named by its server RPC address as Consul lists it
        target = f"{extra[-1].host.addr}:8300"
        assert target in c.servers[0].get("/v1/status/peers")[1]
        extra[-1].kill()
        # as with Consul, the leader re-adds a server it still sees alive: remove it once failed
        wait(
            lambda: (
                {m["Name"]: m["Status"] for m in c.servers[0].get("/v1/agent/members")[1]}.get("s5")
                != 1
            ),
            30,
            "s5 never marked failed",
        )
        r = run_meshd(
            "operator", "raft", "remove-peer", f"-address={target}", http_addr=c.servers[0].http
        )
        assert r.returncode == 0, r.stderr
        wait(lambda: target not in c.servers[0].get("/v1/status/peers")[1], 20, "not removed")
        listed = run_meshd("operator", "raft", "list-peers", http_addr=c.servers[0].http).stdout
        rows = listed.strip().splitlines()[1:]
        assert len(rows) == 4, listed
        assert all(target not in row for row in rows), listed
        assert c.servers[1].put("/v1/kv/grow", b"3")[1] is True
    finally:
        c.close()


def test_recover_after_quorum_loss(network_factory):
    net = network_factory(3)
    c = Cluster(net, n_servers=3)
    try:
        c.start(clients=False)
        survivor = c.servers[0]
        assert survivor.put("/v1/kv/precious", b"data")[1] is True
        for s in c.servers:
            s.kill()
        # two servers are gone for good: rewrite the survivor's peer set, offline
        r = run_meshd(
            "operator",
            "raft",
            "recover",
            f"-data-dir={survivor.data_dir}",
            f"-peers={survivor.host.addr}:8301",
        )
        assert r.returncode == 0, r.stderr
        with open(os.path.join(survivor.data_dir, "raft", "peers.json")) as f:
            assert list(json.load(f)) == [f"{survivor.host.addr}:8301"]
        survivor.start()
        c.wait_leader([survivor], timeout=30)
        assert survivor.get("/v1/kv/precious?raw")[1] == b"data"
        assert survivor.put("/v1/kv/precious", b"more")[1] is True
    finally:
        c.close()
