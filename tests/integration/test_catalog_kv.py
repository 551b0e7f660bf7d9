"""Catalog, health, KV and status endpoints against a real `meshd agent -dev`."""

from __future__ import annotations

import base64
import threading
import time


def test_catalog_register_deregister_and_reads(agent):
    body = {
        "Node": "ext-1",
        "Address": "10.9.0.1",
        "NodeMeta": {"rack": "r1"},
        "Service": {"Service": "db", "ID": "db-1", "Port": 5432, "Tags": ["primary"]},
        "Check": {
            "CheckID": "db-check",
            "Name": "db alive",
            "Status": "passing",
            "ServiceID": "db-1",
        },
    }
    r = agent.put("/v1/catalog/register", body)
    assert r.status == 200 and r.json() is True
    nodes = agent.get("/v1/catalog/nodes").json()
    ext = next(n for n in nodes if n["Node"] == "ext-1")
    assert ext["Address"] == "10.9.0.1" and ext["Meta"] == {"rack": "r1"}
    assert ext["Datacenter"] == "dc1"
    assert "db" in agent.get("/v1/catalog/services").json()
    assert agent.get("/v1/catalog/services").json()["db"] == ["primary"]
    node = agent.get("/v1/catalog/node/ext-1").json()
    assert node["Node"]["Node"] == "ext-1" and "db-1" in node["Services"]
    assert [c["CheckID"] for c in agent.get("/v1/health/node/ext-1").json()] == ["db-check"]
    assert agent.get("/v1/health/service/db?passing").json()[0]["Node"]["Node"] == "ext-1"
    assert agent.get("/v1/catalog/service/db?tag=primary").json()
    assert agent.get("/v1/catalog/service/db?tag=replica").json() == []
    flt = agent.get("/v1/catalog/nodes?filter=Meta.rack%20%3D%3D%20%22r1%22").json()
    assert [n["Node"] for n in flt] == ["ext-1"]
    passing = agent.get("/v1/health/state/passing").json()
    assert any(c["CheckID"] == "db-check" for c in passing)
    assert agent.get("/v1/health/state/bogus").status == 400
    r = agent.put("/v1/catalog/deregister", {"Node": "ext-1", "ServiceID": "db-1"})
    assert r.json() is True
    assert agent.get("/v1/catalog/service/db").json() == []
    agent.put("/v1/catalog/deregister", {"Node": "ext-1"})
    assert all(n["Node"] != "ext-1" for n in agent.get("/v1/catalog/nodes").json())
    assert agent.get("/v1/catalog/datacenters").json() == ["dc1"]


def test_catalog_register_rejects_bad_input(agent):
    assert agent.put("/v1/catalog/register", {"Address": "1.2.3.4"}).status == 400
    assert agent.put("/v1/catalog/register", {"Node": "n"}).status == 400
    r = agent.put("/v1/catalog/register", {"Node": "n-bad", "Address": "1.1.1.1", "Bogus": 1})
    assert r.status == 400 and b"Bogus" in r.body
    r = agent.put(
        "/v1/catalog/register",
        {"Node": "n-bad", "Address": "1.1.1.1", "Check": {"CheckID": "c", "ServiceID": "nope"}},
    )
    assert r.status == 400
    assert all(n["Node"] != "n-bad" for n in agent.get("/v1/catalog/nodes").json())


def test_index_headers_and_blocking_query_wakes_on_own_service_only(agent):
    agent.put("/v1/agent/service/register", {"Name": "blk", "Port": 1})
    r = agent.get("/v1/health/service/blk")
    idx = int(r.headers["X-Consul-Index"])
    assert idx > 0 and r.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in r.headers
    result = {}

    def block():
        result["r"] = agent.get(f"/v1/health/service/blk?index={idx}&wait=5s", timeout=20)

    th = threading.Thread(target=block)
    th.start()
    time.sleep(0.3)
    agent.put("/v1/agent/service/register", {"Name": "other-svc", "Port": 2})  # must not wake it
    time.sleep(0.3)
    assert th.is_alive()
    agent.put("/v1/agent/service/register", {"Name": "blk", "Port": 3})
    th.join(10)
    # woken by the write (a 5 s timeout would answer with the old index and port)
    assert int(result["r"].headers["X-Consul-Index"]) > idx
    assert result["r"].json()[0]["Service"]["Port"] == 3


def test_blocking_query_times_out_with_same_index(agent):
    agent.put("/v1/agent/service/register", {"Name": "quiet", "Port": 1})
    idx = agent.get("/v1/catalog/service/quiet").headers["X-Consul-Index"]
    t = time.monotonic()
    r = agent.get(f"/v1/catalog/service/quiet?index={idx}&wait=400ms")
    assert time.monotonic() - t > 0.35  # it blocked (nothing changed) for its wait
    assert r.headers["X-Consul-Index"] == idx
    assert agent.get("/v1/catalog/service/quiet?index=abc").status == 400
    assert agent.get("/v1/catalog/service/quiet?stale&consistent").status == 400


