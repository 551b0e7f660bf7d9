"""An honest compatibility check: the real Consul client from PyPI (py-consul), unchanged,
against `meshd agent -dev`. Every call is one a tool makes against Consul today; the assertions
are on what the client hands its caller."""

from __future__ import annotations

import threading

import consul
import pytest
from helpers import MeshdProcess


@pytest.fixture
def c(agent: MeshdProcess) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=agent.http_port)


def test_kv(c):
    assert c.kv.put("pyc/a", "1") is True
    assert c.kv.put("pyc/b", "2", flags=7) is True
    index, entry = c.kv.get("pyc/a")
    assert entry["Value"] == b"1" and int(index) > 0
    _, rows = c.kv.get("pyc/", recurse=True)
    assert [(r["Key"], r["Value"], r["Flags"]) for r in rows] == [
        ("pyc/a", b"1", 0),
        ("pyc/b", b"2", 7),
    ]
    _, keys = c.kv.get("pyc/", keys=True)
    assert keys == ["pyc/a", "pyc/b"]
    # check-and-set with the entry's ModifyIndex: once, then stale
    assert c.kv.put("pyc/a", "3", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("pyc/a", "4", cas=entry["ModifyIndex"]) is False
    assert c.kv.get("pyc/a")[1]["Value"] == b"3"
    # an empty value is None to the client, as with Consul
    c.kv.put("pyc/empty", "")
    assert c.kv.get("pyc/empty")[1]["Value"] is None
    # a blocking read returns when the key changes
    index, _ = c.kv.get("pyc/a")
    threading.Timer(0.3, lambda: c.kv.put("pyc/a", "5")).start()
    new_index, entry = c.kv.get("pyc/a", index=index, wait="10s")
    assert int(new_index) > int(index) and entry["Value"] == b"5"
    assert c.kv.delete("pyc/", recurse=True) is True
    assert c.kv.get("pyc/a")[1] is None
    with pytest.raises(consul.ConsulException):
        c.kv.get("pyc/a", dc="nowhere")


def test_agent_services_and_checks(c):
    node = c.agent.self()["Config"]["NodeName"]
    assert c.agent.service.register(
        "pyweb",
        service_id="pyweb-1",
        address="127.0.0.5",
        port=8080,
        tags=["v1"],
        check=consul.Check.ttl("30s"),
    )
    services = c.agent.services()
    assert services["pyweb-1"]["Service"] == "pyweb" and services["pyweb-1"]["Port"] == 8080
    check_id = next(k for k, v in c.agent.checks().items() if v["ServiceID"] == "pyweb-1")
    assert c.agent.checks()[check_id]["Status"] == "critical"
    assert c.agent.check.ttl_pass(check_id, "all good")
    assert c.agent.checks()[check_id]["Output"] == "all good"
    _, rows = c.health.service("pyweb", passing=True)
    assert [(r["Node"]["Node"], r["Service"]["ID"]) for r in rows] == [(node, "pyweb-1")]
    assert c.agent.service.maintenance("pyweb-1", "true", "upgrade")
    assert c.health.service("pyweb", passing=True)[1] == []
    assert c.agent.service.maintenance("pyweb-1", "false")
    assert c.agent.service.deregister("pyweb-1")
    assert "pyweb-1" not in c.agent.services()


def test_agent_self_members_and_status(c):
    me = c.agent.self()
    assert me["Member"]["Name"] == me["Config"]["NodeName"]
    members = c.agent.members()
    assert [m["Name"] for m in members] == [me["Config"]["NodeName"]]
    leader = c.status.leader()
    assert leader.endswith(":8300") and c.status.peers() == [leader]


def test_catalog(c):
    assert c.catalog.register(
        "py-ext",
        "10.20.0.1",
        service={"Service": "py-db", "ID": "py-db-1", "Port": 5432, "Tags": ["primary"]},
        check={"Name": "db alive", "Status": "passing", "ServiceID": "py-db-1"},
    )
    assert c.catalog.datacenters() == ["dc1"]
    _, nodes = c.catalog.nodes()
    assert "py-ext" in {n["Node"] for n in nodes}
    _, services = c.catalog.services()
    assert services["py-db"] == ["primary"] and "consul" in services
    _, rows = c.catalog.service("py-db", tag="primary")
    assert [(r["Node"], r["ServicePort"]) for r in rows] == [("py-ext", 5432)]
    _, node = c.catalog.node("py-ext")
    assert list(node["Services"]) == ["py-db-1"]
    _, checks = c.health.checks("py-db")
    assert [ch["Name"] for ch in checks] == ["db alive"]
    _, passing = c.health.state("passing")
    assert "db alive" in {ch["Name"] for ch in passing}
    _, node_checks = c.health.node("py-ext")
    assert [ch["CheckID"] for ch in node_checks] == ["db alive"]
    assert c.catalog.deregister("py-ext")
    assert c.catalog.service("py-db")[1] == []


def test_coordinates_and_operator(c):
    node = c.agent.self()["Config"]["NodeName"]
    coord = {"Vec": [0.0005] * 8, "Error": 0.3, "Adjustment": 0.0, "Height": 0.0001}
    assert c.coordinate.update(node, coord)
    _, rows = c.coordinate.node(node)
    assert rows[0]["Coord"] == coord
    assert c.coordinate.datacenters()[0]["Datacenter"] == "dc1"
    health = c.operator.autopilot_health()
    assert health["Healthy"] is True and len(health["Servers"]) == 1
    assert c.operator.autopilot_configuration()["CleanupDeadServers"] in (True, False)
    usage = c.operator.usage()
    assert usage["Usage"]["dc1"]["Nodes"] >= 1
    assert c.operator.raft_config()["Servers"][0]["Leader"] is True
