"""meshd/autopilot.py: the configuration schema and the dead-server decision."""

from __future__ import annotations

import pytest

from meshd.autopilot import (
    DEFAULTS,
    AutopilotConfigError,
    ServerView,
    dead_servers_to_remove,
    failure_tolerance,
    health,
    normalize_config,
)


def view(i: int, alive: bool = True, leader: bool = False, contact: float = 0.1) -> ServerView:
    return ServerView(
        id=f"10.0.0.{i}:8301",
        name=f"s{i}",
        address=f"10.0.0.{i}:8300",
        status="alive" if alive else "failed",
        leader=leader,
        last_contact=contact,
        last_index=100,
    )


def test_defaults_and_case_insensitive_keys():
    assert normalize_config({}) == DEFAULTS
    got = normalize_config({"cleanupdeadservers": False, "MinQuorum": 3})
    assert got["CleanupDeadServers"] is False and got["MinQuorum"] == 3


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"Nope": 1}, "unknown autopilot field"),
        ({"MinQuorum": "3"}, "MinQuorum must be a number"),
        ({"MinQuorum": -1}, "must not be negative"),
        ({"MinQuorum": True}, "MinQuorum must be a number"),
        ({"CleanupDeadServers": "yes"}, "must be a bool"),
        ({"LastContactThreshold": "fast"}, "invalid duration"),
    ],
)
def test_bad_configuration_is_refused(raw, reason):
    with pytest.raises(AutopilotConfigError, match=reason):
        normalize_config(raw)


def test_one_dead_server_of_three_is_removed():
    servers = [view(1, leader=True), view(2), view(3, alive=False)]
    assert dead_servers_to_remove(servers, DEFAULTS) == ["10.0.0.3:8301"]


def test_no_removal_when_half_or_more_are_dead_or_cleanup_is_off():
    assert dead_servers_to_remove([view(1, leader=True), view(2, alive=False)], DEFAULTS) == []
    five = [view(1, leader=True), view(2), view(3), view(4, alive=False), view(5, alive=False)]
    assert dead_servers_to_remove(five, DEFAULTS) == ["10.0.0.4:8301", "10.0.0.5:8301"]
    off = dict(DEFAULTS, CleanupDeadServers=False)
    assert dead_servers_to_remove([view(1, leader=True), view(2), view(3, alive=False)], off) == []


def test_a_server_not_heard_from_yet_is_not_dead():
    """A new leader has no timer for a peer that has not beaten yet: never prune it."""
    fresh = ServerView(
        id="10.0.0.3:8301",
        name="s3",
        address="10.0.0.3:8300",
        status="none",
        leader=False,
        last_contact=0.0,
        last_index=0,
    )
    assert dead_servers_to_remove([view(1, leader=True), view(2), fresh], DEFAULTS) == []
    assert health([view(1, leader=True), view(2), fresh], DEFAULTS)["Healthy"] is False


def test_min_quorum_bounds_removal():
    five = [view(1, leader=True), view(2), view(3), view(4, alive=False), view(5, alive=False)]
    assert dead_servers_to_remove(five, dict(DEFAULTS, MinQuorum=4)) == ["10.0.0.4:8301"]
    assert dead_servers_to_remove(five, dict(DEFAULTS, MinQuorum=5)) == []


def test_health_and_failure_tolerance():
    servers = [view(1, leader=True), view(2), view(3)]
    assert failure_tolerance(servers) == 1
    h = health(servers, DEFAULTS)
    assert h["Healthy"] is True and h["FailureTolerance"] == 1
    stale = [view(1, leader=True), view(2, contact=30.0), view(3, alive=False)]
    h = health(stale, DEFAULTS)
    assert h["Healthy"] is False and h["FailureTolerance"] == 0
    assert [s["Healthy"] for s in h["Servers"]] == [True, False, False]
