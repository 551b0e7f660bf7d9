"""Inputs an attacker or a careless client sends, against a real `meshd agent -dev`.

Each test shows the agent answers with a clear 4xx and keeps serving everyone else.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

import pytest
from helpers import MeshdProcess, Response


def _register_node(agent: MeshdProcess, name: str) -> None:
    body = {"Node": name, "Address": "10.9.9.9"}
    assert agent.put("/v1/catalog/register", body).status == 200


@pytest.mark.timeout(90)
def test_catastrophic_regex_filter_answers_and_others_are_served(agent: MeshdProcess) -> None:
    victim = "a" * 60 + "-"
    _register_node(agent, victim)
    results: dict[str, Any] = {}

    def slow() -> None:
        flt = quote('Node matches "(a+)+$"')
        results["filter"] = agent.get(f"/v1/catalog/nodes?filter={flt}", timeout=60)

    worker = threading.Thread(target=slow)
    worker.start()
    others = [agent.get("/v1/status/leader", timeout=60) for _ in range(5)]
    worker.join(80)
    assert all(r.status == 200 for r in others)
    got: Response = results["filter"]
    assert got.status == 200
    names = [n["Node"] for n in got.json()]
    assert victim not in names  # ends in "-": no match
    flt = quote('Node matches "^a+-$"')
    assert victim in [n["Node"] for n in agent.get(f"/v1/catalog/nodes?filter={flt}").json()]


def test_huge_repeat_count_in_a_filter_is_a_400_with_the_reason(agent: MeshdProcess) -> None:
    r = agent.get("/v1/catalog/nodes?filter=" + quote('Node matches "a{4294967296}"'))
    assert r.status == 400
    assert b"invalid repeat count" in r.body


_DEEP = b"[" * 100_000 + b"]" * 100_000
_BIG = 2**64


@pytest.mark.parametrize(
    ("method", "path", "body", "reason"),
    [
        ("PUT", "/v1/agent/service/register", _DEEP, b"nested deeper than"),
        (
            "PUT",
            "/v1/catalog/register",
            b'{"Node":"n","Address":"a","Meta":' + _DEEP + b"}",
            b"nested",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            {"Name": "x5", "Checks": 5},
            b"Checks must be a list",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            {"Name": "x6", "Checks": {}},
            b"Checks must be a list",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            {"Node": "n", "Address": "1.2.3.4", "Checks": 5},
            b"Checks must be a list",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            {"Name": "w", "Weights": {"Passing": _BIG, "Warning": 1}},
            b"overflows 64 bits",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            {"Name": "w", "Weights": {"Passing": 2**63, "Warning": 1}},
            b"out of range",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            {
                "Node": "n",
                "Address": "1.2.3.4",
                "Service": {"Service": "s", "Weights": {"Passing": _BIG}},
            },
            b"overflows 64 bits",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            b'{"Name":"nan","Port":NaN}',
            b"NaN is not valid JSON",
        ),
        ("PUT", "/v1/agent/service/register", {"Name": "u", "Bogus": 1}, b"unknown field"),
        ("PUT", f"/v1/kv/abuse?cas={_BIG}", b"x", b"Invalid cas value"),
        ("PUT", "/v1/kv/abuse?cas=1_0", b"x", b"Invalid cas value"),
        ("GET", f"/v1/kv/abuse?index={_BIG}", None, b"Invalid index value"),
        ("GET", f"/v1/catalog/nodes?index={2**70}", None, b"Invalid index value"),
        (
            "PUT",
            f"/v1/config?cas={_BIG}",
            {"Kind": "service-defaults", "Name": "c"},
            b"Invalid cas",
        ),
        (
            "POST",
            "/v1/agent/connect/authorize",
            {"Target": "web", "ClientCertURI": 5},
            b"must be strings",
        ),
        (
            "PUT",
            "/v1/connect/ca/configuration",
            {"Provider": "consul", "Config": {"PrivateKeyType": "dsa"}},
            b"invalid PrivateKeyType 'dsa'",
        ),
        ("GET", "/v1/agent/connect/ca/leaf/bad%20name", None, b"cannot issue a leaf"),
    ],
)
@pytest.mark.timeout(60)
def test_bad_input_is_a_400_with_the_reason(
    agent: MeshdProcess, method: str, path: str, body: Any, reason: bytes
) -> None:
    r = agent.request(method, path, body, timeout=5)
    assert r.status == 400, r.body
    assert reason in r.body, r.body


def test_refused_input_changes_nothing(agent: MeshdProcess) -> None:
    agent.put("/v1/agent/service/register", {"Name": "x6", "Checks": {}})
    assert "x6" not in agent.get("/v1/agent/services").json()
    agent.put("/v1/connect/ca/configuration", {"Config": {"PrivateKeyType": "dsa"}})
    config = agent.get("/v1/connect/ca/configuration").json()["Config"]
    assert config["PrivateKeyType"] == "ec"
    # the agent still writes after all of the above
    assert agent.put("/v1/kv/abuse-after", b"ok").status == 200
