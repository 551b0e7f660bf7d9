"""The leader's operator work: force-leave, leadership transfer, autopilot, usage.

Requests are one tagged union over one RPC method (`/rpc/operator`), so a client agent's HTTP API
asks any server and the request reaches the leader, whose memory holds the facts (liveness
timers, followers' log positions) that are not replicated.

The leader's loop also calls `reconcile` each round: failed servers are removed from Raft when
the autopilot configuration and the quorum allow it (`meshd.autopilot.dead_servers_to_remove`),
and an alive server whose heartbeat reaches the leader but which is not a Raft peer (removed
while dead, then back) is added again, as Consul's leader re-adds alive server members.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from meshd import autopilot
from meshd.autopilot import ServerView, dead_servers_to_remove
from meshd.server import keyring
from meshd.server.members import ALIVE, FAILED, LEFT, NodeState
from meshd.server.raft import RaftError
from meshd.server.store import CommandError
from meshd.structs import CONSUL_SERVICE

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.operator")


class ForceLeave(msgspec.Struct, tag="force_leave"):
    Node: str
    Prune: bool = False


class TransferLeader(msgspec.Struct, tag="transfer_leader"):
    ID: str = ""  # a server's Raft or RPC address or node name; "" picks the most caught-up


class AutopilotHealth(msgspec.Struct, tag="autopilot_health"):
    State: bool = False  # the /state shape instead of /health


class Usage(msgspec.Struct, tag="usage"):
    pass


class KeyringList(msgspec.Struct, tag="keyring_list"):
    pass


OperatorRequest = ForceLeave | TransferLeader | AutopilotHealth | Usage | KeyringList


class OperatorCall(msgspec.Struct):
    """The body of `/rpc/operator`: the request and the caller's ACL token (operator rights)."""

    Request: OperatorRequest
    Token: str = ""


_STATES = {ALIVE: "alive", FAILED: "failed", LEFT: "left"}
# A server judged failed is removed from Raft only this long after: its verdict commits first,
# and an operator who saw it fail can still remove it with remove-peer (liveness is judged every
# 0.2 s now, where the leader's 0.5 s round used to give both that time).
DEAD_SETTLE = 1.0


class UnknownNodeError(CommandError):
    """force-leave of a node nobody knows (Consul: 500 with this text)."""


async def handle(server: Server, req: OperatorRequest) -> Any:
    """Run `req` on this server, which is the leader."""
    if isinstance(req, ForceLeave):
        return await _force_leave(server, req)
    if isinstance(req, TransferLeader):
        return await _transfer_leader(server, req.ID)
    if isinstance(req, AutopilotHealth):
        views = server_views(server)
        config = server.store.autopilot.config
        return autopilot.state(views, config) if req.State else autopilot.health(views, config)
    if isinstance(req, KeyringList):
        return keyring.listing(server)
    return usage(server)


async def _force_leave(server: Server, req: ForceLeave) -> bool:
    view = server.liveness.view_or_fail()
    known = view.claims.get(req.Node)
    if known is None:
        raise UnknownNodeError(f"agent: No node found with name '{req.Node}'")
    summary = known.summary
    if summary.RaftAddr and summary.RaftAddr == server.raft_addr:
        raise CommandError("the leader cannot force-leave itself")
    view.force_leave(req.Node, req.Prune)
    server.liveness.forget_own()
    log.info("force-leave of %s (prune=%s)", req.Node, req.Prune)
    raft = server.raft
    if raft is not None and summary.Role == "consul" and summary.RaftAddr in raft.peers():
        await raft.remove_peer(summary.RaftAddr)
    return True


