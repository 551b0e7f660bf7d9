"""The leader's loop: what a server does every half second while it leads.

On becoming leader it resets the timers only the leader keeps and sets up ACLs and the CA; every
round it reconciles autopilot and writes the reapers' and timers' verdicts (coordinates in
batches), each command through `Server.write` like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from meshd.rpc_client import RPCError
from meshd.server import acl_init, connect_ca, formation, operator
from meshd.server import keyring as server_keyring
from meshd.server.ca import CAError
from meshd.server.raft import RaftError
from meshd.server.store import CommandError
from meshd.structs import Command, CoordinateBatch

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.server")
COORDINATE_BATCH_ROUNDS = 10  # leader rounds (0.5 s each) between coordinate writes: 5 s


async def leader_loop(server: Server) -> None:
    rounds = 0
    while True:
        await asyncio.sleep(0.5)
        raft = server.raft
        if raft is None:
            continue
        try:
            await server_keyring.sync(server)
            formation.peers_changed(server, raft)
            if not raft.is_leader:
                server._was_leader = False
                continue
            if not server._was_leader:
                server._was_leader = True
                server.metrics.became_leader += 1
                server.reaper.reset()
                server.session_timers.reset()
                server.tombstone_gc.reset()
                # ACLs first: clients read the stored tokens as soon as there is a leader,
                # while the CA's first root can take a moment to generate
                await acl_init.initialize(server)
                await connect_ca.ensure_ca(server)
            await operator.reconcile(server)
            ops: list[Command] = []
            rounds += 1
            view = server.liveness.view
            if (
                rounds % COORDINATE_BATCH_ROUNDS == 0
                and view
                and (coords := view.take_coordinates())
            ):
                ops.append(CoordinateBatch(Updates=coords))
            ops += server.reaper.tick(server.store, time.monotonic())
            ops += server.session_timers.tick(server.store)
            ops += server.tombstone_gc.tick(server.store, time.monotonic())
            ops += server.token_reaper.tick(server.store.acl, time.time())
            for op in ops:
                try:
                    await server.write(op)
                except CommandError as e:  # one refused verdict must not stop the loop
                    log.warning("leader loop: %s refused: %s", type(op).__name__, e)
        except (RaftError, RPCError, CAError) as e:
            log.warning("leader loop: %s", e)
