"""/v1/agent/* against a real `meshd agent -dev` process."""

from __future__ import annotations

from aiohttp import web
from helpers import BackgroundHTTP, free_port, wait_for


def test_register_then_visible_everywhere(agent):
    r = agent.put(
        "/v1/agent/service/register",
        {
            "Name": "web",
            "ID": "web-1",
            "Tags": ["v1", "primary"],
            "Address": "127.0.0.10",
            "Port": 8080,
            "Meta": {"env": "prod"},
            "Weights": {"Passing": 3, "Warning": 1},
            "EnableTagOverride": True,
        },
    )
    assert r.status == 200, r.body
    svc = agent.get("/v1/agent/service/web-1").json()
    assert svc["Service"] == "web" and svc["Port"] == 8080 and svc["Meta"] == {"env": "prod"}
    assert svc["Weights"] == {"Passing": 3, "Warning": 1} and svc["EnableTagOverride"] is True
    assert "web-1" in agent.get("/v1/agent/services").json()
    # the register returns after the catalog committed it: no wait needed
    rows = agent.get("/v1/catalog/service/web").json()
    assert [x["ServiceID"] for x in rows] == ["web-1"]
    assert rows[0]["ServiceAddress"] == "127.0.0.10" and rows[0]["ServiceTags"] == ["v1", "primary"]
    health = agent.get("/v1/health/service/web?passing").json()
    assert [h["Service"]["ID"] for h in health] == ["web-1"]


def test_agent_services_filter(agent):
    agent.put("/v1/agent/service/register", {"Name": "flt", "ID": "flt-a", "Meta": {"k": "a"}})
    agent.put("/v1/agent/service/register", {"Name": "flt", "ID": "flt-b", "Meta": {"k": "b"}})
    got = agent.get("/v1/agent/services?filter=Meta.k%20%3D%3D%20%22b%22").json()
    assert list(got) == ["flt-b"]
    bad = agent.get("/v1/agent/services?filter=Meta.k%20%3D%3D")
    assert bad.status == 400 and bad.body


def test_deregister_and_unknown(agent):
    agent.put("/v1/agent/service/register", {"Name": "gone", "Port": 1})
    assert agent.put("/v1/agent/service/deregister/gone").status == 200
    assert agent.get("/v1/agent/service/gone").status == 404
    assert agent.get("/v1/catalog/service/gone").json() == []
    assert agent.put("/v1/agent/service/deregister/never").status == 404


def test_bad_input_changes_nothing(agent):
    before = agent.get("/v1/agent/services").json()
    for body in (
        b"{not json",
        b"[]",
        b'{"Name": 5}',
        b'{"Name": "x", "Port": "80"}',
        b'{"Name": "x", "Bogus": 1}',
        b'{"Name": "bad\\u0000name"}',
        b'{"Name": "x", "Check": {"HTTP": "http://x", "Interval": "zz"}}',
    ):
        r = agent.put("/v1/agent/service/register", body)
        assert r.status == 400, (body, r.status, r.body)
        assert r.body.strip(), body
    huge = b'{"Name": "h", "Meta": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = agent.put("/v1/agent/service/register", huge)
    assert r.status == 413
    assert agent.get("/v1/agent/services").json() == before


def test_ttl_check_lifecycle_and_agent_health(agent):
    agent.put(
        "/v1/agent/service/register",
        {"Name": "ttlsvc", "ID": "ttlsvc-1", "Check": {"CheckID": "ttlsvc-ttl", "TTL": "30s"}},
    )
    r = agent.get("/v1/agent/health/service/id/ttlsvc-1")
    assert r.status == 503 and r.json()["AggregatedStatus"] == "critical"
    assert agent.put("/v1/agent/check/pass/ttlsvc-ttl?note=ok").status == 200
    r = agent.get("/v1/agent/health/service/name/ttlsvc")
    assert r.status == 200 and r.json()[0]["AggregatedStatus"] == "passing"
    checks = agent.get("/v1/health/service/ttlsvc?passing").json()[0]["Checks"]
    assert [c["Output"] for c in checks if c["CheckID"] == "ttlsvc-ttl"] == ["ok"]
    assert agent.put("/v1/agent/check/warn/ttlsvc-ttl").status == 200
    assert agent.get("/v1/agent/health/service/id/ttlsvc-1").status == 429
    assert (
        agent.put(
            "/v1/agent/check/update/ttlsvc-ttl", {"Status": "critical", "Output": "down"}
        ).status
        == 200
    )
    checks = agent.get("/v1/agent/checks").json()
    assert checks["ttlsvc-ttl"]["Status"] == "critical" and checks["ttlsvc-ttl"]["Output"] == "down"
    assert agent.get("/v1/agent/health/service/id/ttlsvc-1?format=text").body == b"critical"
    assert agent.put("/v1/agent/check/update/ttlsvc-ttl", {"Status": "bogus"}).status == 400
    assert agent.put("/v1/agent/check/pass/nope").status == 404
    assert agent.get("/v1/agent/health/service/name/none-such").status == 404


