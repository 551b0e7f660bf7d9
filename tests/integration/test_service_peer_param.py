"""`?peer=` on service reads: meshd has no cluster peering, so a named peer has no instances,
while the same read without `peer` still lists this cluster's."""

from typing import Any

import pytest
from helpers import MeshdProcess


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    """Service IDs of catalog rows (flat `ServiceID`) or health rows (nested `Service.ID`)."""
    return [r["ServiceID"] if "ServiceID" in r else r["Service"]["ID"] for r in rows]


@pytest.mark.parametrize("path", ["/v1/health/service/peer-svc", "/v1/catalog/service/peer-svc"])
def test_named_peer_has_no_instances(agent: MeshdProcess, path: str) -> None:
    agent.put("/v1/agent/service/register", {"Name": "peer-svc", "ID": "peer-svc-1"})
    assert _ids(agent.get(path).json()) == ["peer-svc-1"]
    r = agent.get(path + "?peer=no-such-peer")
    assert (r.status, r.json()) == (200, [])
