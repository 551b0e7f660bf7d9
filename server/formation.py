"""Cluster formation: the peers file, Consul's `bootstrap_expect`, and joining a running cluster.

A fresh server learns its peers through `retry_join` (transitively: each server tells what
servers it knows) and starts Raft only once it knows `bootstrap_expect` servers, all with the same
peer set. A server whose data dir holds a peer list restarts with it; a server that reaches an
already running cluster asks its leader to add it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING

from meshd.fsutil import atomic_write_json, private_dirs
from meshd.rpc import PeerChange, ServerInfo
from meshd.rpc_client import RPCError, normalize_addr
from meshd.server.raft import RaftError, RaftNode, RaftSettings

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.server")


def peers_file(server: Server) -> str | None:
    return os.path.join(server.s.data_dir, "raft", "peers.json") if server.s.data_dir else None


def load_peers(server: Server) -> dict[str, str] | None:
    path = peers_file(server)
    if path and os.path.exists(path):
        with open(path) as f:
            return dict(json.load(f))
    return None


def save_peers(server: Server) -> None:
    path = peers_file(server)
    if not path or server.raft is None:
        return
    peers = {p: server.known.get(p, rpc_for(p, server.s.rpc_port)) for p in server.raft.peers()}
    private_dirs(os.path.dirname(path))
    atomic_write_json(path, peers)


def start_raft(server: Server, peers: list[str]) -> None:
    others = sorted(p for p in peers if p != server.raft_addr)
    log.info("starting raft at %s with peers %s", server.raft_addr, others)
    server.raft = RaftNode(
        server.store,
        RaftSettings(
            self_addr=server.raft_addr,
            peers=others,
            data_dir=server.s.data_dir,
            password=server.s.password,
            bind=f"{server.s.bind or server.s.advertise}:{server.s.raft_port}",
            fsync=server.s.fsync,
            snapshot_every=server.s.snapshot_every,
        ),
    )
    if len(server.keys) > 1:  # restarted mid-rotation: accept every key from the start
        server.raft.set_passwords(server.keys)
    save_peers(server)


async def form(server: Server) -> None:
    delay = 0.2
    while server.raft is None:
        for addr in list(server.s.retry_join) + list(server.known.values()):
            addr = normalize_addr(addr, server.s.rpc_port)
            if addr == server.rpc_addr:
                continue
            try:
                info = await server.rpc.call("info", b"", ServerInfo, timeout=2.0, addr=addr)
            except RPCError as e:
                log.debug("retry-join %s: %s", addr, e)
                continue
            server.known[info.RaftAddr] = info.RPCAddr
            for raft, rpc in info.Known:
                server.known.setdefault(raft, rpc)
            if info.Started and server.raft is None:
                if server.raft_addr in info.Peers:
                    # it bootstrapped with us in its peer set: start with the same set
                    start_raft(server, list(info.Peers))
                    return
                try:
                    await join_running(server, info)
                    return
                except (RPCError, RaftError) as e:
                    log.info("joining the running cluster via %s: %s", addr, e)
                    continue
        if len(server.known) >= server.s.bootstrap_expect:
            start_raft(server, list(server.known))
            return
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, server.s.retry_interval)


async def join_running(server: Server, info: ServerInfo) -> None:
    """Ask the running cluster to add us, then start Raft with its members as peers."""
    for raft, rpc in info.Known:
        server.known[raft] = rpc
    await server.rpc.call(
        "peer", PeerChange(RaftAddr=server.raft_addr), bool, addr=info.RPCAddr, timeout=10.0
    )
    start_raft(server, [*list(info.Peers), server.raft_addr])


def peers_changed(server: Server, raft: RaftNode) -> None:
    peers = raft.peers()
    if peers != server._last_peers:
        server._last_peers = peers
        save_peers(server)


def rpc_for(raft_addr: str, rpc_port: int) -> str:
    host = raft_addr.rsplit(":", 1)[0]
    return f"{host}:{rpc_port}"
