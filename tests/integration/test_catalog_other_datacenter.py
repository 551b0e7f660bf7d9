"""A catalog write whose body names another datacenter fails (Consul: 500 "No path to
datacenter") and changes nothing here."""

from helpers import MeshdProcess


def test_register_naming_another_datacenter_is_refused(agent: MeshdProcess) -> None:
    body = {"Datacenter": "dc2", "Node": "dc2-node", "Address": "10.9.9.9"}
    r = agent.put("/v1/catalog/register", body)
    assert r.status == 500
    assert b"No path to datacenter" in r.body
    assert agent.get("/v1/catalog/node/dc2-node").json() is None


def test_register_naming_this_datacenter_applies(agent: MeshdProcess) -> None:
    body = {"Datacenter": "dc1", "Node": "dc1-node", "Address": "10.9.9.8"}
    assert agent.put("/v1/catalog/register", body).json() is True
    assert agent.get("/v1/catalog/node/dc1-node").json()["Node"]["Address"] == "10.9.9.8"


def test_deregister_naming_another_datacenter_is_refused(agent: MeshdProcess) -> None:
    assert agent.put("/v1/catalog/register", {"Node": "keep-node", "Address": "10.9.9.7"}).json()
    r = agent.put("/v1/catalog/deregister", {"Datacenter": "dc2", "Node": "keep-node"})
    assert r.status == 500
    assert agent.get("/v1/catalog/node/keep-node").json() is not None
