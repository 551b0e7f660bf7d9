"""The agent's own network coordinate, fed by the heartbeats it already sends.

Every heartbeat is a round trip to the leader: its duration is an RTT sample, and the reply
carries the leader's coordinate, which is all Vivaldi needs (`meshd.coordinate`). The agent sends
its coordinate with the next heartbeat; the leader writes them to Raft in batches.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from meshd.coordinate import Client, Coordinate, CoordinateError

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

log = logging.getLogger("meshd.agent")


class AgentCoordinate:
    def __init__(self) -> None:
        self.client = Client()

    @property
    def coord(self) -> Coordinate:
        return self.client.coord

    def observe(self, reply: Any, rtt: float) -> None:
        """A heartbeat reply and its round-trip time (seconds). A reply from ourselves (the
        leader's own agent) or without a coordinate carries no distance information."""
        if not isinstance(reply, dict) or reply.get("Self") or reply.get("Coord") is None:
            return
        try:
            other = Coordinate.from_json(reply["Coord"])
            self.client.update(str(reply.get("Node", "")), other, rtt)
        except CoordinateError as e:
            log.debug("coordinate update skipped: %s", e)


def self_coordinate(agent: Agent) -> dict[str, Any]:
    """This agent's coordinate in Consul's `/v1/agent/self` `Coord` shape."""
    return agent.coordinate.coord.to_json()
