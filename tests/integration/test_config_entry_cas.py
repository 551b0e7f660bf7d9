"""Config entry check-and-set on delete (`DELETE /v1/config/:kind/:name?cas=`), as Consul."""

from helpers import MeshdProcess


def _entry(agent: MeshdProcess, name: str) -> dict[str, object] | None:
    r = agent.get(f"/v1/config/service-defaults/{name}")
    return r.json() if r.status == 200 else None


def test_delete_with_stale_cas_is_refused_and_keeps_the_entry(agent: MeshdProcess) -> None:
    name = "cas-del-stale"
    body = {"Kind": "service-defaults", "Name": name, "Protocol": "http"}
    assert agent.put("/v1/config", body).json() is True
    entry = _entry(agent, name)
    assert entry is not None
    stale = int(str(entry["ModifyIndex"])) + 1000
    r = agent.request("DELETE", f"/v1/config/service-defaults/{name}?cas={stale}")
    assert (r.status, r.json()) == (200, False)
    assert _entry(agent, name) == entry


def test_delete_with_current_cas_removes_the_entry(agent: MeshdProcess) -> None:
    name = "cas-del-current"
    body = {"Kind": "service-defaults", "Name": name, "Protocol": "http"}
    assert agent.put("/v1/config", body).json() is True
    entry = _entry(agent, name)
    assert entry is not None
    r = agent.request("DELETE", f"/v1/config/service-defaults/{name}?cas={entry['ModifyIndex']}")
    assert (r.status, r.json()) == (200, True)
    assert _entry(agent, name) is None
