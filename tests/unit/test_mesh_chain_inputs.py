"""What the agent feeds a chain's clusters: subset-filtered endpoints and the caller's limits."""

from __future__ import annotations

from meshd.agent.mesh import healthy_endpoints, upstream_config
from meshd.structs import CheckServiceNode, HealthCheck, Node, NodeService


def row(port: int, version: str, status: str = "passing", tags: list[str] | None = None):
    return CheckServiceNode(
        Node=Node(Node="n1", Address="10.0.0.1"),
        Service=NodeService(
            ID=f"api-{port}", Service="api", Port=port, Meta={"version": version}, Tags=tags or []
        ),
        Checks=[HealthCheck(Node="n1", CheckID=f"c{port}", Name="c", Status=status)],
    )


ROWS = [
    row(1, "v1"),
    row(2, "v2", tags=["canary"]),
    row(3, "v1", "warning"),
    row(4, "v2", "critical"),
]


def ports(subset: dict | None) -> list[int]:
    return [e.port for e in healthy_endpoints(ROWS, subset)]


def test_subset_filter_selects_by_meta_and_tags_and_never_critical() -> None:
    assert ports(None) == [1, 2, 3]
    assert ports({"Filter": "Service.Meta.version == v1"}) == [1, 3]
    assert ports({"Filter": "Service.Meta.version == v2"}) == [2]  # 4 is critical
    assert ports({"Filter": "canary in Service.Tags"}) == [2]
    assert ports({"Filter": "Service.Meta.version == v1", "OnlyPassing": True}) == [1]
    assert ports({"Filter": "Service.Meta.version == v9"}) == []


def test_upstream_config_is_defaults_then_the_upstreams_override() -> None:
    entry = {
        "Kind": "service-defaults",
        "Name": "web",
        "UpstreamConfig": {
            "Defaults": {"Limits": {"MaxConnections": 10}, "ConnectTimeoutMs": 500},
            "Overrides": [
                {"Name": "api", "Limits": {"MaxConcurrentRequests": 2}},
                {"Name": "db", "PassiveHealthCheck": {"MaxFailures": 1}},
            ],
        },
    }
    assert upstream_config([entry], "api") == {
        "Limits": {"MaxConcurrentRequests": 2},
        "ConnectTimeoutMs": 500,
    }
    assert upstream_config([entry], "cache") == {
        "Limits": {"MaxConnections": 10},
        "ConnectTimeoutMs": 500,
    }
    assert upstream_config([], "api") == {}
