"""Operator and agent endpoints against a real `meshd agent -dev`."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import urllib.request

import pytest
from helpers import MeshdProcess, dev_agent, run_meshd, wait_for

from meshd import __version__

KEY = base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
def keyed() -> MeshdProcess:
    """A dev agent with a cluster key, to show that /v1/agent/self hides it."""
    a = dev_agent(f"-encrypt={KEY}").start()
    yield a
    a.stop()


def _node(a: MeshdProcess) -> str:
    return a.get("/v1/agent/self").json()["Config"]["NodeName"]


def test_version(agent):
    v = agent.get("/v1/agent/version").json()
    assert v["HumanVersion"] == __version__ == v["Version"]


def test_self_has_member_stats_coord_xds_and_debug_config(keyed):
    body = keyed.get("/v1/agent/self")
    me = body.json()
    node = me["Config"]["NodeName"]
    assert me["Member"]["Name"] == node and me["Member"]["Status"] == 1
    assert me["Member"]["Tags"]["role"] == "consul"
    assert me["Stats"]["raft"]["state"] == "Leader"
    assert me["Stats"]["agent"]["services"] == "0"
    assert len(me["Coord"]["Vec"]) == 8 and me["Coord"]["Height"] > 0
    assert me["xDS"]["Port"] == keyed.grpc_port
    assert me["DebugConfig"]["NodeName"] == node
    assert me["DebugConfig"]["Ports"]["Http"] == keyed.http_port
    assert me["DebugConfig"]["Encrypt"] == "hidden"
    assert KEY.encode() not in body.body


def test_host(agent):
    h = agent.get("/v1/agent/host").json()
    assert h["Host"]["hostname"] == socket.gethostname()
    assert h["Memory"]["total"] > h["Memory"]["available"] > 0
    assert len(h["CPU"]) == os.cpu_count()
    assert h["Disk"]["total"] > 0 and h["CollectionTime"] > 0


def test_monitor_streams_log_lines(agent):
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        url = agent.http + "/v1/agent/monitor?loglevel=debug"
        with urllib.request.urlopen(url, timeout=20) as r:
            ready.set()
            for raw in r:
                lines.append(raw.decode())
                if "monitored_svc" in raw.decode():
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert ready.wait(10)
    # a name DNS cannot serve is registered with a warning: a line we can wait for
    wait_for(
        lambda: (
            agent.put("/v1/agent/service/register", {"Name": "monitored_svc", "Port": 1}).status
            == 200
            and any("monitored_svc" in x for x in lines)
        ),
        timeout=15,
        interval=0.5,
    )
    t.join(5)
    line = next(x for x in lines if "monitored_svc" in x)
    assert "[WARNING]" in line and "not be discoverable via DNS" in line


def test_monitor_json_and_bad_level(agent):
    bad = agent.get("/v1/agent/monitor?loglevel=verbose")
    assert bad.status == 400 and b"Unknown log level" in bad.body
    lines: list[str] = []

    def read() -> None:
        url = agent.http + "/v1/agent/monitor?loglevel=warn&logjson"
        with urllib.request.urlopen(url, timeout=20) as r:
            lines.append(r.readline().decode())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    wait_for(
        lambda: (
            agent.put("/v1/agent/service/register", {"Name": "json_monitored", "Port": 1}).status
            == 200
            and bool(lines)
        ),
        timeout=15,
        interval=0.5,
    )
    entry = json.loads(lines[0])
    assert entry["@level"] == "warn" and "json_monitored" in entry["@message"]


def test_join(agent):
    me = agent.get("/v1/status/leader").json()
    assert agent.put(f"/v1/agent/join/{me}").status == 200  # ourselves: nothing to do
    r = agent.put("/v1/agent/join/127.0.0.1:1")
    assert r.status == 500 and b"Failed to join 127.0.0.1:1" in r.body
    r = agent.put(f"/v1/agent/join/{me}?wan=1")
    assert r.status == 400


def test_force_leave_unknown_node(agent):
    r = agent.put("/v1/agent/force-leave/no-such-node")
    assert r.status == 500 and b"No node found with name 'no-such-node'" in r.body


def test_transfer_leader_needs_another_server(agent):
    r = agent.request("POST", "/v1/operator/raft/transfer-leader")
    assert r.status == 400 and b"no other server" in r.body
    assert agent.get("/v1/status/leader").json()  # still led


def test_autopilot_configuration_round_trip(keyed):
    a = keyed
    conf = a.get("/v1/operator/autopilot/configuration")
    assert conf.status == 200 and "X-Consul-Index" in conf.headers
    body = conf.json()
    assert body["CleanupDeadServers"] is True and body["LastContactThreshold"] == "200ms"
    new = dict(body, CleanupDeadServers=False, MaxTrailingLogs=100)
    assert a.put("/v1/operator/autopilot/configuration", new).json() is True
    got = a.get("/v1/operator/autopilot/configuration").json()
    assert got["CleanupDeadServers"] is False and got["MaxTrailingLogs"] == 100
    # CAS against a stale index: refused, unchanged
    stale = dict(got, MaxTrailingLogs=7)
    r = a.put(f"/v1/operator/autopilot/configuration?cas={got['ModifyIndex'] - 1}", stale)
    assert r.json() is False
    assert a.get("/v1/operator/autopilot/configuration").json()["MaxTrailingLogs"] == 100
    r = a.put(f"/v1/operator/autopilot/configuration?cas={got['ModifyIndex']}", stale)
    assert r.json() is True
    for bad in ({"Bogus": 1}, {"MinQuorum": "3"}, {"LastContactThreshold": "soon"}):
        r = a.put("/v1/operator/autopilot/configuration", bad)
        assert r.status == 400, bad
    assert a.get("/v1/operator/autopilot/configuration").json()["MaxTrailingLogs"] == 7


def test_autopilot_health_and_state(agent):
    leader = agent.get("/v1/status/leader").json()
    h = agent.get("/v1/operator/autopilot/health")
    assert h.status == 200
    health = h.json()
    assert health["Healthy"] is True and health["FailureTolerance"] == 0
    [srv] = health["Servers"]
    assert srv["Address"] == leader and srv["Leader"] and srv["Name"] == _node(agent)
    state = agent.get("/v1/operator/autopilot/state").json()
    assert state["Leader"] == srv["ID"] and list(state["Servers"]) == [srv["ID"]]
    assert state["Servers"][srv["ID"]]["Status"] == "leader"


def test_usage_counts_the_catalog(agent):
    before = agent.get("/v1/operator/usage").json()["Usage"]["dc1"]
    for i in range(2):
        agent.put("/v1/agent/service/register", {"Name": "usage-svc", "ID": f"u{i}", "Port": i + 1})
    r = agent.get("/v1/operator/usage")
    after = r.json()["Usage"]["dc1"]
    assert int(r.headers["X-Consul-Index"]) > 0
    assert after["Services"] == before["Services"] + 1
    assert after["ServiceInstances"] == before["ServiceInstances"] + 2
    assert after["Nodes"] == len(agent.get("/v1/catalog/nodes").json())


def test_gateway_views_are_empty_without_gateways(agent):
    for path in ("/v1/catalog/gateway-services/some-gw", "/v1/health/ingress/web"):
        r = agent.get(path)
        assert r.status == 200 and r.json() == []
        assert "X-Consul-Index" in r.headers and "X-Consul-KnownLeader" in r.headers


def test_coordinate_update_and_reads(agent):
    node = _node(agent)
    coord = {"Vec": [0.001] * 8, "Error": 0.2, "Adjustment": 0.0, "Height": 0.0001}
    r = agent.put("/v1/coordinate/update", {"Node": node, "Coord": coord})
    assert r.status == 200
    rows = agent.get(f"/v1/coordinate/node/{node}").json()
    assert rows == [{"Node": node, "Segment": "", "Coord": coord}]
    assert {"Node": node, "Segment": "", "Coord": coord} in agent.get("/v1/coordinate/nodes").json()
    dcs = agent.get("/v1/coordinate/datacenters").json()
    assert dcs[0]["Datacenter"] == "dc1" and dcs[0]["Coordinates"][0]["Node"] == node
    # bad coordinates are refused and change nothing
    for bad in (
        {"Node": node, "Coord": dict(coord, Vec=[1.0] * 3)},
        {"Node": node, "Coord": dict(coord, Error="x")},
        {"Coord": coord},
    ):
        assert agent.put("/v1/coordinate/update", bad).status == 400
    assert agent.get(f"/v1/coordinate/node/{node}").json()[0]["Coord"] == coord
    # a node the catalog does not have keeps no coordinate, as in Consul
    agent.put("/v1/coordinate/update", {"Node": "ghost", "Coord": coord})
    assert agent.get("/v1/coordinate/node/ghost").status == 404


def test_near_sorts_by_estimated_rtt_and_rtt_cli(agent):
    origin = {"Vec": [0.0] * 8, "Error": 0.2, "Adjustment": 0.0, "Height": 0.00001}
    dists = {"near-a": 0.030, "near-b": 0.002, "near-c": 0.010}
    agent.put("/v1/catalog/register", {"Node": "near-origin", "Address": "10.9.9.1"})
    agent.put("/v1/coordinate/update", {"Node": "near-origin", "Coord": origin})
    for i, (node, d) in enumerate(dists.items()):
        agent.put(
            "/v1/catalog/register",
            {
                "Node": node,
                "Address": f"10.9.9.{i + 2}",
                "Service": {"Service": "near-svc", "Port": 80},
            },
        )
        coord = dict(origin, Vec=[d] + [0.0] * 7)
        assert agent.put("/v1/coordinate/update", {"Node": node, "Coord": coord}).status == 200
    want = ["near-b", "near-c", "near-a"]
    rows = agent.get("/v1/catalog/service/near-svc?near=near-origin").json()
    assert [r["Node"] for r in rows] == want
    rows = agent.get("/v1/health/service/near-svc?near=near-origin").json()
    assert [r["Node"]["Node"] for r in rows] == want
    nodes = agent.get("/v1/catalog/nodes?near=near-a").json()
    mine = [n["Node"] for n in nodes if n["Node"].startswith("near-")]
    assert mine == ["near-a", "near-c", "near-b", "near-origin"]
    assert nodes[0]["Node"] == "near-a"
    out = run_meshd("rtt", "near-origin", "near-a", http_addr=agent.http)
    assert out.returncode == 0, out.stderr
    assert "Estimated near-origin <-> near-a rtt: 30.0" in out.stdout
    missing = run_meshd("rtt", "near-origin", "nobody", http_addr=agent.http)
    assert missing.returncode == 1 and 'Could not find a coordinate for node "nobody"' in (
        missing.stderr + missing.stdout
    )
