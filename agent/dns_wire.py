"""DNS wire encoding for `agent.dns`: constants, memoized rdata and names, header pieces.

Every memo table here is a pure function of its key, so sharing across queries is safe; each is
cleared wholesale when it reaches MEMO_MAX entries (catalog-sized).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from dnslib import DNSBuffer, DNSRecord

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_TXT, T_AAAA, T_SRV, T_OPT, T_ANY = (
    1,
    2,
    5,
    6,
    12,
    16,
    28,
    33,
    41,
    255,
)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
UDP_PLAIN = 512  # a UDP answer's limit without EDNS0 (RFC 1035)
EDNS_MAX = 4096  # the most we send over UDP even if a client offers more (fragmentation)
TCP_MAX = 65535

Labels = tuple[bytes, ...]  # a name, label by label
Glue = tuple[bytes, ...]  # encoded additional records that travel with one answer
MEMO_MAX = 50_000
U16, RR_FIXED, HEADER = struct.Struct("!H"), struct.Struct("!HHIH"), struct.Struct("!6H")


rdata_memo: dict[tuple[Any, ...], bytes] = {}
rr_memo: dict[tuple[Any, ...], bytes] = {}
addr_memo: dict[str, tuple[int, Any]] = {}
labels_memo: dict[str, Labels | None] = {}


def memo_put(table: dict[Any, Any], key: Any, value: Any) -> None:
    if len(table) >= MEMO_MAX:
        table.clear()
    table[key] = value


class _FlatBuffer(DNSBuffer):
    """rdata is encoded alone and spliced into other messages, so it must hold no compression
    pointers (dnslib would compress SOA's rname against its mname, relative to this buffer)."""

    def encode_name(self, name: Any) -> None:
        self.encode_name_nocompress(name)


def encode_rdata(cls: type, *args: Any) -> bytes:
    """dnslib encodes each distinct rdata once; later queries reuse the bytes."""
    key = (cls, *args)
    data = rdata_memo.get(key)
    if data is None:
        buf = _FlatBuffer()
        cls(*args).pack(buf)
        data = bytes(buf.data)
        memo_put(rdata_memo, key, data)
    return data


def to_labels(name: str) -> Labels | None:
    """A DNS name as labels, or None when it cannot be one (so the record is skipped)."""
    got = labels_memo.get(name, False)
    if got is not False:
        return got  # type: ignore[return-value]
    try:
        parts = tuple(p.encode() for p in name.rstrip(".").split("."))
    except UnicodeError:
        parts = ()
    ok = bool(parts) and all(0 < len(p) < 64 for p in parts) and sum(map(len, parts)) < 200
    memo_put(labels_memo, name, parts if ok else None)
    return parts if ok else None


def parse_addr(address: str) -> tuple[int, Any]:
    """(4, packed) / (6, packed) for IPs (packed is the A/AAAA rdata), (0, labels) for
    hostnames, (0, None) when unusable."""
    got = addr_memo.get(address)
    if got is None:
        for family, kind in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            try:
                got = (kind, socket.inet_pton(family, address))
                break
            except (OSError, ValueError):
                continue
        else:
            got = (0, to_labels(address) if address else None)
        memo_put(addr_memo, address, got)
    return got


def clamp_ttl(value: float) -> int:
    return min(max(int(value), 0), 0x7FFFFFFF)


def header_flags(req: DNSRecord, rcode: int, aa: bool, tc: bool, ra: bool) -> int:
    h = req.header
    return (
        0x8000
        | (h.opcode & 0xF) << 11
        | aa << 10
        | tc << 9
        | (h.rd & 1) << 8
        | ra << 7
        | (rcode & 0xF)
    )


def question_wire(req: DNSRecord) -> bytes:
    q = req.questions[0]
    parts = [bytes((len(lab),)) + lab for lab in q.qname.label]
    parts.append(b"\x00" + struct.pack("!HH", q.qtype, q.qclass))
    return b"".join(parts)


def opt_wire(ext_rcode: int) -> bytes:
    return b"\x00" + RR_FIXED.pack(T_OPT, EDNS_MAX, (ext_rcode & 0xFF) << 24, 0)


def find_opt(req: DNSRecord) -> tuple[Any, bool]:
    """(the OPT record or None, whether the request is malformed by carrying several)."""
    opts = [rr for rr in req.ar if rr.rtype == T_OPT]
    return (opts[0] if len(opts) == 1 else None), len(opts) > 1


def udp_limit(max_size: int, opt: Any) -> int:
    if opt is not None and max_size < EDNS_MAX:
        return max(max_size, min(max(opt.rclass, UDP_PLAIN), EDNS_MAX))
    return max_size


def fit_udp(request: DNSRecord, reply: bytes) -> bytes:
    """A reply we did not build (a recursor's) held to the client's UDP limit: 512 bytes
    without EDNS0 (RFC 1035), else what it offered. Too big becomes the header and question
    with TC set, so the client retries over TCP instead of getting a datagram it cannot take."""
    if len(reply) <= UDP_PLAIN:
        return reply
    opt, _ = find_opt(request)
    if len(reply) <= udp_limit(UDP_PLAIN, opt):
        return reply
    tail = opt_wire(0) if opt is not None else b""
    flags = U16.unpack_from(reply, 2)[0] | 0x0200
    head = HEADER.pack(request.header.id, flags, 1, 0, 0, bool(tail))
    return head + question_wire(request) + tail


MAX_NAME_WIRE = 255  # RFC 1035 2.3.4: a name's wire form, length octets included


def _wire_len(name: Any) -> int:
    return sum(len(label) + 1 for label in name.label) + 1


def _names_fit(req: DNSRecord) -> bool:
    """dnslib decodes names longer than DNS allows; such a request is malformed (FORMERR),
    and answering it would echo an oversized question."""
    names = [qq.qname for qq in req.questions]
    names += [rr.rname for rr in (*req.rr, *req.auth, *req.ar)]
    return all(_wire_len(n) <= MAX_NAME_WIRE for n in names)


def parse_packet(data: bytes) -> DNSRecord | bytes:
    """The request, or the bytes to send instead: FORMERR for a malformed packet (with its ID
    when at least two bytes arrived) or b"" to drop it (too short to address, or a response:
    answering responses lets two servers loop forever)."""
    if len(data) >= 3 and data[2] & 0x80:
        return b""
    try:
        request = DNSRecord.parse(data)
    except Exception:
        request = None
    if request is not None and _names_fit(request):
        return request
    if len(data) < 2:
        return b""
    opcode_rd = (data[2] & 0x79) << 8 if len(data) >= 3 else 0
    return HEADER.pack(U16.unpack_from(data)[0], 0x8000 | opcode_rd | FORMERR, 0, 0, 0, 0)
