"""The connect CA and authorization endpoints against a real dev agent."""

from __future__ import annotations

import json
import threading
import time

from cryptography import x509
from helpers import run_meshd

from meshd.spiffe import spiffe_service_id


def test_roots_never_carry_the_signing_key(agent):
    r = agent.get("/v1/connect/ca/roots")
    assert r.status == 200 and int(r.headers["X-Consul-Index"]) > 0
    body = r.json()
    assert body["TrustDomain"].endswith(".consul") and body["ActiveRootID"]
    assert body["Roots"] and all("SigningKey" not in root for root in body["Roots"])
    assert b"PRIVATE KEY" not in r.body
    active = [root for root in body["Roots"] if root["Active"]]
    cert = x509.load_pem_x509_certificate(active[0]["RootCert"].encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaf_has_the_service_spiffe_id(agent):
    agent.put("/v1/agent/service/register", {"Name": "leafsvc", "Port": 1})
    leaf = agent.get("/v1/agent/connect/ca/leaf/leafsvc").json()
    td = agent.get("/v1/connect/ca/roots").json()["TrustDomain"]
    uri = spiffe_service_id(td, "dc1", "leafsvc")
    assert leaf["ServiceURI"] == uri and "PRIVATE KEY" in leaf["PrivateKeyPEM"]
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [uri]


def test_leaf_blocking_query_returns_on_rotation(agent):
    first = agent.get("/v1/agent/connect/ca/leaf/blockleaf")
    idx = first.headers["X-Consul-Index"]
    out = {}

    def block():
        out["r"] = agent.get(
            f"/v1/agent/connect/ca/leaf/blockleaf?index={idx}&wait=20s", timeout=30
        )

    th = threading.Thread(target=block)
    th.start()
    time.sleep(0.3)
    assert th.is_alive()
    agent.put(
        "/v1/connect/ca/configuration",
        {"Provider": "consul", "ForceRotateRoot": True, "Config": {}},
    )
    th.join(20)
    assert out["r"].json()["SerialNumber"] != first.json()["SerialNumber"]
    roots = agent.get("/v1/connect/ca/roots").json()["Roots"]
    assert len(roots) >= 2 and sum(r["Active"] for r in roots) == 1


def test_ca_configuration_roundtrip_and_bad_input(agent):
    conf = agent.get("/v1/connect/ca/configuration").json()
    assert conf["Provider"] == "consul" and "LeafCertTTL" in conf["Config"]
    assert agent.put("/v1/connect/ca/configuration", {"Provider": "vault"}).status == 400
    assert (
        agent.put(
            "/v1/connect/ca/configuration",
            {"Provider": "consul", "Config": {"LeafCertTTL": "soon"}},
        ).status
        == 400
    )
    assert (
        agent.get("/v1/connect/ca/configuration").json()["Config"]["LeafCertTTL"]
        == conf["Config"]["LeafCertTTL"]
    )


def test_authorize_follows_intentions(agent):
    td = agent.get("/v1/connect/ca/roots").json()["TrustDomain"]
    caller = spiffe_service_id(td, "dc1", "authweb")

    def authorize(uri: str = caller):
        return agent.request(
            "POST", "/v1/agent/connect/authorize", {"Target": "authapi", "ClientCertURI": uri}
        ).json()

    assert authorize()["Authorized"] is True  # -dev: default allow
    agent.put("/v1/connect/intentions/exact?source=authweb&destination=authapi", {"Action": "deny"})
    try:
        got = authorize()
        assert got["Authorized"] is False and got["Reason"]
        other_td = spiffe_service_id("00000000-0000-0000-0000-000000000000.consul", "dc1", "x")
        assert authorize(other_td)["Authorized"] is False
        assert authorize("not-a-uri")["Authorized"] is False
    finally:
        agent.request("DELETE", "/v1/connect/intentions/exact?source=authweb&destination=authapi")
    assert agent.request("POST", "/v1/agent/connect/authorize", {"Target": "x"}).status == 400


def test_connect_envoy_bootstrap_flag(agent):
    agent.put(
        "/v1/agent/service/register",
        {"Name": "bootsvc", "Port": 5000, "Connect": {"SidecarService": {"Port": 21998}}},
    )
    r = run_meshd("connect", "envoy", "-sidecar-for=bootsvc", "-bootstrap", http_addr=agent.http)
    assert r.returncode == 0, r.stderr
    boot = json.loads(r.stdout)
    assert boot["node"]["id"] == "bootsvc-sidecar-proxy" and boot["node"]["cluster"] == "bootsvc"
    addr = json.dumps(boot["static_resources"])
    assert str(agent.grpc_port) in addr
    r = run_meshd("connect", "envoy", "-sidecar-for=nope", "-bootstrap", http_addr=agent.http)
    assert r.returncode == 1 and "no sidecar proxy" in r.stderr


def _create_intentions(agent, pairs):
    """POST every (source, destination) pair at once, one thread each; the responses in order."""
    from concurrent.futures import ThreadPoolExecutor

    def create(pair):
        body = {"SourceName": pair[0], "DestinationName": pair[1], "Action": "allow"}
        return agent.request("POST", "/v1/connect/intentions", body)

    with ThreadPoolExecutor(len(pairs)) as pool:
        return list(pool.map(create, pairs))


def test_concurrent_intention_creates_lose_no_update(agent):
    """Each create is one step of the state machine: many sources for one destination at once
    must all be there afterwards (a read-modify-write on the agent could drop some)."""
    sources = [f"racer-{i}" for i in range(40)]
    replies = _create_intentions(agent, [(s, "race-dst") for s in sources])
    assert [r.status for r in replies] == [200] * len(sources), [r.body for r in replies]
    listed = agent.get("/v1/connect/intentions/match?by=destination&name=race-dst").json()
    found = {i["SourceName"]: i["ID"] for i in listed["race-dst"]}
    assert set(found) == set(sources)
    assert {r.json()["ID"] for r in replies} == set(found.values())


def test_concurrent_creates_of_one_pair_make_exactly_one(agent):
    replies = _create_intentions(agent, [("dup-src", "dup-dst")] * 12)
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] + [400] * 11, [r.body for r in replies]
    refused = [r.body.decode() for r in replies if r.status == 400]
    assert all("an intention from dup-src to dup-dst already exists" in t for t in refused)
    listed = agent.get("/v1/connect/intentions/match?by=destination&name=dup-dst").json()
    assert [i["SourceName"] for i in listed["dup-dst"]] == ["dup-src"]
