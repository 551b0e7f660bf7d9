"""Prepared queries over HTTP and DNS against a real `meshd agent -dev`."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rdatatype
import pytest


@pytest.fixture(scope="module")
def pq_services(agent):
    for i, (tags, status) in enumerate(
        [(["primary"], "passing"), (["replica"], "warning"), (["primary", "canary"], "passing")]
    ):
        r = agent.put(
            "/v1/agent/service/register",
            {
                "Name": "pqdb",
                "ID": f"pqdb-{i}",
                "Address": f"127.0.4.{i + 1}",
                "Port": 6000 + i,
                "Tags": tags,
                "Meta": {"ver": str(i)},
                "Check": {"CheckID": f"pqdb-{i}-ttl", "TTL": "10m", "Status": status},
            },
        )
        assert r.status == 200, r.body
    return agent


def _ids(rows):
    return sorted(r["Service"]["ID"] for r in rows)


def _dns(agent, name, rtype="A"):
    q = dns.message.make_query(name, rtype)
    return dns.query.udp(q, "127.0.0.1", port=agent.dns_port, timeout=3)


def test_crud_and_execute(pq_services):
    a = pq_services
    body = {"Name": "pq-primary", "Service": {"Service": "pqdb", "Tags": ["primary", "!canary"]}}
    r = a.request("POST", "/v1/query", body)
    assert r.status == 200, r.body
    qid = r.json()["ID"]
    got = a.get(f"/v1/query/{qid}")
    assert got.status == 200 and "X-Consul-Index" in got.headers
    [stored] = got.json()
    assert stored["Name"] == "pq-primary" and stored["Service"]["Tags"] == ["primary", "!canary"]
    assert qid in {x["ID"] for x in a.get("/v1/query").json()}
    res = a.get(f"/v1/query/{qid}/execute").json()
    assert res["Service"] == "pqdb" and res["Datacenter"] == "dc1"
    assert _ids(res["Nodes"]) == ["pqdb-0"]
    assert _ids(a.get("/v1/query/pq-primary/execute").json()["Nodes"]) == ["pqdb-0"]  # by name
    # update: OnlyPassing with no tags drops the warning instance
    upd = {"Name": "pq-primary", "Service": {"Service": "pqdb", "OnlyPassing": True}}
    assert a.put(f"/v1/query/{qid}", upd).status == 200
    assert _ids(a.get(f"/v1/query/{qid}/execute").json()["Nodes"]) == ["pqdb-0", "pqdb-2"]
    assert len(a.get(f"/v1/query/{qid}/execute?limit=1").json()["Nodes"]) == 1
    assert a.request("DELETE", f"/v1/query/{qid}").status == 200
    assert a.get(f"/v1/query/{qid}").status == 404
    assert a.get(f"/v1/query/{qid}/execute").status == 404


def test_bad_definitions_change_nothing(pq_services):
    a = pq_services
    before = a.get("/v1/query").json()
    for bad in (
        {"Name": "x"},
        {"Name": "x", "Service": {"Service": "pqdb", "Tags": "primary"}},
        {"Name": "x", "Template": {"Type": "regexp", "Regexp": "("}, "Service": {"Service": "s"}},
    ):
        r = a.request("POST", "/v1/query", bad)
        assert r.status == 400, (bad, r.body)
    a.request("POST", "/v1/query", {"Name": "pq-dup", "Service": {"Service": "pqdb"}})
    r = a.request("POST", "/v1/query", {"Name": "pq-dup", "Service": {"Service": "pqdb"}})
    assert r.status == 400 and b"already exists" in r.body
    assert len(a.get("/v1/query").json()) == len(before) + 1
    assert a.put("/v1/query/no-such-id", {"Name": "y", "Service": {"Service": "s"}}).status == 404


def test_meta_filters_and_templates(pq_services):
    a = pq_services
    a.request(
        "POST",
        "/v1/query",
        {"Name": "pq-meta", "Service": {"Service": "pqdb", "ServiceMeta": {"ver": "2"}}},
    )
    assert _ids(a.get("/v1/query/pq-meta/execute").json()["Nodes"]) == ["pqdb-2"]
    node = a.get("/v1/agent/self").json()["Config"]["NodeName"]
    a.request(
        "POST",
        "/v1/query",
        {
            "Name": "pqt-",
            "Template": {"Type": "name_prefix_match"},
            "Service": {"Service": "${name.suffix}", "Near": "_agent"},
        },
    )
    res = a.get("/v1/query/pqt-pqdb/execute").json()
    assert res["Service"] == "pqdb" and len(res["Nodes"]) == 3
    assert res["Nodes"][0]["Node"]["Node"] == node
    explained = a.get("/v1/query/pqt-pqdb/explain").json()["Query"]
    assert explained["Service"]["Service"] == "pqdb"
    a.request(
        "POST",
        "/v1/query",
        {
            "Name": "pqrx-",
            "Template": {"Type": "regexp", "Regexp": "^pqrx-(.+?)-(.+)$"},
            "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}"]},
        },
    )
    assert _ids(a.get("/v1/query/pqrx-pqdb-replica/execute").json()["Nodes"]) == ["pqdb-1"]


def test_dns_query_names(pq_services):
    a = pq_services
    a.request(
        "POST",
        "/v1/query",
        {
            "Name": "pq-dns",
            "Service": {"Service": "pqdb", "Tags": ["primary"]},
            "DNS": {"TTL": "7s"},
        },
    )
    resp = _dns(a, "pq-dns.query.consul")
    answers = [rr for rrset in resp.answer for rr in rrset]
    assert sorted(rr.address for rr in answers) == ["127.0.4.1", "127.0.4.3"]
    assert resp.answer[0].ttl == 7
    srv = _dns(a, "pq-dns.query.consul", "SRV")
    assert sorted(r.port for rrset in srv.answer for r in rrset) == [6000, 6002]
    assert _dns(a, "pq-nope.query.consul").rcode() == 3  # NXDOMAIN
    # the answer follows a change to the query (not a stale cached answer)
    [q] = [x for x in a.get("/v1/query").json() if x["Name"] == "pq-dns"]
    a.put(
        f"/v1/query/{q['ID']}",
        {"Name": "pq-dns", "Service": {"Service": "pqdb", "Tags": ["replica"]}},
    )
    resp = _dns(a, "pq-dns.query.consul")
    assert [rr.address for rrset in resp.answer for rr in rrset] == ["127.0.4.2"]
