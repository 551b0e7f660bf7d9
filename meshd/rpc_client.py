"""Calling servers' RPC: one pooled aiohttp session, failover across the known servers."""

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
        self._session: aiohttp.ClientSession | None = None
        self._preferred: str | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ssl=self.ssl or False)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
    ) -> T:
        """Try `addr` (or the last server that answered, then the others shuffled)."""
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
                async with self._sess().post(
                    f"{scheme}://{server}{path}",
                    data=body,
                    headers={
                        AUTH_HEADER: sign(self.key, path, body),
                        "Content-Type": "application/msgpack",
                    },
                    timeout=aiohttp.ClientTimeout(total=timeout, connect=2.0),
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
