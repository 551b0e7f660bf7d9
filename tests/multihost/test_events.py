"""User events across hosts: fired on one client agent, received by the others that match, with
the filters applied by each receiving agent; a client cut off from the servers while an event is
fired gets it once it is back."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from cluster import Cluster, Node, wait

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)


@pytest.fixture
def cluster(network_factory: Any) -> Any:
    net = network_factory(6)
    c = Cluster(net, n_servers=3)
    try:
        c.start()
        yield c
    finally:
        c.close()


def listed(node: Node, name: str) -> list[str]:
    status, body, _ = node.get(f"/v1/event/list?name={name}")
    assert status == 200
    return [e["ID"] for e in body]


def fire(node: Node, path: str, payload: bytes = b"") -> str:
    status, body, _ = node.put(path, payload)
    assert status == 200, body
    return str(body["ID"])


def test_event_reaches_matching_agents_only(cluster: Cluster) -> None:
    a, b, c = cluster.clients
    status, _, _ = c.put(
        "/v1/agent/service/register", {"Name": "web", "ID": "web-c", "Tags": ["v2"], "Port": 80}
    )
    assert status == 200
    everyone = fire(a, "/v1/event/fire/all", b"payload")
    for node in [*cluster.clients, *cluster.servers]:
        wait(lambda node=node: listed(node, "all") == [everyone], 15, f"{node.name} missed it")
    web = fire(a, "/v1/event/fire/web?service=^web$&tag=^v2$")
    only_b = fire(a, f"/v1/event/fire/nodes?node=^{b.name}$")
    wait(lambda: listed(c, "web") == [web], 15, "c (runs web v2) missed the service event")
    wait(lambda: listed(b, "nodes") == [only_b], 15, "b missed the event for its node")
    # the others have seen later events by now (same ring, in order), so these are final
    last = fire(a, "/v1/event/fire/marker")
    for node in (a, b, c):
        wait(lambda node=node: listed(node, "marker") == [last], 15, f"{node.name} marker")
    assert listed(a, "web") == [] and listed(b, "web") == []
    assert listed(a, "nodes") == [] and listed(c, "nodes") == []
    _, body, _ = c.get("/v1/event/list?name=all")
    assert body[0]["Payload"] == "cGF5bG9hZA=="  # base64 of "payload"


def test_agent_cut_off_while_an_event_fires_gets_it_back(cluster: Cluster) -> None:
    a, b, _ = cluster.clients
    for s in cluster.servers:
        b.host.block(s.host)
    try:
        missed = fire(a, "/v1/event/fire/while-away")
        assert listed(b, "while-away") == []
    finally:
        for s in cluster.servers:
            b.host.unblock(s.host)
    wait(lambda: listed(b, "while-away") == [missed], 30, "b never caught up:\n" + b.log())


def test_txn_through_a_client_agent(cluster: Cluster) -> None:
    """Writes and read-only transactions go over the client agent's RPC to the servers."""
    _, b, c = cluster.clients
    ops = [
        {"KV": {"Verb": "set", "Key": "mh/txn/a", "Value": "YQ=="}},
        {"KV": {"Verb": "check-not-exists", "Key": "mh/txn/b"}},
    ]
    status, body, _ = b.put("/v1/txn", ops)
    assert status == 200 and body["Results"][0]["KV"]["Key"] == "mh/txn/a"
    status, body, _ = c.put("/v1/txn", [{"KV": {"Verb": "get", "Key": "mh/txn/a"}}])
    assert status == 200 and body["Results"][0]["KV"]["Value"] == "YQ=="
    bad = [
        {"KV": {"Verb": "delete", "Key": "mh/txn/a"}},
        {"KV": {"Verb": "cas", "Key": "mh/txn/a", "Value": "Yg==", "Index": 1}},
    ]
    status, body, _ = c.put("/v1/txn", bad)
    assert status == 409, (status, body)
    assert json.loads(body)["Errors"][0]["OpIndex"] == 1  # the harness gives a 4xx body as text
    assert b.get("/v1/kv/mh/txn/a?raw")[1] == b"a"
