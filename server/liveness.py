"""Liveness on every server: the heartbeat socket, the report to the leader, the leader's batches.

Each server takes heartbeats from the agents attached to it (their WebSocket, or the older
`/rpc/heartbeat` request), keeps their timers (`Membership`) and every `REPORT_EVERY` sends the
leader what changed. The leader merges the reports (`LeaderView`) and writes the verdicts that
differ from the store as one `NodeStatusBatch` per `WINDOW`. A report's reply waits for that
commit, so a server that hears no reply sends a full report again: nothing is lost to a leader
change, and a full report costs no writes for nodes whose state the store already has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSMsgType, web

from meshd import keyring, validate, validate_fields
from meshd.liveness import (
    MAX_FRAME,
    REPORT_METHOD,
    FrameError,
    LivenessReply,
    LivenessReport,
    conn_id,
    open_frame,
    seal_frame,
)
from meshd.rpc import AUTH_HEADER, Heartbeat, encoder
from meshd.rpc_client import RPCError
from meshd.server.authority import CommandForbiddenError
from meshd.server.liveness_view import LeaderView
from meshd.server.members import Membership
from meshd.server.raft import RaftError
from meshd.server.store import CommandError, Store
from meshd.structs import CONSUL_SERVICE, SERF_CHECK_ID, NodeStatus, NodeStatusBatch

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.liveness")
TICK = 0.05  # how often the batch window is checked
WINDOW = 0.15  # transitions arriving within this much of the first go in one Raft entry
REPORT_EVERY = 0.2  # how often a server judges its nodes and reports what changed
KEEPALIVE = 1.0  # a server with nothing to say still reports this often (the leader's clock)
MAX_BATCH = 2000  # nodes per Raft entry: 10,000 nodes starting at once make 5 entries, not one


class Liveness:
    """One per server: its agents' timers, its reports, and, while it leads, the view and the
    batches. Runs on the server's event loop; the store is only read here, under its lock."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.members = Membership(server.s.failure_timeout, server.s.reap_after)
        self.view: LeaderView | None = None
        self.own_coord: dict[str, Any] | None = None  # this server's node, from its agent
        self._full = True  # the next report is a full one
        self._reported_to = ""  # the leader our last report reached
        self._last_report = 0.0
        self._sending: asyncio.Task[None] | None = None
        self._sending_to = ""
        self._window_start = 0.0
        self._waiters: list[asyncio.Future[None]] = []
        self._sockets: set[web.WebSocketResponse] = set()

    # ---- heartbeats -------------------------------------------------------------------

    def beat(self, hb: Heartbeat) -> dict[str, Any]:
        """Record a heartbeat from an agent attached here; the reply the agent learns from."""
        try:  # the leader turns these into NodeStatus commands: the same rules apply
            validate.name(hb.Node, "Node")
            validate_fields.address(hb.Address, "Address")
        except validate.ValidationError as e:
            raise CommandError(f"heartbeat refused: {e}") from None
        raft = self.server._raft()
        self.members.heartbeat(hb)  # an election must not cost the node its timer here
        if not raft.is_leader and raft.last_contact_ms() > self.members.failure_timeout * 1000:
            # cut off from the leader for longer than an election: our verdicts cannot reach
            # it, so the agent must move (the leader gives it a grace period to turn up)
            raise RaftError("this server has lost contact with the cluster leader")
        reply: dict[str, Any] = {
            "Node": self.server.s.node_name,
            "Coord": self.own_coord,
            "Self": hb.Node == self.server.s.node_name,
        }
        ring = self.server.store.keyring
        if ring.keys and hb.KeyringVersion != ring.version and hb.Role != "consul":
            # a client that has not seen this rotation (servers take it from Raft)
            reply["Keyring"] = {"Version": ring.version, "Sealed": keyring.seal(ring.keys)}
        return reply

    async def report_now(self) -> None:
        """A leave is answered once the leader knows it: whoever lists the members right after
        the agent stopped sees it left, as when heartbeats went to the leader itself."""
        raft = self.server.raft
        if raft is None:
            return
        now = time.monotonic()
        if raft.is_leader and self.view is not None:
            self._receive(self._report(now), now)
            return
        for _ in range(2):  # one report may be in flight already, without this change
            before = self._sending
            self._maybe_send(now, force=True)
            sending = self._sending
            if sending is not None and not sending.done():
                await _await_quietly(sending)
            if sending is not before:
                return

    async def serve_socket(self, request: web.Request) -> web.WebSocketResponse:
        """`GET /rpc/liveness`: one agent's heartbeats, a frame each, on one connection (the
        upgrade request passed the RPC authentication like any other request)."""
        conn = conn_id(request.headers.get(AUTH_HEADER, ""))
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._serve_frames(ws, conn)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _serve_frames(self, ws: web.WebSocketResponse, conn: str) -> None:
        last = 0
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                break
            keys = self.server.rpc_keys()
            try:
                last, body, key = open_frame(keys, conn, last, msg.data)
                hb = msgspec.msgpack.decode(body, type=Heartbeat)
            except (FrameError, msgspec.DecodeError) as e:
                await ws.close(code=1008, message=str(e)[:120].encode())
                break
            try:
                reply: dict[str, Any] = self.beat(hb)
                if hb.Leaving:
                    await self.report_now()
            except (CommandError, RaftError) as e:
                reply = {"Error": str(e)}
            await ws.send_bytes(seal_frame(key, conn, last, encoder.encode(reply)))

    async def close_sockets(self, app: web.Application | None = None) -> None:
        """On shutdown: "going away", so agents move to another server at once instead of the
        listener waiting out its grace period for connections that never end."""
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")

    # ---- the loop: judge, report, and (on the leader) batch ---------------------------

    async def run(self) -> None:
        next_report = 0.0
        while True:
            await asyncio.sleep(TICK)
            raft = self.server.raft
            if raft is None:
                continue
            now = time.monotonic()
            try:
                if not raft.is_leader:
                    self._step_down()
                    if now >= next_report:
                        next_report = now + REPORT_EVERY
                        self.members.tick(now)
                        self._maybe_send(now)
                    continue
                if self.view is None:
                    self._take_office(now)
                if now >= next_report:
                    next_report = now + REPORT_EVERY
                    self.members.tick(now)
                    self._receive(self._report(now), now)
                    self.view_or_fail().tick(now)
                    self.forget_own()
                await self._flush_if_due(now)
            except (RaftError, RPCError, CommandError) as e:
                log.warning("liveness: %s", e)
            except Exception:  # a bug must not stop every verdict of this server for good
                log.exception("liveness loop")

    def view_or_fail(self) -> LeaderView:
        if self.view is None:
            raise RaftError("not the leader")
        return self.view

    def _take_office(self, now: float) -> None:
        store = self.server.store
        with store.lock:  # agents only: catalog-registered nodes never beat
            catalog = [
                (
                    n.Node,
                    n.Address,
                    checks[SERF_CHECK_ID].Status == "passing",
                    svc.Port if (svc := store.services.get(n.Node, {}).get(CONSUL_SERVICE)) else 0,
                )
                for n in store.nodes.values()
                if SERF_CHECK_ID in (checks := store.checks.get(n.Node, {}))
            ]
        s = self.server.s
        self.view = LeaderView(s.node_name, s.failure_timeout, s.reap_after)
        self.view.take_office(catalog, now)
        for name, addr, passing, port in catalog:  # autopilot judges servers by our timers
            if port:
                self.members.adopt_server(name, f"{addr}:{port}", passing, now)
        self._full = True
        log.info("liveness: took office with %d nodes in the catalog", len(catalog))

    def _step_down(self) -> None:
        if self.view is None:
            return
        self.view = None
        self.members.drop_role("consul")  # servers' agents beat to the leader
        self._settle(self._take_waiters(), RaftError("leadership lost"))
        self._full = True

    def _report(self, now: float) -> LivenessReport:
        full, self._full = self._full, False
        return LivenessReport(
            Server=self.server.s.node_name,
            RaftAddr=self.server.raft_addr,
            Full=full,
            Members=self.members.changes(now, full),
            Coords=self.members.pending_coordinates(),
        )

    def _receive(self, report: LivenessReport, now: float) -> LivenessReply:
        reply = self.view_or_fail().receive(report, now)
        if report.Server == self.server.s.node_name:
            self._full = self._full or reply.NeedFull
        self.forget_own()
        return reply

    def forget_own(self) -> None:
        if self.view is not None:
            for name in self.view.forget.pop(self.server.s.node_name, ()):
                self.members.forget(name)

    def _maybe_send(self, now: float, force: bool = False) -> None:
        try:
            leader = self.server.leader_rpc()
        except RaftError:
            return
        if self._sending is not None and not self._sending.done():
            if leader == self._sending_to:
                return
            self._sending.cancel()  # to a leader that is gone: the new one must hear from us now
            self._full = True
        if leader != self._reported_to:
            self._full = True
        quiet = now - self._last_report < KEEPALIVE
        if not (self._full or force) and quiet and not self.members.has_changes():
            return
        report = self._report(now)
        self._last_report = now
        self._sending_to = leader
        self._sending = asyncio.create_task(self._send(leader, report), name="liveness-report")

    async def _send(self, leader: str, report: LivenessReport) -> None:
        try:
            reply = await self.server.rpc.call(
                REPORT_METHOD, report, LivenessReply, addr=leader, timeout=5.0
            )
        except asyncio.CancelledError:  # the leader changed: the next report is a full one
            self.members.unreport(report.Members)
            raise
        except RPCError as e:
            log.debug("liveness report to %s: %s", leader, e)
            self._full, self._reported_to = True, ""
            self.members.unreport(report.Members)
            return
        self._reported_to = leader
        self._full = self._full or reply.NeedFull
        for name in reply.Forget:
            self.members.forget(name)

    # ---- the leader's side of a report ------------------------------------------------

    async def on_report(self, report: LivenessReport) -> LivenessReply:
        """A server's report, on the leader: accepted from Raft peers only; answered once the
        changes it brought are committed."""
        raft = self.server._raft()
        if not raft.is_leader or self.view is None:
            raise RaftError("not the leader")
        if report.RaftAddr not in raft.peers():
            raise CommandForbiddenError("liveness reports are taken from Raft peers only")
        try:
            for s in report.Members:
                validate.name(s.Node, "Node")
                if s.Address:
                    validate_fields.address(s.Address, "Address")
        except validate.ValidationError as e:
            raise CommandError(f"liveness report refused: {e}") from None
        reply = self._receive(report, time.monotonic())
        if self.view.pending:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        return reply

    async def _flush_if_due(self, now: float) -> None:
        view = self.view
        if view is None or not view.pending:
            self._window_start = 0.0
            # nothing (more) to write for them: what they brought is in the store
            self._settle(self._take_waiters(), None)
            return
        if not self._window_start:
            self._window_start = now
        if now - self._window_start < WINDOW:
            return
        self._window_start = 0.0
        updates, gone = view.take_batch()
        waiters = self._take_waiters()
        store = self.server.store
        with store.lock:
            updates = [u for u in updates if status_differs(store, u) and _valid(u)]
            gone = [n for n in gone if n in store.nodes]
        try:
            for i in range(0, max(len(updates), len(gone)), MAX_BATCH):
                batch = NodeStatusBatch(
                    Updates=updates[i : i + MAX_BATCH], Deregisters=gone[i : i + MAX_BATCH]
                )
                await self.server.write(batch)
        except (RaftError, CommandError) as e:
            view.full_from.clear()  # everyone sends everything again: nothing is lost
            self._settle(waiters, RaftError(f"liveness batch not committed: {e}"))
            raise
        self._settle(waiters, None)

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], err: Exception | None) -> None:
        for w in waiters:
            if w.done():
                continue
            if err is None:
                w.set_result(None)
            else:
                w.set_exception(err)


async def _await_quietly(task: asyncio.Task[None], timeout: float = 5.0) -> None:
    """Wait for a report without owning it: its failure is its own (it marks the next report
    full), and only our own cancellation propagates."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    except Exception as e:  # TimeoutError, or a bug in the report, logged by it
        log.debug("liveness: waiting for a report: %r", e)


def _valid(op: NodeStatus) -> bool:
    """One node the rules refuse is left out: it must not keep the whole batch out of Raft."""
    try:
        validate.validate(op)
    except validate.ValidationError as e:
        log.warning("liveness: not writing %s: %s", op.Node, e)
        return False
    return True


def status_differs(store: Store, op: NodeStatus) -> bool:
    """Whether writing `op` would change the store: a new leader, or a full report, costs no
    Raft entry for a node whose `serfHealth` (and `consul` service) already say the same."""
    if op.Node not in store.nodes:
        return True
    check = store.checks.get(op.Node, {}).get(SERF_CHECK_ID)
    if check is None or check.Status != op.Status:
        return True
    if op.ServerPort:
        svc = store.services.get(op.Node, {}).get(CONSUL_SERVICE)
        return svc is None or svc.Port != op.ServerPort
    return False
