"""ACLs end to end on 3 servers and a client agent in network namespaces, default deny.

Bootstrap once, a node token for the client (node:write on its node, service:write on its
service), the client's service visible from another server's agent, a foreign registration
refused, and DNS through the client with and without a dns token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from cluster import Cluster, Node, wait

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)

ACL = 'acl {\n  enabled = true\n  default_policy = "deny"\n  down_policy = "extend-cache"\n}\n'


@pytest.fixture
def cluster(network_factory: Any) -> Iterator[Cluster]:
    net = network_factory(4)
    c = Cluster(net, n_servers=3)
    for node in c.servers + c.clients:
        path = os.path.join(node.data_dir, "acl.hcl")
        with open(path, "w") as f:
            f.write(ACL)
        node.args.append(f"-config-file={path}")
    c.clients[0].args.append("-log-level=debug")  # every refused sync is in its log
    try:
        c.start()
        yield c
    finally:
        c.close()


def _with(path: str, token: str) -> str:
    return path + ("&" if "?" in path else "?") + f"token={token}"


def _ok(node: Node, method: str, path: str, token: str, body: Any = None) -> Any:
    status, got, _ = node.request(method, _with(path, token), body, timeout=30)
    assert status == 200, (node.name, method, path, status, got)
    return got


def _token(node: Node, boot: str, name: str, rules: str) -> str:
    _ok(node, "PUT", "/v1/acl/policy", boot, {"Name": name, "Rules": rules})
    made = _ok(node, "PUT", "/v1/acl/token", boot, {"Policies": [{"Name": name}]})
    return str(made["SecretID"])


def _dns(node: Node, name: str) -> tuple[int, set[str]]:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, node.host.addr, port=8600, timeout=3)
    addrs = {x.address for rr in r.answer if rr.rdtype == dns.rdatatype.A for x in rr}
    return r.rcode(), addrs


REFUSED = "anti-entropy sync failed: Permission denied"


def _refusals(node: Node) -> int:
    with open(node.log_path, errors="replace") as f:
        return f.read().count(REFUSED)


def _api(node: Node, token: str) -> list[Any]:
    status, rows, _ = node.get(_with("/v1/health/service/api", token))
    return rows if status == 200 and isinstance(rows, list) else []


def test_acls_across_servers_and_a_client_agent(cluster: Cluster) -> None:
    s1, s2, _ = cluster.servers
    (client,) = cluster.clients
    status, body, _ = s1.put("/v1/acl/bootstrap")
    assert status == 200, body
    boot = str(body["SecretID"])
    status, body, _ = s2.put("/v1/acl/bootstrap")  # once in the whole cluster
    assert status == 403 and "ACL bootstrap no longer allowed" in body

    # the client agent: no agent token yet, its catalog sync is refused
    status, body, _ = client.put(
        _with("/v1/agent/service/register", boot), {"Name": "api", "Port": 9090}, timeout=30
    )
    assert status == 200, body
    wait(lambda: _refusals(client), 30, "a client without a token is refused")
    assert _api(s2, boot) == []

    rules = f'node "{client.name}" {{ policy = "write" }}\nservice "api" {{ policy = "write" }}'
    node_token = _token(s1, boot, "client-node", rules)
    _ok(client, "PUT", "/v1/agent/token/agent", boot, {"Token": node_token})
    rows = wait(lambda: _api(s2, boot), 30, "api registered by the client, seen on s2")
    assert [(r["Node"]["Node"], r["Service"]["Service"]) for r in rows] == [(client.name, "api")]
    assert rows[0]["Node"]["Address"] == client.host.addr
    assert _api(s2, "") == []  # anonymous, default deny: filtered out

    # the node token may not put another node into the catalog, through any agent
    intruder = {"Node": "intruder", "Address": "10.99.0.1", "Service": {"Service": "api"}}
    for node in (client, s2):
        status, body, _ = node.put(_with("/v1/catalog/register", node_token), intruder)
        assert status == 403 and "'node:write' on \"intruder\"" in body, (node.name, body)
    status, nodes, _ = s2.get(_with("/v1/catalog/nodes", boot))
    assert "intruder" not in {n["Node"] for n in nodes}

    # a token for a foreign node: the client's own sync is refused with it
    foreign = _token(s1, boot, "foreign-node", 'node "elsewhere" { policy = "write" }')
    _ok(client, "PUT", "/v1/agent/token/agent", boot, {"Token": foreign})
    _ok(client, "PUT", "/v1/agent/service/register", boot, {"Name": "api2", "Port": 9091})
    marker = _refusals(client)
    wait(lambda: _refusals(client) > marker, 30, "the foreign token is refused")
    status, services, _ = s2.get(_with(f"/v1/catalog/node/{client.name}", boot))
    assert "api2" not in services["Services"]

    # DNS through the client: nothing without a dns token, the service with one
    assert _dns(client, "api.service.consul.")[0] == dns.rcode.NXDOMAIN
    dns_token = _token(
        s1, boot, "dns", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    )
    _ok(client, "PUT", "/v1/agent/token/dns", boot, {"Token": dns_token})
    wait(lambda: _dns(client, "api.service.consul.") == (dns.rcode.NOERROR, {client.host.addr}), 30)
    weak = _token(s1, boot, "weak", 'key "x" { policy = "read" }')
    status, body, _ = client.put(_with("/v1/agent/token/dns", weak), {"Token": weak})
    assert status == 403 and "'agent:write'" in body
    assert _dns(client, "api.service.consul.") == (dns.rcode.NOERROR, {client.host.addr})
