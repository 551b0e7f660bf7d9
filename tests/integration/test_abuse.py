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
