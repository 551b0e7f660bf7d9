"""`GET /v1/catalog/node/:node?filter=` filters the node's Services map, as Consul does."""

from helpers import MeshdProcess


def _register(agent: MeshdProcess, node: str) -> None:
    for svc, tag in (("web", "prod"), ("db", "staging")):
        body = {"Node": node, "Address": "10.8.0.1", "Service": {"Service": svc, "Tags": [tag]}}
        assert agent.put("/v1/catalog/register", body).json() is True


def test_filter_keeps_matching_services_of_the_node(agent: MeshdProcess) -> None:
    _register(agent, "filter-node-a")
    r = agent.get("/v1/catalog/node/filter-node-a?filter=Service%20%3D%3D%20%22web%22")
    assert r.status == 200
    assert r.json()["Node"]["Node"] == "filter-node-a"
    assert set(r.json()["Services"]) == {"web"}


def test_filter_matching_nothing_leaves_the_node_with_no_services(agent: MeshdProcess) -> None:
    _register(agent, "filter-node-b")
    r = agent.get("/v1/catalog/node/filter-node-b?filter=Service%20%3D%3D%20%22nope%22")
    assert r.json()["Node"]["Node"] == "filter-node-b"
    assert r.json()["Services"] == {}


def test_bad_filter_is_a_400(agent: MeshdProcess) -> None:
    _register(agent, "filter-node-c")
    assert agent.get("/v1/catalog/node/filter-node-c?filter=%3D%3D%3D").status == 400
