"""A connect-proxy whose upstream has no destination is refused at registration, and the
other sidecars keep their config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, dev_agent


@pytest.fixture(scope="module")
def agent() -> Iterator[MeshdProcess]:
    proc = dev_agent().start()
    yield proc
    proc.stop()


def _proxy(pid: str, upstreams: list[dict[str, object]]) -> dict[str, object]:
    return {
        "Kind": "connect-proxy",
        "ID": pid,
        "Name": pid,
        "Port": 21000,
        "Proxy": {"DestinationServiceName": "web", "Upstreams": upstreams},
    }


@pytest.mark.parametrize(
    "upstreams",
    [[{"LocalBindPort": 9191}], [{"DestinationName": "", "LocalBindPort": 9191}], ["api"]],
)
def test_an_upstream_without_a_destination_is_refused_and_not_registered(
    agent: MeshdProcess, upstreams: list[dict[str, object]]
) -> None:
    r = agent.put("/v1/agent/service/register", _proxy("bad-proxy", upstreams))
    assert r.status == 400
    assert "Upstreams[0]" in r.body.decode()
    assert "bad-proxy" not in agent.get("/v1/agent/services").json()


def test_a_valid_proxy_after_a_refused_one_registers(agent: MeshdProcess) -> None:
    agent.put("/v1/agent/service/register", _proxy("bad-proxy", [{"LocalBindPort": 1}]))
    good = _proxy("good-proxy", [{"DestinationName": "api", "LocalBindPort": 9191}])
    assert agent.put("/v1/agent/service/register", good).status == 200
    assert "good-proxy" in agent.get("/v1/agent/services").json()
