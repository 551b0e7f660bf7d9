"""agent/dns_server.py over real sockets on 127.0.0.1, queried with dnspython.

The servers run on an event loop in a background thread so the tests can use dnspython's
blocking clients, as a real resolver would.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import pytest

from meshd import queries as q
from meshd.agent.dns import DNSRead, DNSSettings
from meshd.agent.dns_server import DNSServer, parse_recursor
from meshd.structs import CheckServiceNode, HealthCheck, Node, NodeService


@dataclass
class MemView:
    datacenter: str = "dc1"
    node_name: str = "agent-1"
    services: dict[str, list[CheckServiceNode]] = field(default_factory=dict)

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self.services.get(name, [])

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return []

    def node(self, name: str) -> Node | None:
        return None

    def nodes(self) -> list[Node]:
        return []

    def server_nodes(self) -> list[Node]:
        return []

    def add(self, service: str, count: int, prefix: str = "10.0.0") -> None:
        for i in range(count):
            node = Node(Node=f"{service}-node-{i}", Address=f"{prefix}.{i + 1}")
            svc = NodeService(ID=f"{service}-{i}", Service=service, Port=8000 + i)
            check = HealthCheck(Node=node.Node, CheckID="serfHealth", Name="s", Status="passing")
            self.services.setdefault(service, []).append(
                CheckServiceNode(Node=node, Service=svc, Checks=[check])
            )


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def start(loop: LoopThread) -> Iterator[Any]:
    started: list[DNSServer] = []

    def _start(view: MemView, cfg: DNSSettings) -> DNSServer:
        server = DNSServer(view, cfg, "127.0.0.1", 0)
        loop.run(server.start())
        started.append(server)
        return server

    yield _start
    for server in started:
        loop.run(server.stop())


@pytest.fixture
def server(start: Any) -> DNSServer:
    view = MemView()
    view.add("web", 2)
    view.add("big", 30, prefix="10.0.3")
    return start(view, DNSSettings())


def udp(server: DNSServer, name: str, rtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    return dns.query.udp(q, "127.0.0.1", port=server.udp_port, timeout=3)


def tcp(server: DNSServer, name: str, rtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    return dns.query.tcp(q, "127.0.0.1", port=server.tcp_port, timeout=3)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def raw_udp(server: DNSServer, data: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", server.udp_port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_binds_udp_and_tcp_on_one_ephemeral_port(server: DNSServer) -> None:
    assert server.udp_port > 0 and server.udp_port == server.tcp_port
    assert addresses(udp(server, "web.service.consul")) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(tcp(server, "web.service.consul")) == ["10.0.0.1", "10.0.0.2"]
    srv = udp(server, "_web._tcp.service.consul", "SRV")
    assert len(srv.answer[0]) == 2 and len(srv.additional) == 2
    nx = udp(server, "nope.service.consul")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA


def test_truncation_then_tcp_fallback(server: DNSServer) -> None:
    plain = udp(server, "big.service.consul")
    assert plain.flags & dns.flags.TC and len(addresses(plain)) == 3
    q = dns.message.make_query("big.service.consul", "A")
    full, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=server.udp_port, timeout=3)
    assert used_tcp and len(addresses(full)) == 30 and not full.flags & dns.flags.TC
    srv = tcp(server, "big.service.consul", "SRV")
    assert len(srv.answer[0]) == 30 and len(srv.additional) == 30
    edns = udp(server, "big.service.consul", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC and len(addresses(edns)) == 30 and edns.payload == 4096
    srv_udp = udp(server, "big.service.consul", "SRV", use_edns=0, payload=1232)
    assert srv_udp.flags & dns.flags.TC and 3 < len(srv_udp.answer[0]) < 30


def test_malformed_packets_get_formerr_and_server_survives(server: DNSServer) -> None:
    for junk in (
        b"\x12\x34",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
    ):
        reply = raw_udp(server, junk)
        assert reply is not None and len(reply) >= 12
        ident, flags = struct.unpack("!HH", reply[:4])
        assert ident == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert raw_udp(server, b"\x01", timeout=0.3) is None  # too short to address: dropped
    two = dns.message.make_query("web.service.consul", "A")
    two.question.append(dns.message.make_query("x.service.consul", "A").question[0])
    assert struct.unpack("!H", raw_udp(server, two.to_wire())[2:4])[0] & 0xF == 1  # type: ignore[index]
    noise = os.urandom(4096)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(300):
            s.sendto(noise[i : i + 1 + i % 80], ("127.0.0.1", server.udp_port))
    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=3) as s:
        s.sendall(struct.pack("!H", 5) + b"\xbe\xef\x01\x00\x00")
        size = struct.unpack("!H", s.recv(2))[0]
        reply = s.recv(size)
        assert reply[:2] == b"\xbe\xef" and reply[3] & 0xF == dns.rcode.FORMERR
    # the burst can still fill the socket's receive buffer, dropping one datagram (as a real
    # resolver would, retry): the UDP listener must answer again
    for attempt in range(10):
        try:
            msg = udp(server, "web.service.consul")
            break
        except dns.exception.Timeout:
            if attempt == 9:
                raise
    assert addresses(msg) == ["10.0.0.1", "10.0.0.2"]


def test_tcp_connection_carries_several_queries(server: DNSServer) -> None:
    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=3) as s:
        for name in ("web.service.consul", "nope.service.consul"):
            wire = dns.message.make_query(name, "A").to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
        got = []
        for _ in range(2):
            size = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            got.append(dns.message.from_wire(s.recv(size, socket.MSG_WAITALL)).rcode())
    assert got == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN]


def test_refused_without_recursors(server: DNSServer) -> None:
    msg = udp(server, "example.com")
    assert msg.rcode() == dns.rcode.REFUSED and not msg.flags & dns.flags.RA
    assert tcp(server, "example.com").rcode() == dns.rcode.REFUSED


def test_forwards_to_recursors_in_turn(start: Any) -> None:
    upstream_view = MemView(datacenter="up")
    upstream_view.add("api", 1, prefix="10.7.7")
    upstream = start(upstream_view, DNSSettings(domain="upstream."))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))  # receives and never answers: exercises the timeout
        dead = blackhole.getsockname()[1]
        cfg = DNSSettings(
            recursor_timeout=0.3,
            recursors=[f"127.0.0.1:{dead}", "not-an-ip", f"127.0.0.1:{upstream.udp_port}"],
        )
        view = MemView()
        view.add("web", 1)
        front = start(view, cfg)
        msg = udp(front, "api.service.upstream")
        assert addresses(msg) == ["10.7.7.1"] and msg.rcode() == dns.rcode.NOERROR
        assert addresses(tcp(front, "api.service.upstream")) == ["10.7.7.1"]
        assert udp(front, "nope.service.upstream").rcode() == dns.rcode.NXDOMAIN
        local = udp(front, "web.service.consul")
        assert addresses(local) == ["10.0.0.1"] and local.flags & dns.flags.RA


def test_servfail_when_every_recursor_fails(start: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()  # nothing listens: ICMP port unreachable, fails fast
        cfg = DNSSettings(
            recursor_timeout=0.3,
            recursors=[f"127.0.0.1:{closed_port}", f"127.0.0.1:{blackhole.getsockname()[1]}"],
        )
        front = start(MemView(), cfg)
        msg = udp(front, "example.com")
        assert msg.rcode() == dns.rcode.SERVFAIL
        assert msg.question[0].name.to_text() == "example.com."
        assert tcp(front, "example.com").rcode() == dns.rcode.SERVFAIL


def test_parse_recursor() -> None:
    assert parse_recursor("8.8.8.8") == ("8.8.8.8", 53)
    assert parse_recursor("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_recursor("[::1]:53") == ("::1", 53)
    assert parse_recursor("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("dns.google", "1.2.3.4:0", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_recursor(bad)


class ColdView(MemView):
    """A client agent's view: a service's data is absent until `load` fetches it (cold); the
    DNS core says so with NeedData, and answers from memory once it is there (warm)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.loaded: list[tuple[DNSRead, ...]] = []
        self.held: set[DNSRead] = set()
        self.fail = fail

    def stamp(self, read: DNSRead) -> int | None:
        return 1 if read in self.held else None

    async def load(self, reads: tuple[DNSRead, ...]) -> bool:
        self.loaded.append(reads)
        await asyncio.sleep(0.05)  # the fetch from the servers
        if self.fail:
            return False
        for read in reads:
            if isinstance(read, q.ServiceNodes) and read.Service == "web":
                self.add("web", 1, prefix="10.5.5")
            self.held.add(read)
        return True


