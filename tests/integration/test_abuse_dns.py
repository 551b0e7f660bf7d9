"""DNS abuse against a real `meshd agent -dev`: idle TCP connections from one address, and a
name longer than DNS allows."""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.query
import dns.rcode
import pytest
from helpers import MeshdProcess

HOGS = 600  # more than the agent's 512 TCP connections in all


def _idle(agent: MeshdProcess) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind(("127.0.0.1", 0))
    try:
        sock.connect(("127.0.0.1", agent.dns_port))
    except OSError:
        sock.close()
        return None
    return sock


@pytest.mark.timeout(120)
def test_idle_tcp_connections_from_one_address_do_not_lock_out_another(
    agent: MeshdProcess,
) -> None:
    hogs = [s for s in (_idle(agent) for _ in range(HOGS)) if s is not None]
    try:
        assert len(hogs) > 512
        query = dns.message.make_query("consul.service.consul", "A")
        reply = dns.query.tcp(
            query, "127.0.0.1", port=agent.dns_port, timeout=5, source="127.0.0.2"
        )
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    finally:
        for sock in hogs:
            sock.close()
    assert agent.put("/v1/kv/after-dns-hogs", b"ok").status == 200


def test_a_name_over_255_bytes_is_formerr(agent: MeshdProcess) -> None:
    name = b"".join(bytes((63,)) + b"x" * 63 for _ in range(4)) + b"\x00"
    packet = struct.pack("!6H", 0x5151, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, ("127.0.0.1", agent.dns_port))
        reply = dns.message.from_wire(s.recv(65535))
    assert reply.id == 0x5151 and reply.rcode() == dns.rcode.FORMERR
