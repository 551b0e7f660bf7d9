"""The one narrow interface between the agent's API layers and the catalog.

HTTP and DNS never touch the store or Raft directly: they call a `CatalogBackend`. An agent on a
server uses `LocalBackend` (the in-process server); a client agent on another host uses
`RemoteBackend`, which sends the same commands and queries to the servers over RPC.
"""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from meshd import queries as q
from meshd.rpc import (
    CAConfigRequest,
    Heartbeat,
    Member,
    ReadReply,
    ReadRequest,
    ServerInfo,
    SessionRenew,
    SignReply,
    SignRequest,
    WriteReply,
    WriteRequest,
    decode_value,
)
from meshd.rpc_client import RPCClient, RPCError
from meshd.server.authority import CommandForbiddenError, Origin, check_command
from meshd.server.cluster import Server
from meshd.server.operator import OperatorCall, OperatorRequest
from meshd.server.raft import RaftError
from meshd.server.store import CommandError, StateConflictError
from meshd.structs import Command, Session
from meshd.validate import Limits

# The ACL token of the HTTP request being served (set by the ACL middleware), so that the
# writes a handler makes reach the servers with the caller's token; tasks of the agent itself
# (anti-entropy, checks) run outside any request and use the agent's own token.
caller_token: ContextVar[str | None] = ContextVar("caller_token", default=None)


def _token(explicit: str | None, own: str) -> str:
    if explicit is not None:
        return explicit
    caller = caller_token.get()
    return own if caller is None else caller


@dataclass
class ReadResult:
    index: int
    value: Any
    known_leader: bool = True
    last_contact_ms: int = 0


class CatalogBackend(Protocol):
    token: str  # the agent's own ACL token (acl.tokens.agent), for its background writes

    async def write(self, cmd: Command, token: str | None = None) -> Any:
        """`token`: the caller's ACL token; None = this agent's own (`acl.tokens.agent`)."""

    async def read(
        self, query: q.Query, *, min_index: int = 0, wait: float = 0.0, consistency: str = "default"
    ) -> ReadResult: ...

    async def status(self) -> tuple[str, list[str]]:
        """(leader, peers) as server RPC addresses, as Consul's /v1/status reports them."""
        ...

    async def heartbeat(self, hb: Heartbeat) -> Any:
        """The leader's reply: its node name and coordinate (for the sender's RTT sample)."""
        ...

    async def members(self) -> list[Member]: ...

    async def sign(self, req: SignRequest) -> SignReply: ...

    async def set_ca_config(self, config: dict[str, Any], force_rotate: bool) -> None: ...

    async def renew_session(self, sid: str) -> list[Session]: ...
    async def operator(self, req: OperatorRequest) -> Any:
        """An operator request answered by the leader (server/operator.py)."""
        ...


def blocking_wait(wait: float) -> float:
    """Consul adds up to wait/16 of jitter so that many watchers do not wake in lockstep."""
    return wait + random.uniform(0, wait / 16) if wait > 0 else 0.0


class LocalBackend:
    def __init__(self, server: Server, token: str = "") -> None:
        self.server = server
        self.token = token

    async def write(self, cmd: Command, token: str | None = None) -> Any:
        # the HTTP API's writes are an agent's, whichever host it runs on
        return await self.server.write(cmd, Origin.AGENT, _token(token, self.token))

    async def read(
        self, query: q.Query, *, min_index: int = 0, wait: float = 0.0, consistency: str = "default"
    ) -> ReadResult:
        ans = await self.server.read(
            query, min_index, blocking_wait(wait), consistency, _token(None, self.token)
        )
        return ReadResult(ans.index, ans.value, ans.known_leader, ans.last_contact_ms)

    async def status(self) -> tuple[str, list[str]]:
        raft = self.server.raft
        if raft is None:
            return "", []
        leader = raft.reported_leader()
        return (self.server.rpc_of(leader) if leader else ""), [
            self.server.rpc_of(p) for p in raft.peers()
        ]

    async def heartbeat(self, hb: Heartbeat) -> Any:
        return await self.server.heartbeat(hb)

    async def members(self) -> list[Member]:
        return await self.server.member_list()

    async def sign(self, req: SignRequest) -> SignReply:
        req.Token = req.Token or _token(None, self.token)
        return await self.server.sign(req)

    async def set_ca_config(self, config: dict[str, Any], force_rotate: bool) -> None:
        await self.server.set_ca_config(config, force_rotate, _token(None, self.token))

    async def renew_session(self, sid: str) -> list[Session]:
        return await self.server.renew_session(sid)

    async def operator(self, req: OperatorRequest) -> Any:
        return await self.server.operator(req, _token(None, self.token))


