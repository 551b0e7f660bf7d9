"""Connection-level defences of the HTTP API: a cap per client address and quiet bad requests.

aiohttp serves every connection it accepts for as long as the peer keeps it open, so 5,000
half-open connections from one host (slowloris) used to stay open and starve everyone else.
Consul caps concurrent connections per client IP (`limits.http_max_conns_per_client`, 200) and
answers the excess with 429; `GuardedSite` does the same in front of aiohttp's protocol, and
closes a new connection whose first request head has not arrived within the header timeout.
Later requests on a kept-alive connection are bounded by aiohttp's keep-alive timer
(`KEEPALIVE`), which closes a connection that has not completed a new request head by then. It
is longer than Go's 90 s client idle pool: a Go client (Consul's) reusing a connection the
server just closed would see EOF on a PUT it cannot retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, cast

from aiohttp import HttpVersion10, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

__all__ = [
    "KEEPALIVE",
    "ConnectionLimits",
    "GuardedSite",
    "QuietBadRequests",
    "refuse_http09",
    "runner_options",
]

log = logging.getLogger("meshd.http")
_LINGER = 2.0  # seconds a refused connection may take to read its 429
_BACKLOG = 1024  # aiohttp's 128 drops a burst of connections before the cap can answer them
KEEPALIVE = 120.0  # seconds; see the module docstring
# seconds a request still in flight at shutdown may take to finish (aiohttp's default, 60 s, is
# longer than the unit's TimeoutStopSec); blocking queries are ended before it starts to count
SHUTDOWN_GRACE = 2.0
_HEAD_END = b"\r\n\r\n"

_TOO_MANY_TEXT = (
    b"Your IP is issuing too many concurrent connections, please rate limit your calls\n"
)
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_TEXT), _TOO_MANY_TEXT)
)


class ConnectionLimits:
    """Open connections per client address, shared by every listener of one agent, and the time
    a new connection has to send its first request head."""

    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open: Counter[str] = Counter()
        self.refused = 0

    def admit(self, ip: str) -> bool:
        if self.limit > 0 and self.open[ip] >= self.limit:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:  # not one line per connection
                log.warning(
                    "refusing HTTP connections from %s: over limits.http_max_conns_per_client=%d "
                    "(%d refused so far)",
                    ip,
                    self.limit,
                    self.refused,
                )
            return False
        self.open[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.open[ip] -= 1
        if self.open[ip] <= 0:
            del self.open[ip]


class _Guarded(asyncio.Protocol):
    """Forwards to aiohttp's protocol once the client is under its cap; else 429 and close."""

    def __init__(self, inner: Any, counts: ConnectionLimits) -> None:
        self.inner = inner
        self.counts = counts
        self.ip: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, so a head end split across reads is found

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self.counts.admit(ip):
            self._refuse(transport)
            return
        self.ip = ip
        self._deadline = asyncio.get_running_loop().call_later(
            self.counts.header_timeout, self._too_slow, transport
        )
        self.inner.connection_made(transport)

    def _too_slow(self, transport: asyncio.BaseTransport) -> None:
        self._deadline = None
        log.debug("closing HTTP connection from %s: no request head in time", self.ip)
        transport.close()

    @staticmethod
    def _refuse(transport: asyncio.BaseTransport) -> None:
        """429, then FIN; closing at once over unread request bytes would send a RST instead,
        and the client would see a reset rather than the reason."""
        stream = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        if stream.can_write_eof():
            stream.write(_TOO_MANY)
            stream.write_eof()
            asyncio.get_running_loop().call_later(_LINGER, stream.close)
        else:
            stream.close()

    def data_received(self, data: bytes) -> None:
        if self.ip is None:
            return
        if self._deadline is not None:
            seen = self._tail + data
            if _HEAD_END in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-(len(_HEAD_END) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.ip is not None else None

    def pause_writing(self) -> None:
        if self.ip is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ip is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is None:
            return
        self.counts.release(self.ip)
        self.ip = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections pass the per-client cap before aiohttp sees them."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        counts: ConnectionLimits,
        *,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self.meshd_runner, self.host, self.port, self.counts = runner, host, port, counts
        self.tls = ssl_context

    @property
    def name(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        factory = self.meshd_runner.server
        assert factory is not None  # BaseSite.__init__ refuses a runner that is not set up
        counts = self.counts
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(factory(), counts),
            self.host,
            self.port,
            ssl=self.tls,
            backlog=_BACKLOG,
            reuse_address=True,
        )


class QuietBadRequests(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger, minus a traceback per malformed request.

    A client that sends junk gets its 400; the agent's log gets one DEBUG line, not an ERROR
    with a stack. Exceptions from our own handlers stay ERROR with their traceback: those are
    bugs.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def log(self, level: int, msg: object, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.logger.debug("malformed HTTP request: %s", exc.message or type(exc).__name__)
            return
        self.logger.log(level, msg, *args, **kw)


def runner_options() -> dict[str, Any]:
    """Keyword arguments for web.AppRunner: the keep-alive bound and the quiet error logger."""
    return {
        "access_log": None,
        "keepalive_timeout": KEEPALIVE,
        "logger": QuietBadRequests(),
        "shutdown_timeout": SHUTDOWN_GRACE,
    }


@web.middleware
async def refuse_http09(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp answers `GET /` with no version as HTTP/0.9; Go (and so Consul) refuses it.

    An HTTP/0.9 request has no headers, so no Host and no token: nothing a real client sends.
    """
    if request.version < HttpVersion10:
        resp = web.Response(status=505, text="unsupported protocol version\n")
        resp.force_close()
        return resp
    return await handler(request)
