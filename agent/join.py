"""`/v1/agent/join/:address`: point a running agent at one more server.

meshd has no gossip pool to merge: agents reach the servers over RPC. Joining therefore asks the
address what it is (its `info`), refuses what Consul's join would also fail on (nothing there,
another datacenter, a server of another Raft cluster), and otherwise makes its servers known: a
client agent adds them to its RPC failover list, a server that has not formed its cluster yet
adds the address to the ones it forms with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshd.rpc import ServerInfo
from meshd.rpc_client import RPCClient, RPCError, normalize_addr

if TYPE_CHECKING:
    from meshd.agent.agent import Agent


class JoinError(Exception):
    """The join failed; the text says why (HTTP 500, as Consul's failed join)."""


async def join(agent: Agent, address: str) -> int:
    """Join `address` (host or host:port of a server's RPC port); returns servers learned."""
    cfg = agent.config
    target = normalize_addr(address, cfg.ports.server)
    server = agent.server
    if server is not None and target == server.rpc_addr:
        return 1  # joining ourselves: nothing to learn (also the -dev case, with no RPC port)
    client = agent.rpc if agent.rpc is not None else server.rpc if server is not None else None
    if not isinstance(client, RPCClient):
        raise JoinError("this agent has no RPC client to join with")
    try:
        info = await client.call("info", b"", ServerInfo, addr=target, timeout=5.0)
    except RPCError as e:
        raise JoinError(f"Failed to join {target}: {e}") from None
    if info.Datacenter and info.Datacenter != cfg.datacenter:
        raise JoinError(
            f"Failed to join {target}: it is in datacenter {info.Datacenter!r}, "
            f"this agent in {cfg.datacenter!r} (WAN federation is not supported)"
        )
    servers = [rpc for raft, rpc in info.Known if raft in info.Peers] or [info.RPCAddr]
    if server is None:
        client.set_servers([*client.servers, *servers])
        return len(servers)
    if server.raft is None:
        server.s.retry_join.append(target)  # the formation loop reads this list every round
        return len(servers)
    ours = set(server.raft.peers())
    if info.Started and not ours & set(info.Peers):
        raise JoinError(
            f"Failed to join {target}: it is a server of another cluster "
            "(two Raft clusters cannot be merged; remove one's data and join it fresh)"
        )
    return len(servers)