async def _transfer_leader(server: Server, target: str) -> bool:
    raft = server._raft()
    peer = ""
    if target:
        peer = server.raft_of(target)
        if peer not in raft.peers():
            for st in server.members.nodes.values():
                if st.name == target and st.raft_addr:
                    peer = st.raft_addr
        if peer not in raft.peers():
            raise CommandError(f"cannot find server {target!r} in the Raft configuration")
        if peer == server.raft_addr:
            raise CommandError("this server is already the leader")
    if len(raft.peers()) < 2:
        raise CommandError("cannot transfer leadership: there is no other server")
    await raft.transfer_leadership(peer or None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while raft.is_leader and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if raft.is_leader:
        raise RaftError("leadership transfer did not complete")
    return True


def usage(server: Server) -> dict[str, Any]:
    """Consul's /v1/operator/usage counts, from this server's copy of the catalog."""
    store = server.store
    with store.lock:
        instances = sum(len(m) for m in store.services.values())
        connect: dict[str, int] = {}
        for m in store.services.values():
            for svc in m.values():
                kind = svc.Kind or ("connect-native" if _native(svc.Connect) else "")
                if kind:
                    connect[kind] = connect.get(kind, 0) + 1
        counts = {
            "Services": len(store.by_name),
            "ServiceInstances": instances,
            "ConnectServiceInstances": {
                k: connect.get(k, 0)
                for k in (
                    "api-gateway",
                    "connect-native",
                    "connect-proxy",
                    "ingress-gateway",
                    "mesh-gateway",
                    "terminating-gateway",
                )
            },
            "BillableServiceInstances": instances
            - sum(connect.get(k, 0) for k in ("connect-proxy", "mesh-gateway")),
            "Nodes": len(store.nodes),
        }
        return {"Usage": {server.s.datacenter: counts}, "Index": store.index}


def _native(connect: dict[str, Any] | None) -> bool:
    return bool(connect and connect.get("Native"))


def server_views(server: Server) -> list[ServerView]:
    """The Raft peers as the leader sees them: liveness from heartbeats, log index from Raft."""
    raft = server.raft
    if raft is None:
        return []
    status = raft.status()
    leader = raft.leader()
    now = time.monotonic()
    by_rpc = _members_by_rpc(server)
    views = []
    for peer in raft.peers():
        rpc = server.rpc_of(peer)
        st = by_rpc.get(rpc)
        is_self = peer == server.raft_addr
        if is_self:
            index, contact, state = status.get("commit_idx", 0), 0.0, "alive"
        else:
            index = status.get(f"match_idx_server_{peer}", 0)
            contact = now - st.last_seen if st else 0.0
            state = _STATES.get(st.status, "none") if st else "none"
        views.append(
            ServerView(
                id=peer,
                name=st.name if st else (server.s.node_name if is_self else peer),
                address=rpc,
                status=state,
                leader=peer == leader,
                last_contact=contact,
                last_index=int(index),
                stable_since=_stable_since(st.alive_since if st else server.started),
            )
        )
    return views


def _members_by_rpc(server: Server) -> dict[str, NodeState]:
    """Member state per server RPC address: from heartbeats, else (a member adopted from the
    catalog when this leader took office, before it beat) from its node's `consul` service."""
    nodes = server.members.nodes
    out = {st.rpc_addr: st for st in nodes.values() if st.rpc_addr}
    store = server.store
    with store.lock:
        for name, services in store.services.items():
            svc = services.get(CONSUL_SERVICE)
            node = store.nodes.get(name)
            if svc is not None and node is not None and name in nodes:
                out.setdefault(f"{node.Address}:{svc.Port}", nodes[name])
    return out


def _stable_since(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


async def reconcile(server: Server) -> None:
    """One leader round: prune dead servers, re-add alive ones that are not peers."""
    raft = server.raft
    if raft is None or not raft.is_leader:
        return
    config = server.store.autopilot.config
    try:
        by_rpc, now = _members_by_rpc(server), time.monotonic()
        for peer in dead_servers_to_remove(server_views(server), config):
            st = by_rpc.get(server.rpc_of(peer))
            if st is not None and now - st.failed_at < DEAD_SETTLE:
                continue
            log.info("autopilot: removing dead server %s from Raft", peer)
            await raft.remove_peer(peer)
        peers = set(raft.peers())
        for st in list(server.members.nodes.values()):
            if st.role != "consul" or st.status != ALIVE or not st.raft_addr:
                continue
            if st.raft_addr not in peers:
                log.info("autopilot: adding alive server %s (%s) to Raft", st.name, st.raft_addr)
                await raft.add_peer(st.raft_addr)
    except (RaftError, TimeoutError) as e:  # a membership change in flight: next round
        log.warning("autopilot: %s", e)
