"""`/v1/discovery-chain/:service` against a real dev agent: Consul's shape, blocking, overrides."""

from __future__ import annotations

import threading
import uuid


def test_chain_shape_blocking_and_overrides(agent):
    svc = f"chainsvc-{uuid.uuid4().hex[:6]}"
    td = agent.get("/v1/connect/ca/roots").json()["TrustDomain"]
    r = agent.get(f"/v1/discovery-chain/{svc}")
    assert r.status == 200
    chain = r.json()["Chain"]
    target = f"{svc}.default.default.dc1"
    assert chain["StartNode"] == f"resolver:{target}" and chain["Protocol"] == "tcp"
    assert chain["Targets"][target]["SNI"] == f"{svc}.default.dc1.internal.{td}"

    # a blocking read wakes when an entry of the chain is written
    index = r.headers["X-Consul-Index"]
    woke: dict[str, object] = {}

    def block() -> None:
        woke["r"] = agent.get(f"/v1/discovery-chain/{svc}?index={index}&wait=10s")

    t = threading.Thread(target=block)
    t.start()
    resolver = {"Kind": "service-resolver", "Name": svc, "ConnectTimeout": "15s"}
    assert agent.put("/v1/config", resolver).status == 200
    t.join(15)
    blocked = woke["r"].json()["Chain"]  # type: ignore[attr-defined]
    assert blocked["Nodes"][f"resolver:{target}"]["Resolver"]["ConnectTimeout"] == "15s"

    body = {"OverrideConnectTimeout": "7s", "OverrideProtocol": "grpc"}
    over = agent.request("POST", f"/v1/discovery-chain/{svc}?compile-dc=dc2", body).json()
    chain = over["Chain"]
    assert chain["Protocol"] == "grpc" and chain["Datacenter"] == "dc2"
    node = chain["Nodes"][f"resolver:{svc}.default.default.dc2"]
    assert node["Resolver"]["ConnectTimeout"] == "7s"

    for bad, reason in (
        ({"OverrideProtocol": "smtp"}, b"unknown protocol"),
        ({"OverrideConnectTimeout": "soon"}, b"OverrideConnectTimeout"),
        ({"Override": "x"}, b"unknown field"),
    ):
        r = agent.request("POST", f"/v1/discovery-chain/{svc}", bad)
        assert r.status == 400 and reason in r.body, r.body
    assert agent.request("DELETE", f"/v1/config/service-resolver/{svc}").status == 200