def test_kv_roundtrip(agent):
    assert agent.put("/v1/kv/app/config", b"hello").json() is True
    got = agent.get("/v1/kv/app/config").json()
    assert base64.b64decode(got[0]["Value"]) == b"hello"
    assert got[0]["Key"] == "app/config" and got[0]["Flags"] == 0
    assert agent.get("/v1/kv/app/config?raw").body == b"hello"
    assert agent.put("/v1/kv/app/other?flags=42", b"x").json() is True
    assert agent.get("/v1/kv/app/other").json()[0]["Flags"] == 42
    agent.put("/v1/kv/app/sub/deep", b"d")
    assert agent.get("/v1/kv/app/?keys").json() == ["app/config", "app/other", "app/sub/deep"]
    assert agent.get("/v1/kv/app/?keys&separator=/").json() == [
        "app/config",
        "app/other",
        "app/sub/",
    ]
    assert len(agent.get("/v1/kv/app?recurse").json()) == 3
    assert agent.get("/v1/kv/nope").status == 404


def test_kv_cas_and_delete(agent):
    agent.put("/v1/kv/cas/key", b"1")
    idx = agent.get("/v1/kv/cas/key").json()[0]["ModifyIndex"]
    assert agent.put(f"/v1/kv/cas/key?cas={idx + 1000}", b"2").json() is False
    assert agent.put(f"/v1/kv/cas/key?cas={idx}", b"2").json() is True
    assert agent.get("/v1/kv/cas/key?raw").body == b"2"
    assert agent.put("/v1/kv/cas/new?cas=0", b"n").json() is True
    assert agent.put("/v1/kv/cas/new?cas=0", b"m").json() is False
    assert agent.request("DELETE", "/v1/kv/cas/key?cas=1").json() is False
    assert agent.request("DELETE", "/v1/kv/cas/key").json() is True
    assert agent.get("/v1/kv/cas/key").status == 404
    agent.put("/v1/kv/tree/a", b"a")
    agent.put("/v1/kv/tree/b", b"b")
    assert agent.request("DELETE", "/v1/kv/tree/?recurse").json() is True
    assert agent.get("/v1/kv/tree/?recurse").status == 404


def test_kv_bad_input(agent):
    assert agent.put("/v1/kv/big", b"x" * (600 * 1024)).status == 413
    assert agent.get("/v1/kv/big").status == 404
    assert agent.put("/v1/kv/k?flags=-1", b"x").status == 400
    assert agent.put("/v1/kv/k?cas=abc", b"x").status == 400
    assert agent.get("/v1/kv/k").status == 404


def test_kv_blocking_on_prefix(agent):
    agent.put("/v1/kv/watch/a", b"1")
    idx = int(agent.get("/v1/kv/watch/?recurse").headers["X-Consul-Index"])
    out = {}
    th = threading.Thread(
        target=lambda: out.setdefault(
            "r", agent.get(f"/v1/kv/watch/?recurse&index={idx}&wait=5s", timeout=20)
        )
    )
    th.start()
    time.sleep(0.2)
    agent.put("/v1/kv/elsewhere", b"no")
    time.sleep(0.2)
    assert th.is_alive()
    agent.put("/v1/kv/watch/b", b"2")
    th.join(5)
    assert len(out["r"].json()) == 2


def test_status(agent):
    leader = agent.get("/v1/status/leader").json()
    assert leader and ":" in leader
    assert agent.get("/v1/status/peers").json() == [leader]


def test_filters_on_service_and_health_endpoints(agent):
    from urllib.parse import quote

    for i, env in enumerate(("prod", "dev")):
        agent.put(
            "/v1/agent/service/register",
            {
                "Name": "filt",
                "ID": f"filt-{env}",
                "Port": 100 + i,
                "Tags": [env],
                "Meta": {"env": env},
            },
        )
    f = quote('ServiceMeta.env == "prod"')
    assert [r["ServiceID"] for r in agent.get(f"/v1/catalog/service/filt?filter={f}").json()] == [
        "filt-prod"
    ]
    f = quote('Service.Tags contains "dev"')
    rows = agent.get(f"/v1/health/service/filt?filter={f}").json()
    assert [r["Service"]["ID"] for r in rows] == ["filt-dev"]
    f = quote('Checks.Status == "passing" or Service.ID matches "^filt-"')
    assert len(agent.get(f"/v1/health/service/filt?filter={f}").json()) == 2
    assert agent.get("/v1/health/service/filt?filter=" + quote("(Service.ID ==")).status == 400
    assert agent.get("/v1/catalog/services?filter=" + quote('ServiceMeta.env == "dev"')).json() == {
        "filt": ["dev"]
    }
