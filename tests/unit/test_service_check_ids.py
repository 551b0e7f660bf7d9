"""Default CheckIDs of checks embedded in a service definition follow Consul's naming."""

from meshd.agent.definitions import parse_service


def test_lone_check_is_named_after_the_service() -> None:
    d = parse_service({"Name": "web", "Check": {"TTL": "10s"}})
    assert [c.CheckID for c in d.checks] == ["service:web"]


def test_several_checks_are_numbered_from_one_check_first() -> None:
    d = parse_service(
        {
            "Name": "web",
            "Check": {"TTL": "10s"},
            "Checks": [{"TTL": "20s"}, {"TTL": "30s", "CheckID": "own"}],
        }
    )
    assert [c.CheckID for c in d.checks] == ["service:web:1", "service:web:2", "own"]
