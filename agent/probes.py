"""One probe per check kind: run it once and say (status, output).

Probes know nothing about intervals, counters or reporting; the runner in `agent.checks` owns
those. Keeping them apart lets each probe be exercised directly against a real server, and
keeps Consul's exact per-kind quirks (UDP silence means healthy, script exit 1 means warning)
in one readable place. Output strings follow Consul's wording so dashboards and scripts that
grep check output keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

import aiohttp
from multidict import CIMultiDict

from meshd.agent.definitions import CheckDefinition
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

Result = tuple[str, str]  # (status, output)

# Timeouts use asyncio.timeout, never wait_for: on 3.11 wait_for can swallow a cancellation
# that races with completion, and a swallowed cancel is a check that can never be removed.

DEFAULT_OUTPUT_MAX = 4096
USER_AGENT = "Consul Health Check"  # servers may special-case Consul's probe; stay recognisable
_REASONS = {200: "OK", 429: "Too Many Requests"}


def http_status(code: int) -> str:
    """Consul's mapping; 429 is a warning because a throttling service is alive, just busy."""
    if 200 <= code <= 299:
        return HEALTH_PASSING
    if code == 429:
        return HEALTH_WARNING
    return HEALTH_CRITICAL


def output_max(d: CheckDefinition) -> int:
    return d.OutputMaxSize if d.OutputMaxSize > 0 else DEFAULT_OUTPUT_MAX


def timeout_of(d: CheckDefinition) -> float:
    """Hand-built definitions may carry 0; Consul then uses 10s (30s for scripts)."""
    if d.Timeout > 0:
        return d.Timeout
    return 30.0 if d.Type == "script" else 10.0


def split_host_port(addr: str) -> tuple[str, int]:
    """Accepts "[v6]:port" too, because users paste Go-style addresses."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {addr!r}: missing port in address")
    return host.strip("[]"), int(port)


def _secs(t: float) -> str:
    return f"{t:g}s"


def _disable_redirects(d: CheckDefinition) -> bool:
    """DisableRedirects is not a typed field yet, but users send it; honour the raw key."""
    for k, v in d.raw.items():
        if k.lower().replace("_", "") == "disableredirects":
            return bool(v)
    return False


# ---- HTTP -------------------------------------------------------------------------------------


def new_http_session() -> aiohttp.ClientSession:
    """One session per runner; no keep-alive (as Consul) so a stale pooled connection can
    never fail a check, and no cookie jar so one check's cookies never leak into another's."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def probe_http(session: aiohttp.ClientSession, d: CheckDefinition) -> Result:
    method = (d.Method or "GET").upper()
    headers: CIMultiDict[str] = CIMultiDict()
    for k, vs in d.Header.items():
        for v in vs:
            headers.add(k, v)
    headers.setdefault("User-Agent", USER_AGENT)
    headers.setdefault("Accept", "text/plain, text/*, */*")
    limit = output_max(d)
    prefix = f"HTTP {method} {d.HTTP}"
    try:
        async with asyncio.timeout(timeout_of(d)):
            async with session.request(
                method,
                d.HTTP,
                headers=headers,
                data=d.Body.encode() if d.Body else None,
                ssl=not d.TLSSkipVerify,
                allow_redirects=not _disable_redirects(d),
                max_redirects=10,
            ) as resp:
                body = bytearray()
                while len(body) < limit:
                    chunk = await resp.content.read(limit - len(body))
                    if not chunk:
                        break
                    body += chunk
                reason = resp.reason or _REASONS.get(resp.status, "")
    except TimeoutError:
        return HEALTH_CRITICAL, f"{prefix}: timed out after {_secs(timeout_of(d))}"
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return HEALTH_CRITICAL, f"{prefix}: {e or type(e).__name__}"
    text = bytes(body[:limit]).decode("utf-8", "replace")
    return http_status(resp.status), f"{prefix}: {resp.status} {reason} Output: {text}"


# ---- TCP / UDP --------------------------------------------------------------------------------


async def probe_tcp(d: CheckDefinition) -> Result:
    try:
        host, port = split_host_port(d.TCP)
        async with asyncio.timeout(timeout_of(d)):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return HEALTH_CRITICAL, f"dial tcp {d.TCP}: i/o timeout after {_secs(timeout_of(d))}"
    except (OSError, ValueError) as e:
        return HEALTH_CRITICAL, f"dial tcp {d.TCP}: {_oserror_text(e)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return HEALTH_PASSING, f"TCP connect {d.TCP}: Success"


