"""The agent's and its server's own metrics under Consul's names, registered once at start.

Every value is read at scrape time from the component that owns it (counters on the ADS
server, timers on the Raft write path and the DNS server), so nothing here runs per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshd import autopilot
from meshd.server import operator

if TYPE_CHECKING:
    from meshd.agent.agent import Agent
    from meshd.server.cluster import Server

#: names of the timers other modules fill through Stats.timer()
HEARTBEAT_RTT = "meshd.heartbeat.rtt"
SNAPSHOT_BUILD = "meshd.xds.snapshot_build"


def register_consul_metrics(agent: Agent) -> None:
    st = agent.stats
    counters, gauges = st.named_counters, st.named_gauges
    if agent.dns is not None:
        st.timers["consul.dns.domain_query"] = agent.dns.domain_timer
        st.timers["consul.dns.ptr_query"] = agent.dns.ptr_timer
    mesh = getattr(agent, "mesh", None)
    if mesh is not None:
        ads = mesh.ads
        gauges["consul.xds.server.streams"] = lambda: ads.stream_count()
        counters["meshd.xds.pushes"] = lambda: ads.pushes
        counters["meshd.xds.acks"] = lambda: ads.acks_total
        counters["meshd.xds.nacks"] = lambda: ads.nacks_total
    st.timer(HEARTBEAT_RTT)
    st.timer(SNAPSHOT_BUILD)
    server = agent.server
    if server is None:
        return
    m = server.metrics
    st.timers["consul.raft.commitTime"] = m.commit
    st.timers["consul.catalog.register"] = m.register
    st.timers["consul.catalog.deregister"] = m.deregister
    counters["consul.raft.apply"] = lambda: server.raft.commits if server.raft else 0
    counters["consul.raft.state.leader"] = lambda: m.became_leader
    gauges["consul.raft.leader.lastContact"] = lambda: last_contact_ms(server)
    gauges["consul.autopilot.healthy"] = lambda: autopilot_healthy(server)
    gauges["meshd.server.watches"] = lambda: server.store.watches.waiter_count()


def last_contact_ms(server: Server) -> float:
    """On the leader, the longest time since a follower was last heard from (Consul's view);
    on a follower, the time since it last heard from a leader."""
    raft = server.raft
    if raft is None:
        return 0.0
    if not raft.is_leader:
        return float(raft.last_contact_ms())
    views = operator.server_views(server)
    return max((v.last_contact * 1000.0 for v in views if not v.leader), default=0.0)


def autopilot_healthy(server: Server) -> float:
    """1 when every server is healthy by autopilot's rules; only the leader knows (Consul
    reports it from the leader), so a follower says NaN rather than a guess."""
    raft = server.raft
    if raft is None or not raft.is_leader:
        return float("nan")
    views = operator.server_views(server)
    return float(autopilot.health(views, server.store.autopilot.config)["Healthy"])
