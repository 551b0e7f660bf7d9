"""A client agent's heartbeat link: one WebSocket to the server its name places it on.

The servers are tried in `meshd.liveness.placement` order, so a fleet spreads evenly over them;
a server that fails (refused connection, no answer within `REPLY_TIMEOUT`, an error reply such as
"lost contact with the leader") is skipped for `PENALTY` seconds and the next one is used at
once, so a dead server's agents re-attach within about a second. Once the preferred server is
back, the agent returns to it when it next re-reads the server list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from meshd.liveness import LIVENESS_PATH, FrameError, open_frame, placement, seal_frame
from meshd.rpc import AUTH_HEADER, Heartbeat, encoder, sign
from meshd.rpc_client import RPCClient, RPCError

log = logging.getLogger("meshd.agent")
REPLY_TIMEOUT = 2.0
PENALTY = 10.0


class HeartbeatLink:
    def __init__(
        self, rpc: RPCClient, node: str, servers: Callable[[], list[str]] | None = None
    ) -> None:
        self.rpc = rpc  # its key and TLS settings: shared with the agent's RPC
        self.node = node
        # the servers to place on: their own RPC addresses once known (the join addresses may
        # name the same servers again, by host name, which would skew placement and failover)
        self.servers = servers or (lambda: rpc.servers)
        self.server = ""  # the server this agent is attached to now
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conn = ""
        self._seq = 0
        self._penalised: dict[str, float] = {}

    def order(self, now: float | None = None) -> list[str]:
        """The servers to try: placement order, penalised ones last."""
        now = time.monotonic() if now is None else now
        ranked = placement(self.node, self.servers() or self.rpc.servers)
        ok = [s for s in ranked if self._penalised.get(s, 0.0) <= now]
        return ok + [s for s in ranked if s not in ok]

    async def beat(self, hb: Heartbeat) -> Any:
        """Send one heartbeat; its reply. Fails over across every server before it gives up."""
        errors = []
        for _ in range(max(len(self.servers() or self.rpc.servers), 1)):
            try:
                if self._ws is None or self._ws.closed:
                    # bounded as a whole: a paused server accepts TCP but never upgrades
                    await asyncio.wait_for(self._connect(), REPLY_TIMEOUT)
                return await self._exchange(hb)
            except (RPCError, FrameError, TimeoutError, aiohttp.ClientError, OSError) as e:
                errors.append(f"{self.server or 'no server'}: {e or type(e).__name__}")
                await self._drop(penalise=True)
        raise RPCError("no server took the heartbeat: " + "; ".join(errors))

    async def rebalance(self) -> None:
        """Move back to the preferred server once it is usable again (called now and then)."""
        first = self.order()
        if first and self.server and first[0] != self.server:
            await self._drop(penalise=False)

    async def _connect(self) -> None:
        order = self.order()
        if not order:
            raise RPCError("no servers known to this agent")
        addr = order[0]
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(  # a server cut off must not hold us up
                connector=aiohttp.TCPConnector(limit=4, ssl=self.rpc.ssl or False),
                timeout=aiohttp.ClientTimeout(total=None, connect=REPLY_TIMEOUT),
            )
        header = sign(self.rpc.key, LIVENESS_PATH, b"")
        scheme = "wss" if self.rpc.ssl else "ws"
        self.server = addr
        self._ws = await self._session.ws_connect(
            f"{scheme}://{addr}{LIVENESS_PATH}",
            headers={AUTH_HEADER: header} if header else None,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
            server_hostname=self.rpc.server_name if self.rpc.ssl else None,
            max_msg_size=64 * 1024,
            autoping=True,
        )
        self._conn = header.split(":")[1] if header else ""
        self._seq = 0
        log.debug("heartbeats now go to %s", addr)

    async def _exchange(self, hb: Heartbeat) -> Any:
        ws = self._ws
        assert ws is not None
        self._seq += 1
        key = self.rpc.key
        await ws.send_bytes(seal_frame(key, self._conn, self._seq, encoder.encode(hb)))
        msg = await ws.receive(timeout=REPLY_TIMEOUT)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise RPCError(f"heartbeat connection closed ({msg.extra or msg.type.name})")
        _, body, _ = open_frame([key] if key else [], self._conn, self._seq - 1, msg.data)
        reply = msgspec.msgpack.decode(body)
        if isinstance(reply, dict) and reply.get("Error"):
            raise RPCError(str(reply["Error"]), 503)
        return reply

    async def _drop(self, penalise: bool) -> None:
        if penalise and self.server:
            self._penalised[self.server] = time.monotonic() + PENALTY
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.wait_for(ws.close(), 1.0)
        self.server = ""

    async def close(self) -> None:
        await self._drop(penalise=False)
        if self._session is not None:
            await self._session.close()