def _oserror_text(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


async def probe_udp(d: CheckDefinition) -> Result:
    """UDP has no handshake, so Consul calls a port healthy unless the kernel reports an ICMP
    port-unreachable (ECONNREFUSED on a connected socket) before the timeout; silence or any
    reply is healthy. Like Consul we send an empty datagram (its default Message)."""
    loop = asyncio.get_running_loop()
    ok = (HEALTH_PASSING, f"UDP connect {d.UDP}: Success")
    try:
        host, port = split_host_port(d.UDP)
        async with asyncio.timeout(timeout_of(d)):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, ValueError, TimeoutError) as e:
        return HEALTH_CRITICAL, f"dial udp {d.UDP}: {_oserror_text(e)}"
    family, _, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, sockaddr)
        await loop.sock_sendall(sock, b"")
        async with asyncio.timeout(timeout_of(d)):
            await loop.sock_recv(sock, 1)
    except TimeoutError:
        return ok
    except OSError as e:
        return HEALTH_CRITICAL, f"read udp {d.UDP}: {_oserror_text(e)}"
    finally:
        sock.close()
    return ok


# ---- gRPC -------------------------------------------------------------------------------------


async def probe_grpc(d: CheckDefinition) -> Result:
    """grpc.health.v1 Health/Check; "host:port/svc" asks about one service, bare host:port
    about the server as a whole (empty service name), exactly as Consul's probe does.

    GRPCUseTLS verifies against the system roots: grpcio has no skip-verify switch.
    Imported lazily so agents that never run a gRPC check never pay grpcio's import cost.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    addr, _, service = d.GRPC.partition("/")
    channel = (
        grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials())
        if d.GRPCUseTLS
        else grpc.aio.insecure_channel(addr)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        req = health_pb2.HealthCheckRequest(service=service)
        async with asyncio.timeout(timeout_of(d)):
            resp: Any = await stub.Check(req, timeout=timeout_of(d))
    except TimeoutError:
        return HEALTH_CRITICAL, f"gRPC {d.GRPC}: timed out after {_secs(timeout_of(d))}"
    except grpc.aio.AioRpcError as e:
        return HEALTH_CRITICAL, (
            f"gRPC {d.GRPC}: rpc error: code = {e.code().name} desc = {e.details()}"
        )
    finally:
        await channel.close()
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return HEALTH_CRITICAL, f"gRPC {d.GRPC} serving status: {name}"
    return HEALTH_PASSING, f"gRPC check {d.GRPC}: success"


# ---- script -----------------------------------------------------------------------------------


class _Tail:
    """Keeps the last `size` bytes, like Consul's circular buffer: the end of a script's
    output (the error) is what an operator needs, not its chatty start."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > self.size:
            del self.buf[: len(self.buf) - self.size]

    def text(self) -> str:
        s = self.buf.decode("utf-8", "replace")
        if self.total > len(self.buf):
            s = f"Captured {len(self.buf)} of {self.total} bytes\n...\n{s}"
        return s


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """The script may have forked (sh -c 'sleep ...'); kill its whole session, not just it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await proc.wait()


async def probe_script(d: CheckDefinition) -> Result:
    """Nagios convention, as Consul: exit 0 passing, 1 warning, anything else critical."""
    out = _Tail(output_max(d))
    # Shielded: a cancel that lands mid-spawn (check removed) would otherwise leave asyncio to
    # kill only the direct child, orphaning whatever the script already forked.
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *d.Args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        proc = await asyncio.shield(spawn)
    except (OSError, ValueError) as e:
        return HEALTH_CRITICAL, f"Check failed to invoke: {_oserror_text(e)}"
    except asyncio.CancelledError:
        with contextlib.suppress(OSError, ValueError):
            orphan = await spawn
            _kill_group(orphan)
            await _reap(orphan)
        raise

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            out.write(chunk)

    try:
        async with asyncio.timeout(timeout_of(d)):
            await asyncio.gather(pump(), proc.wait())
    except TimeoutError:
        _kill_group(proc)
        await _reap(proc)
        msg = f"Timed out ({_secs(timeout_of(d))}) running check"
        text = out.text()
        return HEALTH_CRITICAL, msg + ("\n\n" + text if text else "")
    except asyncio.CancelledError:
        _kill_group(proc)
        await _reap(proc)
        raise
    code = proc.returncode
    status = {0: HEALTH_PASSING, 1: HEALTH_WARNING}.get(
        code if code is not None else -1, HEALTH_CRITICAL
    )
    return status, out.text()