def test_need_data_is_loaded_before_answering(start: Any) -> None:
    view = ColdView()
    server = start(view, DNSSettings())
    web = (q.ServiceNodes(Service="web"),)
    assert addresses(udp(server, "web.service.consul")) == ["10.5.5.1"]  # cold: loaded first
    assert addresses(udp(server, "web.service.consul")) == ["10.5.5.1"]  # warm: from memory
    assert addresses(tcp(server, "web.service.consul")) == ["10.5.5.1"]
    assert view.loaded == [web]
    assert tcp(server, "nope.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert udp(server, "nope.service.consul").rcode() == dns.rcode.NXDOMAIN
    assert view.loaded == [web, (q.ServiceNodes(Service="nope"),)]


def test_data_that_cannot_be_loaded_is_servfail(start: Any) -> None:
    server = start(ColdView(fail=True), DNSSettings())
    assert udp(server, "web.service.consul").rcode() == dns.rcode.SERVFAIL
    assert tcp(server, "web.service.consul").rcode() == dns.rcode.SERVFAIL
    assert udp(server, "consul", "SOA").rcode() == dns.rcode.NOERROR  # needs no data


class BrokenView(MemView):
    def service_instances(self, name: str) -> list[CheckServiceNode]:
        raise RuntimeError("catalog exploded")


def test_view_failure_is_servfail_not_a_crash(start: Any) -> None:
    server = start(BrokenView(), DNSSettings())
    assert udp(server, "web.service.consul").rcode() == dns.rcode.SERVFAIL
    assert tcp(server, "web.service.consul").rcode() == dns.rcode.SERVFAIL
    assert udp(server, "consul", "SOA").rcode() == dns.rcode.NOERROR


# ---- hardening: oversized names, oversized UDP replies, parse memory, TCP exhaustion ----------


def test_name_over_255_bytes_is_formerr(server: DNSServer) -> None:
    name = b"".join(bytes((63,)) + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 bytes on the wire
    packet = struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    reply = raw_udp(server, packet)
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x4242 and msg.rcode() == dns.rcode.FORMERR and not msg.question
    fits = b"".join(bytes((63,)) + b"a" * 63 for _ in range(3)) + b"\x3da" + b"a" * 60 + b"\x00"
    ok = struct.pack("!6H", 0x4343, 0x0100, 1, 0, 0, 0) + fits + b"\x00\x01\x00\x01"
    assert len(fits) == 255
    reply = raw_udp(server, ok)
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED


class BigUpstream:
    """A recursor that ignores the client's limit and answers every query with ~1 KB."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            name = query.question[0].name
            rrset = reply.find_rrset(reply.answer, name, 1, 1, create=True)
            for i in range(60):
                rrset.add(dns.rdata.from_text(1, 1, f"10.9.0.{i + 1}"))
            self.sock.sendto(reply.to_wire(max_size=65535), addr)


def test_forwarded_udp_reply_never_exceeds_the_clients_limit(start: Any) -> None:
    upstream = BigUpstream()
    try:
        front = start(MemView(), DNSSettings(recursors=[f"127.0.0.1:{upstream.port}"]))
        plain = dns.message.make_query("example.com", "A", use_edns=False)
        reply = raw_udp(front, plain.to_wire(), timeout=3)
        assert reply is not None and len(reply) <= 512
        msg = dns.message.from_wire(reply)
        assert msg.flags & dns.flags.TC and msg.id == plain.id
        assert msg.question[0].name.to_text() == "example.com."
        edns = udp(front, "example.com", use_edns=0, payload=4096)
        assert len(addresses(edns)) == 60 and not edns.flags & dns.flags.TC
    finally:
        upstream.sock.close()


def stuffed_query(i: int) -> bytes:
    """~58 KB: one question and 3,600 additional A records (pointers to the question name)."""
    head = struct.pack("!6H", i & 0xFFFF, 0x0100, 1, 0, 0, 3600)
    question = b"\x03web\x07service\x06consul\x00\x00\x01\x00\x01"
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4)
    records = b"".join(rr + struct.pack("!I", i * 4096 + n) for n in range(3600))
    return head + question + records


def test_parse_memo_does_not_keep_huge_queries(server: DNSServer) -> None:
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(8):
            reply = raw_udp(server, stuffed_query(i), timeout=10)
            assert reply is not None and dns.message.from_wire(reply).answer
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4 * 1024 * 1024, f"{retained} bytes kept after 8 large queries"


def open_idle(server: DNSServer, source: str) -> socket.socket:
    """A TCP connection that asked one question, got its answer and now sits idle."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.tcp_port))
    wire = dns.message.make_query("web.service.consul", "A").to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    size = struct.unpack("!H", sock.recv(2))[0]
    assert len(sock.recv(size, socket.MSG_WAITALL)) == size
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


def test_idle_tcp_connections_cannot_lock_out_other_clients(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshd.agent import dns_server

    monkeypatch.setattr(dns_server, "MAX_TCP_CONNS", 16)
    hogs = [open_idle(server, "127.0.0.1") for _ in range(16)]
    try:
        q = dns.message.make_query("web.service.consul", "A")
        msg = dns.query.tcp(q, "127.0.0.1", port=server.tcp_port, timeout=3, source="127.0.0.2")
        assert addresses(msg) == ["10.0.0.1", "10.0.0.2"]
        assert closed_by_server(hogs[0])  # the longest idle made room
    finally:
        for sock in hogs:
            sock.close()


def test_one_client_cannot_hold_more_than_its_share(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshd.agent import dns_server

    monkeypatch.setattr(dns_server, "MAX_TCP_PER_CLIENT", 4)
    conns = [open_idle(server, "127.0.0.1") for _ in range(6)]
    other = open_idle(server, "127.0.0.2")
    try:
        assert closed_by_server(conns[0]) and closed_by_server(conns[1])
        wire = dns.message.make_query("web.service.consul", "A").to_wire()
        for sock in (conns[-1], other):  # the newest ones, and other clients', still serve
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            assert len(sock.recv(2)) == 2
    finally:
        for sock in (*conns, other):
            sock.close()
