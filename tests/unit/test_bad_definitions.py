"""Service and check bodies that used to slip through or crash: each is a DefinitionError now."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshd.agent.definitions import DefinitionError, parse_check, parse_service
from meshd.agent.leaf import LeafError, LeafManager


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"Name": "web", "Checks": {}}, "Checks must be a list, got dict"),
        ({"Name": "web", "Checks": 5}, "Checks must be a list, got int"),
        ({"Name": "web", "Weights": {"Passing": 2**64}}, "out of range"),
        ({"Name": "web", "Weights": {"Passing": 1, "Warning": -(2**63) - 1}}, "out of range"),
    ],
)
def test_bad_service_bodies_are_definition_errors(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason):
        parse_service(body)


def test_check_counters_beyond_64_bits_are_refused() -> None:
    with pytest.raises(DefinitionError, match="out of range"):
        parse_check({"Name": "c", "TTL": "10s", "SuccessBeforePassing": 2**63})


def test_the_largest_64_bit_weight_is_still_accepted() -> None:
    svc = parse_service({"Name": "web", "Weights": {"Passing": 2**63 - 1, "Warning": 0}})
    assert svc.service.Weights.Passing == 2**63 - 1


async def test_a_leaf_for_a_name_no_ca_signs_fails_at_once_and_starts_no_retry_loop() -> None:
    manager = LeafManager(backend=None, datacenter="dc1", on_change=lambda: None)  # type: ignore[arg-type]
    with pytest.raises(LeafError, match="invalid service"):
        await manager.get("bad name")
    manager.ensure("a/b")
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("leaf ")]
