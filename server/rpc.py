"""The servers' RPC endpoint (see meshd/rpc.py for the contract)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from meshd.liveness import LIVENESS_PATH, REPORT_METHOD, LivenessReport
from meshd.rpc import (
    AUTH_HEADER,
    CAConfigRequest,
    Heartbeat,
    PeerChange,
    ReadReply,
    ReadRequest,
    ReplayError,
    ReplayGuard,
    SessionRenew,
    SignRequest,
    WriteReply,
    WriteRequest,
    encoder,
    plausible,
    verify_any,
)
from meshd.rpc_client import RPCError
from meshd.server.authority import CommandForbiddenError, Origin
from meshd.server.ca import CAError
from meshd.server.cluster import Server
from meshd.server.operator import OperatorCall
from meshd.server.raft import RaftError
from meshd.server.store import CommandError, StateConflictError
from meshd.server.telemetry import add_rpc_routes as add_telemetry_routes

MAX_RPC_BODY = 8 * 1024 * 1024


def _reply(obj: Any) -> web.Response:
    return web.Response(body=encoder.encode(obj), content_type="application/msgpack")


def make_rpc_app(server: Server) -> web.Application:
    replays = ReplayGuard()

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # refuse before reading: a body is only buffered for a caller whose header could verify
        header = request.headers.get(AUTH_HEADER)
        if server.rpc_keys() and not plausible(header):
            return web.Response(status=403, text="RPC refused: missing or wrong cluster key\n")
        if (request.content_length or 0) > MAX_RPC_BODY:
            return web.Response(status=413, text=f"RPC body over {MAX_RPC_BODY} bytes\n")
        body = await request.read()
        if not verify_any(server.rpc_keys(), request.path, body, header):
            return web.Response(status=403, text="RPC refused: missing or wrong cluster key\n")
        if header and server.rpc_keys():
            try:
                replays.first_use(header)
            except ReplayError as e:
                return web.Response(status=e.status, text=f"{e}\n")
        try:
            return await handler(request)
        except msgspec.DecodeError as e:
            return web.Response(status=400, text=f"bad RPC body: {e}\n")
        except CommandForbiddenError as e:
            return web.Response(status=403, text=f"{e}\n")
        except CommandError as e:
            return web.Response(status=400, text=f"{e}\n")
        except (RaftError, RPCError) as e:
            return web.Response(status=503, text=f"{e}\n")

    async def info(request: web.Request) -> web.Response:
        return _reply(server.info())

    async def read(request: web.Request) -> web.Response:
        req = msgspec.msgpack.decode(await request.read(), type=ReadRequest)
        ans = await server.read(
            req.Query, req.MinIndex, min(req.Wait, 600.0), req.Consistency, req.Token
        )
        return _reply(
            ReadReply(
                Index=ans.index,
                Value=msgspec.Raw(encoder.encode(ans.value)),
                KnownLeader=ans.known_leader,
                LastContact=ans.last_contact_ms,
            )
        )

    async def write(request: web.Request) -> web.Response:
        """An agent's write: admitted as Origin.AGENT, so server-only commands are refused."""
        req = msgspec.msgpack.decode(await request.read(), type=WriteRequest)
        try:
            return _reply(
                WriteReply(
                    Result=await server.write(req.Command, Origin.AGENT, req.Token, decoded=True)
                )
            )
        except CommandForbiddenError as e:
            return _reply(WriteReply(Error=str(e), Code=403))
        except StateConflictError as e:
            return _reply(WriteReply(Error=str(e), Code=500))
        except CommandError as e:
            return _reply(WriteReply(Error=str(e), Code=400))

    async def heartbeat(request: web.Request) -> web.Response:
        hb = msgspec.msgpack.decode(await request.read(), type=Heartbeat)
        return _reply(await server.heartbeat(hb))

    async def liveness_report(request: web.Request) -> web.Response:
        report = msgspec.msgpack.decode(await request.read(), type=LivenessReport)
        return _reply(await server.liveness.on_report(report))

    async def session_renew(request: web.Request) -> web.Response:
        req = msgspec.msgpack.decode(await request.read(), type=SessionRenew)
        return _reply(await server.renew_session(req.ID))

    async def members(request: web.Request) -> web.Response:
        return _reply(await server.member_list())

    async def peer(request: web.Request) -> web.Response:
        change = msgspec.msgpack.decode(await request.read(), type=PeerChange)
        return _reply(await server.change_peer(change))

    async def sign(request: web.Request) -> web.Response:
        req = msgspec.msgpack.decode(await request.read(), type=SignRequest)
        try:
            return _reply(await server.sign(req))
        except CAError as e:
            return web.Response(status=400, text=f"{e}\n")

    async def caconfig(request: web.Request) -> web.Response:
        req = msgspec.msgpack.decode(await request.read(), type=CAConfigRequest)
        try:
            await server.set_ca_config(req.Config, req.ForceRotate, req.Token)
        except CAError as e:
            return web.Response(status=400, text=f"{e}\n")
        return _reply(True)

    async def operator(request: web.Request) -> web.Response:
        call = msgspec.msgpack.decode(await request.read(), type=OperatorCall)
        return _reply(await server.operator(call.Request, call.Token))

    app = web.Application(middlewares=[auth], client_max_size=MAX_RPC_BODY)
    app.router.add_post("/rpc/operator", operator)
    app.router.add_post("/rpc/caconfig", caconfig)
    app.router.add_post("/rpc/sign", sign)
    app.router.add_post("/rpc/info", info)
    app.router.add_post("/rpc/read", read)
    app.router.add_post("/rpc/write", write)
    app.router.add_post("/rpc/heartbeat", heartbeat)
    app.router.add_get(LIVENESS_PATH, server.liveness.serve_socket)
    app.on_shutdown.append(server.liveness.close_sockets)
    app.router.add_post(f"/rpc/{REPORT_METHOD}", liveness_report)
    app.router.add_post("/rpc/members", members)
    app.router.add_post("/rpc/session_renew", session_renew)
    app.router.add_post("/rpc/peer", peer)
    add_telemetry_routes(app, server)
    return app
