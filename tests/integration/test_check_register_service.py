"""`PUT /v1/agent/check/register` with a ServiceID: the service must exist (Consul answers 400)."""

from helpers import MeshdProcess


def test_check_for_unknown_service_is_refused_and_not_registered(agent: MeshdProcess) -> None:
    body = {"Name": "orphan", "CheckID": "orphan-check", "ServiceID": "no-such-svc", "TTL": "10s"}
    r = agent.put("/v1/agent/check/register", body)
    assert r.status == 400
    assert b"no-such-svc" in r.body
    assert "orphan-check" not in agent.get("/v1/agent/checks").json()


def test_check_for_registered_service_is_attached_to_it(agent: MeshdProcess) -> None:
    assert agent.put("/v1/agent/service/register", {"Name": "has-check-svc"}).status == 200
    body = {"Name": "c", "CheckID": "svc-check", "ServiceID": "has-check-svc", "TTL": "10s"}
    assert agent.put("/v1/agent/check/register", body).status == 200
    assert agent.get("/v1/agent/checks").json()["svc-check"]["ServiceID"] == "has-check-svc"
