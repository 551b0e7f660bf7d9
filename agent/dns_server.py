"""The agent's DNS listeners: UDP and TCP on one port, plus forwarding to recursors.

All DNS semantics live in `agent.dns` (pure); this module only moves bytes. A local answer is
computed synchronously inside the datagram callback (it takes tens of microseconds and touches
only memory, so a task per query would cost more than the answer). Only waiting runs as a task:
forwarding, and loading the data the core said it needs (`NeedData`: a client agent's cache had
no answer for that name yet) before asking the core again; the number of those in flight is
capped so a flood of external or cold names cannot exhaust sockets or memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
import time
from typing import Any

from dnslib import DNSRecord

from meshd.agent.dns import (
    SERVFAIL,
    TCP_MAX,
    UDP_PLAIN,
    DNSOutcome,
    DNSRead,
    DNSSettings,
    DNSView,
    answer,
    error_response,
    parse_packet,
)
from meshd.agent.dns_wire import fit_udp
from meshd.metrics import Timer

log = logging.getLogger("meshd.dns")
_U16 = struct.Struct("!H")

MAX_PENDING = 1024  # queries waiting on a recursor or a cache fill; beyond that, SERVFAIL at once
MAX_LOAD_ROUNDS = 3  # NeedData rounds per query (a mixed-case name can take two); then SERVFAIL
MAX_TCP_CONNS = 512
MAX_TCP_PER_CLIENT = 64  # one address's share: beyond it, its own longest-idle connection goes
# The parse memo is bounded by the bytes it holds, not its entries: a parsed packet costs ~40x its
# wire size, so a few thousand 60 KB queries stuffed with records would pin gigabytes. Ordinary
# questions are under 100 bytes; bigger packets are parsed every time and never kept.
PARSE_CACHE_BYTES = 256 * 1024  # wire bytes of the memo's keys (cleared wholesale when full)
PARSE_CACHE_ENTRY_MAX = 512
TCP_IDLE_TIMEOUT = 10.0  # between queries on a kept-open connection (RFC 7766 allows closing)
TCP_IO_TIMEOUT = 5.0  # to finish reading one message once its length arrived (slowloris)
#: the reverse zones end in `.arpa.`: a PTR question is timed as consul.dns.ptr_query
_ARPA = b"\x04arpa\x00"


def parse_recursor(spec: str) -> tuple[str, int]:
    """ "ip", "ip:port", "[v6]:port" or a bare IPv6 address -> (ip, port); ValueError if not."""
    spec = spec.strip()
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # recursors are addresses: resolving a name here could loop
    if not 0 < port < 65536:
        raise ValueError(f"bad port in recursor {spec!r}")
    return host, port


class _UpstreamProtocol(asyncio.DatagramProtocol):
    """One forwarded query's socket: accepts only a response carrying the ID we chose."""

    def __init__(self, qid: bytes, done: asyncio.Future[bytes]) -> None:
        self.qid = qid
        self.done = done

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and data[:2] == self.qid and data[2] & 0x80 and not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed"))


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.server.on_datagram(data, addr, self)
        except Exception:
            log.exception("dns: failed to answer a UDP query from %s", addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors about earlier replies to clients that went away

    def send(self, reply: bytes, addr: Any) -> None:
        if reply and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class DNSServer:
    def __init__(self, view: DNSView, cfg: DNSSettings, host: str, port: int) -> None:
        self.view = view
        self.cfg = cfg
        self.host = host
        self.port = port
        self.udp_port = 0
        self.tcp_port = 0
        self.queries = 0  # answered locally; read by the metrics endpoint
        #: Consul's consul.dns.domain_query / ptr_query: a question to the reply sent
        self.domain_timer = Timer()
        self.ptr_timer = Timer()
        self.recursors: list[tuple[str, int]] = []
        self.reconfigure(cfg)
        # A view that can lack data (the agent's cache) loads it when an answer needs it.
        self._load = getattr(view, "load", None)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Open TCP connections -> (client address, loop time it went idle, or None mid-query).
        self._conns: dict[asyncio.StreamWriter, tuple[str, float | None]] = {}
        self._parsed: dict[bytes, DNSRecord] = {}
        self._parsed_bytes = 0

    def reconfigure(self, cfg: DNSSettings) -> None:
        """Settings for the queries from now on (a config reload); the sockets stay."""
        recursors = []
        for spec in cfg.recursors:
            try:
                recursors.append(parse_recursor(spec))
            except ValueError:
                log.warning("dns: ignoring recursor %r: not ip, ip:port or [ip6]:port", spec)
        self.cfg, self.recursors = cfg, recursors
        self._domains = tuple(d for d in (cfg.domain, cfg.alt_domain) if d)
        cached = getattr(self.view, "dns_answers", None)  # answers built with the old TTLs
        if cached is not None:
            cached.entries.clear()

    async def start(self) -> None:
        """Bind TCP first, then UDP on the same port (with port 0, the port TCP got), so clients
        that fall back to TCP after a truncated UDP answer find us where they asked."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(
            self._serve_tcp, self.host, self.port, reuse_address=True
        )
        self.tcp_port = self._tcp.sockets[0].getsockname()[1]
        family = self._tcp.sockets[0].family
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, self.tcp_port), family=family
            )
        except OSError:
            if self.port:
                self._tcp.close()
                raise
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(self.host, 0), family=family
            )
        self.udp_port = self._udp.get_extra_info("sockname")[1]
        log.info("dns: listening on %s udp/%d tcp/%d", self.host, self.udp_port, self.tcp_port)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._conns):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()

    # ---- answering -------------------------------------------------------------------------

    def _parse(self, data: bytes) -> DNSRecord | bytes:
        """dnslib's parse is a third of a cached answer's cost, and clients repeat the same
        few questions with only the ID changing: memoize on the bytes after the ID. Safe to
        share because answering is synchronous and only reads the request; code that awaits
        re-parses afterwards (a cache hit) instead of keeping the object."""
        key = bytes(data[2:])  # hashable even when a caller passes a bytearray
        request = self._parsed.get(key)
        if request is None:
            request = parse_packet(data)
            if isinstance(request, bytes):
                return request
            if len(key) <= PARSE_CACHE_ENTRY_MAX:
                if self._parsed_bytes + len(key) > PARSE_CACHE_BYTES:
                    self._parsed.clear()
                    self._parsed_bytes = 0
                self._parsed[key] = request
                self._parsed_bytes += len(key)
        else:
            request.header.id = _U16.unpack_from(data)[0]
        return request

    def _reply(self, data: bytes, max_size: int) -> DNSOutcome:
        """The core's outcome for these bytes; a packet that cannot be answered becomes the bytes
        to send instead (FORMERR, or b"" to stay silent)."""
        request = self._parse(data)
        if isinstance(request, bytes):
            return DNSOutcome(request)
        self.queries += 1
        try:
            return answer(request, self.view, self.cfg, max_size=max_size)
        except Exception:
            log.exception("dns: answering %s failed", request.q.qname if request.questions else "?")
            return DNSOutcome(error_response(request, SERVFAIL, self.cfg), rcode=SERVFAIL)

    async def _complete(self, data: bytes, outcome: DNSOutcome, max_size: int, tcp: bool) -> bytes:
        """Finish what memory could not answer: load the data the core asked for and answer
        again (re-parsing: the parse memo may have been reused meanwhile), or forward."""
        rounds = 0
        while outcome.need:
            rounds += 1
            if rounds > MAX_LOAD_ROUNDS or not await self._fill(outcome.need):
                return self._servfail(data)
            outcome = self._reply(data, max_size)
        if outcome.forward:
            return await self.forward(data, tcp=tcp) if self.recursors else self._servfail(data)
        return outcome.wire

    async def _fill(self, reads: tuple[DNSRead, ...]) -> bool:
        if self._load is None:
            return False
        try:
            return bool(await self._load(reads))
        except Exception:
            log.debug("dns: loading %s failed", reads, exc_info=True)
            return False

    def _timed(self, data: bytes, started: float) -> None:
        """Reverse lookups (the in-addr.arpa / ip6.arpa zones) are timed apart, as Consul's."""
        ms = (time.perf_counter() - started) * 1000.0
        timer = self.ptr_timer if _ARPA in data else self.domain_timer
        timer.count += 1  # Timer.observe inlined: this runs for every question
        timer.sum += ms
        timer.recent.append(ms)

    def on_datagram(self, data: bytes, addr: Any, proto: _UDPProtocol) -> None:
        started = time.perf_counter()
        outcome = self._reply(data, UDP_PLAIN)
        if not (outcome.need or outcome.forward):
            proto.send(outcome.wire, addr)
            return self._timed(data, started)
        if len(self._tasks) >= MAX_PENDING:
            return proto.send(self._servfail(data), addr)

        async def slow() -> None:
            reply = await self._complete(data, outcome, UDP_PLAIN, tcp=False)
            if len(reply) > UDP_PLAIN and not isinstance(request := parse_packet(data), bytes):
                reply = fit_udp(request, reply)  # a recursor's reply may ignore the limit
            proto.send(reply, addr)
            self._timed(data, started)

        task = asyncio.get_running_loop().create_task(slow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _servfail(self, data: bytes) -> bytes:
        request = parse_packet(data)
        return (
            request if isinstance(request, bytes) else error_response(request, SERVFAIL, self.cfg)
        )

    async def forward(self, data: bytes, *, tcp: bool) -> bytes:
        """Ask each recursor in turn; the first response wins, SERVFAIL if none gives one.
        The upstream sees a fresh random ID (anti-spoofing) and the client gets its own back."""
        for host, port in self.recursors:
            try:
                reply = await self._ask_udp(data, host, port)
                if tcp and reply[2] & 0x02:  # the upstream truncated: a TCP client wants it all
                    reply = await self._ask_tcp(data, host, port)
                return data[:2] + reply[2:]
            except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as exc:
                log.debug("dns: recursor %s:%d failed: %r", host, port, exc)
        return self._servfail(data)

    async def _ask_udp(self, data: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        qid = secrets.token_bytes(2)
        done: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamProtocol(qid, done), remote_addr=(host, port)
        )
        try:
            transport.sendto(qid + data[2:])
            return await asyncio.wait_for(done, self.cfg.recursor_timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, data: bytes, host: str, port: int) -> bytes:
        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(len(data).to_bytes(2, "big") + data)
                await writer.drain()
                size = int.from_bytes(await reader.readexactly(2), "big")
                return await reader.readexactly(size)
            finally:
                writer.close()

        return await asyncio.wait_for(exchange(), self.cfg.recursor_timeout)

    def _admit_tcp(self, client: str) -> bool:
        """Make room for a new connection from `client`: at its own cap, or at the global cap,
        the longest-idle connection of that set is closed (RFC 7766 lets a server close idle
        connections), so idle or slow clients cannot lock out others. Refused only when every
        candidate is mid-query (each of those ends within TCP_IO_TIMEOUT)."""
        mine = [w for w, (who, _) in self._conns.items() if who == client]
        if len(mine) >= MAX_TCP_PER_CLIENT:
            candidates = mine
        elif len(self._conns) >= MAX_TCP_CONNS:
            candidates = list(self._conns)
        else:
            return True
        idle = [(since, w) for w in candidates if (since := self._conns[w][1]) is not None]
        if not idle:
            return False
        victim = min(idle, key=lambda pair: pair[0])[1]
        del self._conns[victim]
        victim.close()
        return True

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: several length-prefixed queries per connection, answered in order."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self._admit_tcp(client):
            writer.close()
            return
        loop = asyncio.get_running_loop()
        self._conns[writer] = (client, loop.time())
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while writer in self._conns:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                if writer not in self._conns:  # evicted while idle
                    break
                self._conns[writer] = (client, None)
                size = int.from_bytes(head, "big")
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IO_TIMEOUT)
                started = time.perf_counter()
                outcome = self._reply(data, TCP_MAX)
                reply = outcome.wire
                if outcome.need or outcome.forward:
                    reply = await self._complete(data, outcome, TCP_MAX, tcp=True)
                if reply:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
                self._timed(data, started)
                if writer in self._conns:
                    self._conns[writer] = (client, loop.time())
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("dns: TCP connection failed")
        finally:
            self._conns.pop(writer, None)
            writer.close()