class RemoteBackend:
    """A client agent's view: every call is an RPC to some server (failover inside RPCClient)."""

    def __init__(self, rpc: RPCClient, limits: Limits | None = None, token: str = "") -> None:
        self.rpc = rpc
        self.token = token
        self.limits = limits or Limits()
        self._joined = list(rpc.servers)
        self.current: list[str] = []  # the servers' own RPC addresses, once a server said them

    async def refresh_servers(self) -> None:
        """Learn the current server set, so servers added later are used and failed over to."""
        info = await self.rpc.call("info", b"", ServerInfo)
        current = [rpc for raft, rpc in info.Known if raft in info.Peers]
        self.current = current
        self.rpc.set_servers(current + [s for s in self._joined if s not in current])

    async def write(self, cmd: Command, token: str | None = None) -> Any:
        # the servers' own stateless rules, here first: a bad command fails with its reason
        # instead of as an undecodable RPC body
        cmd = check_command(cmd, self.limits)
        try:
            reply = await self.rpc.call(
                "write",
                WriteRequest(Command=cmd, Token=_token(token, self.token)),
                WriteReply,
            )
        except RPCError as e:
            if e.code == 400:
                raise CommandError(str(e)) from None
            raise RaftError(str(e)) from None
        if reply.Code == 403:
            raise CommandForbiddenError(reply.Error)
        if reply.Code == 400:
            raise CommandError(reply.Error)
        if reply.Code == 500:
            raise StateConflictError(reply.Error)
        if reply.Error:
            raise RaftError(reply.Error)
        return reply.Result

    async def read(
        self, query: q.Query, *, min_index: int = 0, wait: float = 0.0, consistency: str = "default"
    ) -> ReadResult:
        wait = blocking_wait(wait)
        try:
            reply = await self.rpc.call(
                "read",
                ReadRequest(
                    Query=query,
                    MinIndex=min_index,
                    Wait=wait,
                    Consistency=consistency,
                    Token=_token(None, self.token),
                ),
                ReadReply,
                timeout=wait + 10.0,
                blocking=min_index > 0,
            )
        except RPCError as e:
            if e.code == 403:  # the servers' ACL check on ACL state (server/acl_reads.py)
                raise CommandForbiddenError(str(e)) from None
            raise RaftError(str(e)) from None
        return ReadResult(
            reply.Index, decode_value(query, reply.Value), reply.KnownLeader, reply.LastContact
        )

    async def status(self) -> tuple[str, list[str]]:
        info = await self.rpc.call("info", b"", ServerInfo)
        rpc = dict((raft, addr) for raft, addr in info.Known)
        return rpc.get(info.Leader, info.Leader), [rpc.get(p, p) for p in info.Peers]

    async def heartbeat(self, hb: Heartbeat) -> Any:
        return await self.rpc.call("heartbeat", hb, Any, timeout=3.0)

    async def members(self) -> list[Member]:
        return await self.rpc.call("members", b"", list[Member])

    async def sign(self, req: SignRequest) -> SignReply:
        req.Token = req.Token or _token(None, self.token)
        try:
            return await self.rpc.call("sign", req, SignReply)
        except RPCError as e:
            if e.code == 400:
                raise CommandError(str(e)) from None
            if e.code == 403:
                raise CommandForbiddenError(str(e)) from None
            raise RaftError(str(e)) from None

    async def set_ca_config(self, config: dict[str, Any], force_rotate: bool) -> None:
        req = CAConfigRequest(
            Config=config, ForceRotate=force_rotate, Token=_token(None, self.token)
        )
        try:
            await self.rpc.call("caconfig", req, bool)
        except RPCError as e:
            if e.code == 403:
                raise CommandForbiddenError(str(e)) from None
            raise

    async def renew_session(self, sid: str) -> list[Session]:
        try:
            return await self.rpc.call("session_renew", SessionRenew(ID=sid), list[Session])
        except RPCError as e:
            raise RaftError(str(e)) from None

    async def operator(self, req: OperatorRequest) -> Any:
        try:
            call = OperatorCall(Request=req, Token=_token(None, self.token))
            return await self.rpc.call("operator", call, Any, timeout=15.0)
        except RPCError as e:
            if e.code == 400:
                raise CommandError(str(e)) from None
            if e.code == 403:
                raise CommandForbiddenError(str(e)) from None
            raise RaftError(str(e)) from None
