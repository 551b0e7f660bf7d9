"""Autopilot: the configuration schema and the pure decisions made from it.

Consul's autopilot watches the servers' health and removes dead servers from Raft. meshd's leader
already knows each server's liveness (heartbeats); this module turns that into Consul's shapes
and decides which failed servers may be removed without risking the quorum. No I/O here: the
leader (`meshd.server.autopilot`) feeds it and acts on the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshd.config import ConfigError, parse_duration

DEFAULTS: dict[str, Any] = {
    "CleanupDeadServers": True,
    "LastContactThreshold": "200ms",
    "MaxTrailingLogs": 250,
    "MinQuorum": 0,
    "ServerStabilizationTime": "10s",
    "RedundancyZoneTag": "",
    "DisableUpgradeMigration": False,
    "UpgradeVersionTag": "",
}
_KINDS: dict[str, type] = {k: type(v) for k, v in DEFAULTS.items()}
_DURATIONS = ("LastContactThreshold", "ServerStabilizationTime")


class AutopilotConfigError(ValueError):
    """A configuration the servers refuse; the text is the reason (HTTP 400)."""


def normalize_config(
    raw: Mapping[str, Any], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The stored form of a configuration: every field, typed, durations checked. Keys are
    matched case-insensitively (Consul's decoder does); unknown keys are refused."""
    out = dict(base or DEFAULTS)
    names = {k.lower(): k for k in DEFAULTS}
    for key, value in raw.items():
        if key in ("CreateIndex", "ModifyIndex"):
            continue
        name = names.get(key.lower())
        if name is None:
            raise AutopilotConfigError(f"unknown autopilot field {key!r}")
        kind = _KINDS[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise AutopilotConfigError(f"{name} must be a number")
        if kind is not int and not isinstance(value, kind):
            raise AutopilotConfigError(f"{name} must be a {kind.__name__}")
        if kind is int and value < 0:
            raise AutopilotConfigError(f"{name} must not be negative")
        if name in _DURATIONS:
            try:
                parse_duration(value)
            except (ConfigError, ValueError) as e:
                raise AutopilotConfigError(f"{name}: invalid duration {value!r}: {e}") from None
        out[name] = value
    return out


@dataclass(frozen=True)
class ServerView:
    """One Raft peer as the leader sees it."""

    id: str  # Raft address
    name: str
    address: str  # RPC address
    status: str  # alive | failed | left | none (not heard from since this leader took office)
    leader: bool
    last_contact: float  # seconds since its last heartbeat reached the leader
    last_index: int
    stable_since: str = ""

    @property
    def alive(self) -> bool:
        return self.status == "alive"

    @property
    def dead(self) -> bool:
        """Known to have failed or left: a server merely not heard from yet is not dead."""
        return self.status in ("failed", "left")


def failure_tolerance(servers: list[ServerView]) -> int:
    """How many more servers may fail with the quorum kept."""
    healthy = sum(1 for s in servers if s.alive)
    quorum = len(servers) // 2 + 1
    return max(healthy - quorum, 0)


def healthy(s: ServerView, config: Mapping[str, Any], leader_index: int) -> bool:
    """Consul's rule: alive, heard from recently, and not too far behind the leader's log."""
    if not s.alive:
        return False
    if s.leader:
        return True
    threshold = parse_duration(config.get("LastContactThreshold", "200ms"))
    # heartbeats come every second: allow one beat on top of the configured threshold
    if s.last_contact > threshold + 1.5:
        return False
    return leader_index - s.last_index <= int(config.get("MaxTrailingLogs", 250))


def dead_servers_to_remove(servers: list[ServerView], config: Mapping[str, Any]) -> list[str]:
    """The Raft ids of failed servers the leader may remove now (Consul's pruneDeadServers):
    none when cleanup is off, when half or more of the peers are failed (an outage, not a dead
    server: removing them could leave no quorum to come back to), or when removal would leave
    fewer voters than MinQuorum."""
    if not config.get("CleanupDeadServers", True):
        return []
    failed = [s.id for s in servers if s.dead and not s.leader]
    if not failed or len(failed) * 2 >= len(servers):
        return []
    min_quorum = int(config.get("MinQuorum", 0))
    room = len(servers) - min_quorum if min_quorum else len(failed)
    return sorted(failed)[: max(min(room, len(failed)), 0)]


def _server_json(s: ServerView, config: Mapping[str, Any], leader_index: int) -> dict[str, Any]:
    return {
        "ID": s.id,
        "Name": s.name,
        "Address": s.address,
        "SerfStatus": s.status,
        "Version": "",
        "Leader": s.leader,
        "LastContact": f"{s.last_contact * 1000:.0f}ms" if not s.leader else "0s",
        "LastTerm": 0,
        "LastIndex": s.last_index,
        "Healthy": healthy(s, config, leader_index),
        "Voter": True,
        "StableSince": s.stable_since,
    }


def health(servers: list[ServerView], config: Mapping[str, Any]) -> dict[str, Any]:
    """GET /v1/operator/autopilot/health."""
    leader_index = max((s.last_index for s in servers if s.leader), default=0)
    rows = [_server_json(s, config, leader_index) for s in servers]
    return {
        "Healthy": all(r["Healthy"] for r in rows),
        "FailureTolerance": failure_tolerance(servers),
        "Servers": rows,
    }


def state(servers: list[ServerView], config: Mapping[str, Any]) -> dict[str, Any]:
    """GET /v1/operator/autopilot/state: the same facts keyed by server id."""
    h = health(servers, config)
    by_id: dict[str, Any] = {}
    for row in h["Servers"]:
        by_id[row["ID"]] = {
            "ID": row["ID"],
            "Name": row["Name"],
            "Address": row["Address"],
            "NodeStatus": row["SerfStatus"],
            "Version": "",
            "LastContact": row["LastContact"],
            "LastTerm": 0,
            "LastIndex": row["LastIndex"],
            "Healthy": row["Healthy"],
            "StableSince": row["StableSince"],
            "Status": "leader" if row["Leader"] else "voter",
            "Meta": {},
            "NodeType": "voter",
        }
    leader = next((s.id for s in servers if s.leader), "")
    return {
        "Healthy": h["Healthy"],
        "FailureTolerance": h["FailureTolerance"],
        "OptimisticFailureTolerance": h["FailureTolerance"],
        "Servers": by_id,
        "Leader": leader,
        "Voters": sorted(s.id for s in servers),
        "RedundancyZones": {},
        "ReadReplicas": [],
        "Upgrade": None,
    }