def test_standalone_check_register_deregister(agent):
    r = agent.put("/v1/agent/check/register", {"Name": "mem", "TTL": "10s", "Status": "passing"})
    assert r.status == 200, r.body
    assert agent.get("/v1/agent/checks").json()["mem"]["Status"] == "passing"
    node = agent.get("/v1/agent/self").json()["Config"]["NodeName"]
    assert any(c["CheckID"] == "mem" for c in agent.get(f"/v1/health/node/{node}").json())
    assert agent.put("/v1/agent/check/deregister/mem").status == 200
    assert "mem" not in agent.get("/v1/agent/checks").json()
    assert agent.put("/v1/agent/check/register", {"Name": "x"}).status == 400


def test_service_maintenance(agent):
    agent.put("/v1/agent/service/register", {"Name": "maint", "Port": 9})
    assert agent.get("/v1/health/service/maint?passing").json()
    r = agent.put("/v1/agent/service/maintenance/maint?enable=true&reason=upgrade")
    assert r.status == 200
    assert agent.get("/v1/health/service/maint?passing").json() == []
    checks = agent.get("/v1/health/checks/maint").json()
    assert any(c["Notes"] == "upgrade" for c in checks)
    agent.put("/v1/agent/service/maintenance/maint?enable=false")
    assert agent.get("/v1/health/service/maint?passing").json()
    assert agent.put("/v1/agent/service/maintenance/maint").status == 400
    assert agent.put("/v1/agent/service/maintenance/nosuch?enable=true").status == 404


def test_http_check_runs(agent):
    hits = []

    async def ok(request):
        hits.append(1)
        return web.Response(text="fine")

    port = free_port()
    servers = BackgroundHTTP()
    servers.serve(port, ok)
    agent.put(
        "/v1/agent/service/register",
        {
            "Name": "httpc",
            "Port": port,
            "Check": {"HTTP": f"http://127.0.0.1:{port}/health", "Interval": "200ms"},
        },
    )
    wait_for(lambda: agent.get("/v1/health/service/httpc?passing").json(), 10)
    assert hits
    servers.close()


def test_self_and_members(agent):
    me = agent.get("/v1/agent/self").json()
    assert me["Config"]["Datacenter"] == "dc1" and me["Config"]["Version"]
    members = agent.get("/v1/agent/members").json()
    assert members[0]["Name"] == me["Config"]["NodeName"] and members[0]["Status"] == 1


def test_replace_existing_checks(agent):
    agent.put(
        "/v1/agent/service/register",
        {"Name": "rep", "Checks": [{"CheckID": "a", "TTL": "10s"}, {"CheckID": "b", "TTL": "10s"}]},
    )
    agent.put(
        "/v1/agent/service/register?replace-existing-checks",
        {"Name": "rep", "Checks": [{"CheckID": "b", "TTL": "10s"}]},
    )
    ids = {c["CheckID"] for c in agent.get("/v1/health/checks/rep").json()}
    assert ids == {"b"}


def test_metrics_prometheus_and_json(agent):
    agent.get("/v1/agent/services")
    r = agent.get("/v1/agent/metrics?format=prometheus")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    assert 'meshd_http_requests_total{code="200",method="GET"}' in text
    assert "meshd_raft_commits_total" in text and "meshd_catalog_nodes" in text
    body = agent.get("/v1/agent/metrics").json()
    assert {"Timestamp", "Gauges", "Counters", "Samples"} <= set(body)
    assert any(g["Name"] == "meshd.local.services" for g in body["Gauges"])
