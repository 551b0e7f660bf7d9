"""A server: the store behind Raft, cluster formation, forwarding, and the leader's loops.

Formation (Consul's `bootstrap_expect`) is in server/formation.py, the leader's loop in
server/leader_loop.py; both run on the `Server` defined here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from meshd import keyring
from meshd import queries as q
from meshd.acl import PermissionDeniedError
from meshd.acl.auth_model import ACLLogin, ACLLogout
from meshd.acl.settings import ACLConfig
from meshd.rpc import (
    CAConfigRequest,
    Heartbeat,
    Member,
    PeerChange,
    ReadReply,
    ReadRequest,
    ServerInfo,
    SessionRenew,
    SignReply,
    SignRequest,
    decode_value,
)
from meshd.rpc_client import RPCClient, RPCError
from meshd.server import acl_login, connect_ca, formation, operator
from meshd.server.acl_authz import (
    TokenNotFoundError,
    authorize,
    authorize_node_changes,
    authorize_query_owner,
    authorize_sign,
    server_authorizer,
)
from meshd.server.acl_expiry import TokenReaper
from meshd.server.acl_reads import guard_operator, guard_read, redact
from meshd.server.authority import CommandForbiddenError, Origin, admit, check_command
from meshd.server.formation import rpc_for
from meshd.server.leader_loop import leader_loop
from meshd.server.liveness import Liveness
from meshd.server.operator import OperatorCall, OperatorRequest
from meshd.server.raft import RaftError, RaftNode
from meshd.server.reads import blocking_query
from meshd.server.reaper import CriticalReaper
from meshd.server.server_metrics import ServerMetrics
from meshd.server.sessions import SessionTimers, lock_delayed
from meshd.server.store import CommandError, Store
from meshd.server.tombstones import DEFAULT_TTL, TombstoneGC
from meshd.structs import (
    Barrier,
    Command,
    KVOp,
    PreparedQueryOp,
    Restore,
    Session,
)
from meshd.validate import Limits

log = logging.getLogger("meshd.server")


@dataclass
class ServerSettings:
    node_name: str
    datacenter: str
    advertise: str  # address other servers and agents reach this one at
    rpc_port: int
    raft_port: int
    data_dir: str | None
    key: bytes | None
    password: str | None
    bootstrap_expect: int = 1
    retry_join: list[str] = field(default_factory=list)
    retry_interval: float = 1.0
    failure_timeout: float = 5.0
    reap_after: float = 72 * 3600.0
    ssl_client: ssl.SSLContext | None = None
    bind: str | None = None  # Raft listen host when it differs from `advertise`
    server_name: str | None = None  # TLS name servers present to each other
    fsync: bool = True
    snapshot_every: tuple[int, float] = (20000, 600.0)  # journal entries, seconds
    limits: Limits = field(default_factory=Limits)
    acl: ACLConfig = field(default_factory=ACLConfig)
    keyring: list[str] = field(default_factory=list)  # cluster keys, primary first (encrypt)
    tombstone_ttl: float = DEFAULT_TTL  # deleted KV keys are forgotten after this


@dataclass
class ReadAnswer:
    index: int
    value: Any
    known_leader: bool
    last_contact_ms: int


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.s = settings
        self.store = Store()
        self.raft: RaftNode | None = None
        self.raft_addr = f"{settings.advertise}:{settings.raft_port}"
        self.rpc_addr = f"{settings.advertise}:{settings.rpc_port}"
        self.known: dict[str, str] = {self.raft_addr: self.rpc_addr}  # raft -> rpc
        self.liveness = Liveness(self)
        self.members = self.liveness.members  # the timers of the nodes attached here
        self.rpc = RPCClient(
            settings.retry_join,
            settings.key,
            default_port=settings.rpc_port,
            ssl_context=settings.ssl_client,
            server_name=settings.server_name,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._was_leader = False
        self.metrics = ServerMetrics()
        self._last_peers: list[str] = []
        self.reaper = CriticalReaper()
        self.session_timers = SessionTimers()
        self.tombstone_gc = TombstoneGC(settings.tombstone_ttl)
        self.token_reaper = TokenReaper()
        self.started = time.time()
        self.keys: list[str] = list(settings.keyring)  # the ring this server uses now
        self._stopping = asyncio.Event()

    # ---- formation ----------------------------------------------------------------------

    def save_peers(self) -> None:
        formation.save_peers(self)

    def rpc_keys(self) -> list[bytes]:
        """The keys an RPC request may be signed with (none: the cluster has no key)."""
        if not self.keys:
            return [self.s.key] if self.s.key else []
        return [keyring.hmac_key(k) for k in self.keys]

    async def start(self) -> None:
        stored = formation.load_peers(self)
        if stored:
            self.known.update(stored)
            formation.start_raft(self, list(stored))
        elif self.s.bootstrap_expect <= 1 and not self.s.retry_join:
            formation.start_raft(self, [self.raft_addr])
        else:
            self._tasks.append(asyncio.create_task(formation.form(self), name="raft-formation"))
        self._tasks.append(asyncio.create_task(leader_loop(self), name="leader-loop"))
        self._tasks.append(asyncio.create_task(self.liveness.run(), name="liveness"))

    def info(self) -> ServerInfo:
        return ServerInfo(
            RaftAddr=self.raft_addr,
            RPCAddr=self.rpc_addr,
            Started=self.raft is not None,
            Peers=self.raft.peers() if self.raft else [],
            Known=[[r, p] for r, p in self.known.items()],
            Leader=self.raft.reported_leader() if self.raft else "",
            Datacenter=self.s.datacenter,
        )

    # ---- reads and writes ---------------------------------------------------------------

    def _raft(self) -> RaftNode:
        if self.raft is None:
            raise RaftError("No cluster leader (the cluster has not bootstrapped yet)")
        return self.raft

    def rpc_of(self, raft_addr: str) -> str:
        """A server's RPC address, the one Consul's status and operator endpoints report."""
        return self.known.get(raft_addr) or rpc_for(raft_addr, self.s.rpc_port)

    def raft_of(self, addr: str) -> str:
        """The Raft address of a server named by its RPC (or Raft) address."""
        for raft, rpc in self.known.items():
            if addr in (raft, rpc):
                return raft
        host = addr.rsplit(":", 1)[0]
        same_host = [
            p for p in (self.raft.peers() if self.raft else []) if p.startswith(host + ":")
        ]
        return same_host[0] if len(same_host) == 1 else addr

    def leader_rpc(self) -> str:
        leader = self._raft().leader()
        if not leader:
            raise RaftError("No cluster leader")
        return self.known.get(leader, rpc_for(leader, self.s.rpc_port))

    async def write(
        self,
        cmd: Command,
        origin: Origin = Origin.SERVER,
        token: str | None = None,
        *,
        decoded: bool = False,
    ) -> Any:
        """Propose `cmd` once it passes `admit`: the servers decide what enters the state.

        `origin` is AGENT for anything an agent asked for (RPC and the HTTP API of an agent on
        this server); a server's own decisions (CA, liveness, restore) come as SERVER.
        `decoded`: `cmd` came from an RPC body, already checked against its types.
        """
        raft = self._raft()
        started = time.perf_counter()
        if isinstance(cmd, (ACLLogin, ACLLogout)):  # authorised by the bearer token instead
            cmd = await acl_login.exchange(
                check_command(cmd, self.s.limits),
                token or "",
                self.store.acl,
                self.store.lock,
                self.s.datacenter,
            )
        elif origin is Origin.AGENT and self.s.acl.enabled:
            self._authorize(cmd, token or "")
        cmd = admit(cmd, origin, self.store, self.s.limits, decoded=decoded)
        if isinstance(cmd, KVOp) and cmd.Verb == "lock" and lock_delayed(self.store, cmd.Key):
            return False  # Consul refuses before the log: lock-delay is this server's clock
        proposed = time.perf_counter()
        result = await raft.apply(cmd)
        self.metrics.written(cmd, started, proposed)
        return result

    def _authorize(self, cmd: Command, token: str) -> None:
        """The caller's token against the command's permission row (server/acl_authz.py)."""
        try:
            with self.store.lock:
                authz = server_authorizer(self.s.acl, self.store.acl, token)
                if isinstance(cmd, PreparedQueryOp):
                    authorize_query_owner(cmd, self.store.prepared_queries.queries, authz)
                authorize_node_changes(cmd, self.store.nodes, authz)
            authorize(cmd, authz)
        except (PermissionDeniedError, TokenNotFoundError) as e:
            raise CommandForbiddenError(str(e)) from None

    async def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot: an operator's request, served by a server agent
        itself (never over /rpc/write), after the snapshot has been loaded on a scratch store."""
        await self.write(Restore(Data=data))

    async def read(
        self,
        query: q.Query,
        min_index: int,
        wait: float,
        consistency: str,
        token: str | None = None,
    ) -> ReadAnswer:
        """`token`: an agent's (RPC, or the HTTP API of an agent on this server), checked
        against `server/acl_reads.py`; None for this server's own reads."""
        raft = self._raft()
        authz = guard_read(self.s.acl, self.store, query, token)
        if consistency != "stale" and not raft.is_leader:
            reply = await self._forward_read(
                ReadRequest(
                    Query=query,
                    MinIndex=min_index,
                    Wait=wait,
                    Consistency=consistency,
                    Token=token or "",
                )
            )
            value = decode_value(query, reply.Value)
            answer = ReadAnswer(reply.Index, value, reply.KnownLeader, reply.LastContact)
        else:
            if consistency == "consistent":
                await raft.apply(Barrier())  # a quorum round: we are still the leader
            loop = asyncio.get_running_loop()
            index, value = await blocking_query(
                self.store, query, min_index if wait > 0 else 0, loop.time() + wait
            )
            answer = ReadAnswer(index, value, bool(raft.leader()), raft.last_contact_ms())
        if authz is not None:
            answer.value = redact(query, answer.value, authz, token or "")
        return answer

    async def _forward_read(self, req: ReadRequest) -> ReadReply:
        call = self.rpc.call(
            "read", req, ReadReply, addr=self.leader_rpc(), timeout=req.Wait * 1.1 + 10
        )
        if req.Wait <= 0:
            return await call
        # a blocking query waits at the leader for minutes: it must not hold up this server's
        # shutdown, and the agent that asked retries on another server
        read = asyncio.ensure_future(call)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not read.done():
                read.cancel()
        if not read.done() or read.cancelled():
            raise RaftError("server shutting down")
        return read.result()

    def end_blocking_queries(self) -> None:
        """Shutdown, once the RPC and HTTP listeners are closed: blocking queries answer now
        (Consul's servers do the same) instead of keeping the process alive for their wait."""
        self._stopping.set()
        self.store.watches.close()

    async def change_peer(self, change: PeerChange) -> bool:
        raft = self._raft()
        if not raft.is_leader:
            return await self.rpc.call("peer", change, bool, addr=self.leader_rpc())
        if change.Remove:
            await raft.remove_peer(change.RaftAddr)
        else:
            await raft.add_peer(change.RaftAddr)
        return True

    # ---- operator requests (force-leave, leadership, autopilot, usage) ------------------

    async def operator(self, req: OperatorRequest, token: str | None = None) -> Any:
        """Answered by the leader, which holds the liveness timers and follower positions."""
        guard_operator(self.s.acl, self.store, token, req)
        if not self._raft().is_leader:
            try:
                call = OperatorCall(Request=req, Token=token or "")
                return await self.rpc.call(
                    "operator", call, Any, addr=self.leader_rpc(), timeout=15.0
                )
            except RPCError as e:  # the leader's refusal keeps its reason and its status
                if e.code == 400:
                    raise CommandError(str(e)) from None
                if e.code == 403:
                    raise CommandForbiddenError(str(e)) from None
                raise RaftError(str(e)) from None
        return await operator.handle(self, req)

    # ---- mesh CA ------------------------------------------------------------------------

    async def sign(self, req: SignRequest) -> SignReply:
        self._raft()
        if self.s.acl.enabled:
            try:
                with self.store.lock:
                    authz = server_authorizer(self.s.acl, self.store.acl, req.Token)
                    running = {node for node, _ in self.store.by_name.get(req.Service, ())}
                authorize_sign(req.Service, running, authz)
            except (PermissionDeniedError, TokenNotFoundError) as e:
                raise CommandForbiddenError(str(e)) from None
        if not self.store.mesh.roots:
            if not self.raft or not self.raft.is_leader:
                return await self.rpc.call("sign", req, SignReply, addr=self.leader_rpc())
            await connect_ca.ensure_ca(self)
        return await connect_ca.sign(self, req)

    async def set_ca_config(
        self, config: dict[str, Any], force_rotate: bool, token: str | None = None
    ) -> None:
        """`token`: an agent's, which needs operator:write (Consul's CA configuration)."""
        guard_operator(self.s.acl, self.store, token, "operator")
        if not self._raft().is_leader:
            await self.rpc.call(
                "caconfig",
                CAConfigRequest(Config=config, ForceRotate=force_rotate, Token=token or ""),
                bool,
                addr=self.leader_rpc(),
            )
            return
        await connect_ca.set_config(self, config, force_rotate)

    # ---- liveness -----------------------------------------------------------------------

    async def heartbeat(self, hb: Heartbeat) -> Any:
        """A heartbeat by request. A client's stays on this server, which keeps its timer; a
        server's goes to the leader, so that a server is judged by another one."""
        raft = self._raft()
        if hb.Node == self.s.node_name:
            self.liveness.own_coord = hb.Coord
        if hb.Role == "consul" and hb.RaftAddr:
            self.known[hb.RaftAddr] = hb.RPCAddr
        if hb.Role == "consul" and not raft.is_leader:
            return await self._forward_heartbeat(raft, hb)
        reply = self.liveness.beat(hb)
        if hb.Leaving:
            await self.liveness.report_now()
        return reply

    async def _forward_heartbeat(self, raft: RaftNode, hb: Heartbeat) -> Any:
        """To the leader; with no leader known, through any other server. A server that
        autopilot removed from Raft while it was down knows no leader when it comes back, and
        its heartbeat reaching the leader is what gets it added again."""
        if raft.leader():
            return await self.rpc.call("heartbeat", hb, Any, addr=self.leader_rpc(), timeout=3.0)
        others = [rpc for raft_addr, rpc in self.known.items() if raft_addr != self.raft_addr]
        if hb.Node != self.s.node_name or not others:
            raise RaftError("No cluster leader")
        errors = []
        for addr in others:
            try:
                return await self.rpc.call("heartbeat", hb, Any, addr=addr, timeout=3.0)
            except RPCError as e:
                errors.append(str(e))
        raise RaftError(f"No cluster leader ({'; '.join(errors)})")

    async def renew_session(self, sid: str) -> list[Session]:
        """TTL timers live on the leader, so a renewal goes there; [] for an unknown session."""
        raft = self._raft()
        if not raft.is_leader:
            return await self.rpc.call(
                "session_renew", SessionRenew(ID=sid), list[Session], addr=self.leader_rpc()
            )
        s = self.session_timers.renew(self.store, sid)
        return [s] if s is not None else []

    async def member_list(self) -> list[Member]:
        raft = self._raft()
        if not raft.is_leader:
            return await self.rpc.call("members", b"", list[Member], addr=self.leader_rpc())
        for _ in range(20):  # just elected: the liveness loop sets up its view within a tick
            if self.liveness.view is not None or not raft.is_leader:
                break
            await asyncio.sleep(0.05)
        return self.liveness.view_or_fail().members(self.s.datacenter)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.rpc.close()
        if self.raft:
            self.raft.close()
