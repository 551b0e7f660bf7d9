"""Consul-compatible DNS answers, computed without sockets.

`answer()` is a pure function of (request, catalog view, settings, size limit) so every rule of
the DNS interface is unit-testable without a network; `agent.dns_server` only moves bytes.

dnslib parses requests and encodes every rdata. The response is assembled from per-record wire
chunks rather than a `dnslib.DNSRecord`, for two reasons measured on this machine: building and
packing a `DNSRecord` with three A records costs ~70 us (the target, 20,000 queries/s per core,
leaves 50 us for everything), and chunks make truncation exact and cheap (drop whole records until
the message fits, no re-encoding). Owner names are compressed only against the question name,
which always sits at offset 12, so every chunk is position-independent and can be memoized.
"""

from __future__ import annotations

from dnslib import DNSRecord

from meshd.agent.dns_cache import AnswerCache
from meshd.agent.dns_query import IN_ADDR, IP6, Query
from meshd.agent.dns_types import DNSOutcome, DNSRead, DNSSettings, DNSView, service_ttl, zones
from meshd.agent.dns_wire import (
    BADVERS,
    FORMERR,
    HEADER,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TCP_MAX,
    UDP_PLAIN,
    find_opt,
    header_flags,
    opt_wire,
    parse_packet,
    question_wire,
    udp_limit,
)

__all__ = [  # the DNS interface the listener and the tests use (some defined in dns_wire)
    "FORMERR",
    "NOTIMP",
    "NXDOMAIN",
    "REFUSED",
    "SERVFAIL",
    "TCP_MAX",
    "UDP_PLAIN",
    "DNSOutcome",
    "DNSRead",
    "DNSSettings",
    "DNSView",
    "answer",
    "error_response",
    "parse_packet",
    "service_ttl",
]


def error_response(req: DNSRecord, rcode: int, cfg: DNSSettings) -> bytes:
    """An empty response with RCODE (the low 4 bits; an EDNS request gets the rest in its OPT),
    echoing the ID and a single question: request-level errors and SERVFAIL after forwarding."""
    opt, _ = find_opt(req)
    qwire = question_wire(req) if len(req.questions) == 1 else b""
    tail = opt_wire(rcode >> 4) if opt is not None else b""
    flags = header_flags(req, rcode, False, False, bool(cfg.recursors))
    return HEADER.pack(req.header.id, flags, bool(qwire), 0, 0, bool(tail)) + qwire + tail


def answer(request: DNSRecord, view: DNSView, cfg: DNSSettings, *, max_size: int) -> DNSOutcome:
    """Answer one parsed request. `max_size` is the transport's limit for a plain request
    (UDP_PLAIN for UDP, TCP_MAX for TCP); an EDNS0 request may raise it up to EDNS_MAX."""
    h = request.header
    if h.qr or len(request.questions) != 1:
        return DNSOutcome(error_response(request, FORMERR, cfg), rcode=FORMERR)
    if h.opcode != 0:
        return DNSOutcome(error_response(request, NOTIMP, cfg), rcode=NOTIMP)
    opt, bad_opt = find_opt(request)
    if bad_opt:
        return DNSOutcome(error_response(request, FORMERR, cfg), rcode=FORMERR)
    if opt is not None and (opt.ttl >> 16) & 0xFF:  # EDNS version > 0: RFC 6891 says BADVERS
        return DNSOutcome(error_response(request, BADVERS, cfg), rcode=BADVERS)

    query = Query(request, view, cfg)
    limit = udp_limit(max_size, opt)
    query.fit(limit)
    stamp = getattr(view, "stamp", None)
    cache: AnswerCache | None = None
    if stamp is not None:
        query.stamp = stamp
        if not cfg.a_record_limit:
            cache = getattr(view, "dns_answers", None)
            if cache is not None and cache.restore(query, stamp):
                return query.assemble(limit, opt is not None)
    low = query.qlow
    for zone_low, zone in zones(cfg):
        n = len(zone_low)
        if low[-n:] == zone_low:
            query.aa, query.zone = True, zone
            query.in_zone(low[:-n], query.qlabels[: len(low) - n])
            break
    else:
        reverse = low[-2:] in (IN_ADDR, IP6)
        if not (reverse and query.reverse()):
            if cfg.recursors:
                return DNSOutcome(b"", forward=True)
            if not reverse:
                return DNSOutcome(error_response(request, REFUSED, cfg), rcode=REFUSED)
            query.aa = True
            query.negative(NXDOMAIN)
    if query.needs:
        return DNSOutcome(b"", need=query.needs)
    if cache is not None and query.complete:  # a sample must not be frozen into the cache
        cache.store(query)
    return query.assemble(limit, opt is not None)
