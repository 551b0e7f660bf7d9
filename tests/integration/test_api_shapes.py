"""Shapes and behaviours a Consul client relies on, against a real `meshd agent -dev`."""

from __future__ import annotations

import time
import urllib.parse

import pytest
from helpers import MeshdProcess, dev_agent, free_port


@pytest.fixture(scope="module")
def server_port_agent() -> MeshdProcess:
    """A dev agent with a non-default server RPC port, so the reported port is the config's."""
    port = free_port()
    a = dev_agent(f"-server-port={port}")
    a.rpc_port = port  # type: ignore[attr-defined]
    a.start()
    yield a
    a.stop()


def test_server_registers_the_consul_service(server_port_agent):
    a = server_port_agent
    rows = a.get("/v1/catalog/service/consul").json()
    node = a.get("/v1/agent/self").json()["Config"]["NodeName"]
    assert [(r["Node"], r["ServiceID"], r["ServicePort"]) for r in rows] == [
        (node, "consul", a.rpc_port)
    ]
    # covered by the node's serfHealth, as in Consul; and not one of the agent's own services
    health = a.get("/v1/health/service/consul?passing").json()
    assert [c["CheckID"] for c in health[0]["Checks"]] == ["serfHealth"]
    assert "consul" not in a.get("/v1/agent/services").json()
    # anti-entropy leaves it alone: still there after a full sync of the node
    a.put("/v1/agent/service/register", {"Name": "ae-poke", "Port": 1})
    assert [r["ServiceID"] for r in a.get("/v1/catalog/service/consul").json()] == ["consul"]


def test_status_reports_server_rpc_addresses(server_port_agent):
    a = server_port_agent
    leader = a.get("/v1/status/leader").json()
    assert leader == f"127.0.0.1:{a.rpc_port}"
    assert a.get("/v1/status/peers").json() == [leader]
    conf = a.get("/v1/operator/raft/configuration").json()
    assert [(s["Address"], s["Leader"]) for s in conf["Servers"]] == [(leader, True)]


def test_members_and_serf_health_present_once_http_answers():
    """Poll from the first moment the port accepts: no answer may show an empty member list."""
    a = dev_agent()
    a.spawn()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, a.read_log()
            try:
                members = a.get("/v1/agent/members", timeout=2).json()
                break
            except OSError:
                time.sleep(0.01)
        node = a.get("/v1/agent/self").json()["Config"]["NodeName"]
        checks = a.get(f"/v1/health/node/{node}").json()
        assert [m["Name"] for m in members] == [node]
        assert [(c["CheckID"], c["Status"]) for c in checks] == [("serfHealth", "passing")]
    finally:
        a.stop()


def test_service_tagged_addresses_shape(agent):
    body = {
        "Name": "tagged",
        "Address": "10.1.2.3",
        "Port": 80,
        "TaggedAddresses": {"wan": {"address": "198.18.0.1", "port": 8080}},
    }
    assert agent.put("/v1/agent/service/register", body).status == 200
    want = {"wan": {"Address": "198.18.0.1", "Port": 8080}}
    assert agent.get("/v1/agent/service/tagged").json()["TaggedAddresses"] == want
    row = agent.get("/v1/catalog/service/tagged").json()[0]
    assert row["ServiceTaggedAddresses"] == want
    # a bare string (the node's shape) is not a service tagged address: refused, nothing changes
    bad = dict(body, Name="tagged-bad", TaggedAddresses={"wan": "198.18.0.1"})
    r = agent.put("/v1/agent/service/register", bad)
    assert r.status == 400 and b"TaggedAddresses" in r.body
    assert agent.get("/v1/agent/service/tagged-bad").status == 404


def test_empty_kv_value_reads_back_as_null(agent):
    assert agent.put("/v1/kv/shapes/empty", b"").json() is True
    entry = agent.get("/v1/kv/shapes/empty").json()[0]
    assert entry["Value"] is None
    raw = agent.get("/v1/kv/shapes/empty?raw")
    assert raw.status == 200 and raw.body == b""
    agent.put("/v1/kv/shapes/full", b"x")
    assert agent.get("/v1/kv/shapes/full").json()[0]["Value"] == "eA=="


def test_locality_on_service_and_sidecar(agent):
    body = {
        "Name": "loc",
        "Port": 8080,
        "Locality": {"Region": "us-east-1", "Zone": "us-east-1a"},
        "Connect": {"SidecarService": {}},
    }
    assert agent.put("/v1/agent/service/register", body).status == 200
    want = {"Region": "us-east-1", "Zone": "us-east-1a"}
    assert agent.get("/v1/agent/service/loc").json()["Locality"] == want
    assert agent.get("/v1/agent/service/loc-sidecar-proxy").json()["Locality"] == want
    assert agent.get("/v1/catalog/service/loc").json()[0]["ServiceLocality"] == want
    assert agent.get("/v1/health/service/loc").json()[0]["Service"]["Locality"] == want
    bad = {"Name": "loc-bad", "Locality": {"Planet": "earth"}}
    r = agent.put("/v1/agent/service/register", bad)
    assert r.status == 400 and b"Locality" in r.body


def test_non_dns_safe_service_name_is_accepted_with_a_warning(agent):
    name = "my_service.v2 beta"
    r = agent.put("/v1/agent/service/register", {"Name": name, "Port": 1})
    assert r.status == 200, r.body
    quoted = urllib.parse.quote(name)
    assert [x["ServiceName"] for x in agent.get(f"/v1/catalog/service/{quoted}").json()] == [name]
    assert "will not be discoverable via DNS" in agent.read_log()
    # control characters are still refused
    r = agent.put("/v1/agent/service/register", {"Name": "bad\u0007bell"})
    assert r.status == 400


@pytest.mark.parametrize(
    "path",
    ["/v1/catalog/nodes", "/v1/health/service/x", "/v1/kv/anything", "/v1/catalog/services"],
)
def test_unknown_datacenter_is_an_error(agent, path):
    r = agent.get(f"{path}?dc=nowhere")
    assert r.status == 500 and r.body.strip() == b"No path to datacenter"
    r = agent.put("/v1/kv/shapes/dc?dc=nowhere", b"v")
    assert r.status == 500
    assert agent.get("/v1/kv/shapes/dc").status == 404  # the write did not happen
    dc = agent.get("/v1/agent/self").json()["Config"]["Datacenter"]
    assert agent.get(f"/v1/catalog/nodes?dc={dc}").status == 200
