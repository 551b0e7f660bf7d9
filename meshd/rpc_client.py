"""Calling servers' RPC: pooled aiohttp sessions, failover across the known servers.

Blocking reads hold a connection for up to their wait (minutes), so they get their own pool:
heartbeats, writes and plain reads never queue behind watches, however many there are."""

from __future__ import annotations

import logging
import random
import ssl
from typing import Any, TypeVar

import aiohttp
import msgspec

from meshd.rpc import AUTH_HEADER, encoder, sign

log = logging.getLogger("meshd.rpc")
T = TypeVar("T")


class RPCError(Exception):
    """No server answered, or one answered with an error; the text says which and why."""

    def __init__(self, message: str, code: int = 500) -> None:
        super().__init__(message)
        self.code = code


def normalize_addr(addr: str, default_port: int) -> str:
    addr = addr.strip()
    if addr.startswith("["):
        return addr if "]:" in addr else f"{addr}:{default_port}"
    return addr if ":" in addr else f"{addr}:{default_port}"


def _timeout(seconds: float, blocking: bool) -> aiohttp.ClientTimeout:
    """A blocking read may wait for a free connection in the (bounded) watch pool; that wait
    is not counted against its own, or reads queued behind full watches would fail."""
    if blocking:
        return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=2.0, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=2.0)


class RPCClient:
    def __init__(
        self,
        servers: list[str],
        key: bytes | None,
        *,
        default_port: int = 8300,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.servers = [normalize_addr(s, default_port) for s in servers]
        self.key = key
        self.ssl = ssl_context
        self.server_name = server_name  # verify_server_hostname: the name servers must present
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._preferred: str | None = None

    def _sess(self, blocking: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(blocking)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=256, ssl=self.ssl or False)
            session = self._sessions[blocking] = aiohttp.ClientSession(connector=connector)
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    def set_servers(self, servers: list[str]) -> None:
        if servers:
            self.servers = list(dict.fromkeys(servers))

    async def call(
        self,
        method: str,
        payload: Any,
        reply_type: type[T],
        *,
        timeout: float = 10.0,
        addr: str | None = None,
        blocking: bool = False,
    ) -> T:
        """Try `addr` (or the last server that answered, then the others shuffled). A
        `blocking` call (a read that may wait) goes through the watch pool."""
        if addr:
            order = [addr]
        else:
            others = [s for s in self.servers if s != self._preferred]
            random.shuffle(others)
            order = ([self._preferred] if self._preferred in self.servers else []) + others
        if not order:
            raise RPCError("no servers known to this agent")
        body = encoder.encode(payload)
        path = f"/rpc/{method}"
        errors = []
        for server in order:
            scheme = "https" if self.ssl else "http"
            try:
                async with self._sess(blocking).post(
                    f"{scheme}://{server}{path}",
                    data=body,
                    headers={
                        AUTH_HEADER: sign(self.key, path, body),
                        "Content-Type": "application/msgpack",
                    },
                    timeout=_timeout(timeout, blocking),
                    server_hostname=self.server_name if self.ssl else None,
                ) as resp:
                    data = await resp.read()
                    if resp.status != 200:
                        raise RPCError(
                            f"{server}: {data.decode(errors='replace').strip()}", resp.status
                        )
                    self._preferred = server
                    return msgspec.msgpack.decode(data, type=reply_type)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                errors.append(f"{server}: {e or type(e).__name__}")
                if server == self._preferred:
                    self._preferred = None
            except RPCError as e:
                if e.code in (401, 403, 400, 404):
                    raise
                errors.append(str(e))
        raise RPCError("no server answered: " + "; ".join(errors))
