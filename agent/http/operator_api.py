"""`/v1/operator/raft/*`, `/v1/snapshot` and `/v1/agent/leave`: operating the server cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from typing import TYPE_CHECKING

from aiohttp import web

from meshd.agent.http.common import AGENT_KEY, BadRequestError, json_response

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
_CHUNK = 1 << 20
# A snapshot is a msgpack map (GET /v1/snapshot writes one); its first byte says so.
_SNAPSHOT_START = frozenset({bytes([b]) for b in (*range(0x80, 0x90), 0xDE, 0xDF)})


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


@routes.get("/v1/operator/raft/configuration")
async def raft_configuration(request: web.Request) -> web.Response:
    agent = _agent(request)
    leader, peers = await agent.backend.status()
    servers = []
    for addr in peers:
        servers.append(
            {
                "ID": addr,
                "Node": agent.server_name(addr),
                "Address": addr,
                "Leader": addr == leader,
                "ProtocolVersion": "3",
                "Voter": True,
            }
        )
    return json_response({"Servers": servers, "Index": 0})


@routes.delete("/v1/operator/raft/peer")
async def raft_remove_peer(request: web.Request) -> web.Response:
    addr = request.query.get("address") or request.query.get("id")
    if not addr:
        raise BadRequestError("Must specify ?address with IP:port of peer to remove")
    await _agent(request).remove_peer(addr)
    return web.Response(status=200)


@routes.get("/v1/snapshot")
async def snapshot_save(request: web.Request) -> web.Response:
    index, data = await _agent(request).snapshot()
    return web.Response(
        body=data, content_type="application/octet-stream", headers={"X-Consul-Index": str(index)}
    )


@routes.put("/v1/snapshot")
async def snapshot_restore(request: web.Request) -> web.Response:
    """Streamed to a private temporary file, never held whole while it arrives.

    The size limit applies to what is read, not to a Content-Length the client may omit, and a
    body that does not start like a snapshot is refused at its first chunk.
    """
    agent = _agent(request)
    limit = agent.config.http_max_snapshot
    with tempfile.TemporaryFile(dir=agent.config.data_dir or None) as spool:  # mode 0600
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            if size == 0 and chunk[:1] not in _SNAPSHOT_START:
                raise BadRequestError("not a meshd snapshot (it must come from GET /v1/snapshot)")
            size += len(chunk)
            if size > limit:
                return web.Response(
                    status=413,
                    text=f"snapshot larger than limits.http_max_snapshot_bytes={limit}\n",
                )
            await asyncio.to_thread(spool.write, chunk)
        if not size:
            raise BadRequestError("snapshot body is empty")
        await asyncio.to_thread(spool.seek, 0)
        data = await asyncio.to_thread(spool.read)
    await agent.restore(data)
    return web.Response(status=200)


@routes.put("/v1/agent/leave")
async def agent_leave(request: web.Request) -> web.Response:
    await _agent(request).leave()
    # answer first, then stop the process the way a SIGTERM would
    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    return web.Response(status=200)
