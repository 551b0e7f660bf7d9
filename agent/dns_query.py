"""One question being answered: Consul's query forms, the records they produce, the encoding.

Pure, like `agent.dns.answer()` which drives it; see that module for why answers are built from
memoized wire chunks.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable, Iterator

from dnslib import CNAME, NS, PTR, SOA, SRV, TXT, DNSRecord

from meshd import prepared_query as pq
from meshd import queries as q
from meshd.agent.dns_cache import Deps, Stamp
from meshd.agent.dns_types import DNSOutcome, DNSRead, DNSSettings, DNSView, service_ttl, zones
from meshd.agent.dns_wire import (
    HEADER,
    NOERROR,
    NXDOMAIN,
    RR_FIXED,
    T_A,
    T_AAAA,
    T_ANY,
    T_CNAME,
    T_NS,
    T_PTR,
    T_SOA,
    T_SRV,
    T_TXT,
    U16,
    UDP_PLAIN,
    Glue,
    Labels,
    clamp_ttl,
    encode_rdata,
    header_flags,
    memo_put,
    opt_wire,
    parse_addr,
    question_wire,
    rr_memo,
    to_labels,
)
from meshd.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, CheckServiceNode, Node

_KINDS = frozenset((b"service", b"connect", b"node", b"addr", b"query", b"ingress", b"virtual"))
_ADDR_TYPES = frozenset((T_A, T_AAAA, T_ANY))
IN_ADDR, IP6 = (b"in-addr", b"arpa"), (b"ip6", b"arpa")
_NODES = q.Nodes()
_MIN_RR = 12  # the smallest answer record: a name pointer and the fixed fields, no rdata
_QUERIES = q.PreparedQueries()


class Query:
    """One question being answered: header bits plus sections as encoded chunks. Each answer
    carries its own glue so truncation drops an SRV record together with its additional A
    record (Consul's syncExtra)."""

    __slots__ = (
        "_suffixes",
        "aa",
        "answers",
        "authority",
        "budget",
        "cfg",
        "complete",
        "deps",
        "needs",
        "qlabels",
        "qlow",
        "qtype",
        "rcode",
        "req",
        "stamp",
        "view",
        "zone",
    )

    def __init__(self, req: DNSRecord, view: DNSView, cfg: DNSSettings) -> None:
        q = req.questions[0]
        self.req, self.view, self.cfg = req, view, cfg
        self.qlabels: Labels = q.qname.label
        self.qlow = tuple(x.lower() for x in self.qlabels)
        self.qtype: int = q.qtype
        self.zone: Labels = zones(cfg)[0][1]
        self.aa = False
        self.rcode = NOERROR
        self.answers: list[tuple[bytes, Glue]] = []
        self.authority: list[bytes] = []
        self._suffixes: dict[Labels, int] | None = None
        self.stamp: Stamp | None = None  # the view's, when it has one
        self.deps: Deps = ()  # tuples, not lists: a cache hit never allocates these
        self.needs: tuple[DNSRead, ...] = ()
        # records worth building: one more than the answer can carry, so trimming still sees
        # there were more (and sets TC); `complete` is False when instances were left unbuilt
        self.budget = 1 << 30
        self.complete = True

    def fit(self, limit: int) -> None:
        """Bound the records built to what a `limit`-byte answer can carry (see `budget`)."""
        most = (limit - 12) // _MIN_RR + 1
        if limit == UDP_PLAIN and self.cfg.udp_answer_limit > 0:
            most = min(most, self.cfg.udp_answer_limit)
        self.budget = most + 1

    def uses(self, read: DNSRead) -> bool:
        """Record that this answer is built from `read`; False when the view does not hold it
        (the answer becomes NeedData, and the caller treats the data as absent meanwhile)."""
        if self.stamp is None:
            return True
        seen = self.stamp(read)
        if seen is None:
            if read not in self.needs:
                self.needs += (read,)
            return False
        self.deps += ((read, seen),)
        return True

    # ---- encoding ----

    def add(self, rtype: int, ttl: int, rdata: bytes, glue: Glue = ()) -> None:
        """An answer owned by the question name: a pointer to offset 12."""
        self.answers.append((b"\xc0\x0c" + RR_FIXED.pack(rtype, 1, ttl, len(rdata)) + rdata, glue))

    def rr(self, owner: Labels, rtype: int, ttl: int, rdata: bytes) -> bytes:
        """A record owned by another name (glue, SOA); memoized, as its encoding depends only on
        the key (compression points into the question, whose layout `qlow` fixes)."""
        key = (self.qlow, owner, rtype, ttl, rdata)
        data = rr_memo.get(key)
        if data is None:
            data = self.name(owner) + RR_FIXED.pack(rtype, 1, ttl, len(rdata)) + rdata
            memo_put(rr_memo, key, data)
        return data

    def name(self, labels: Labels) -> bytes:
        """Encode a name, compressed against a suffix of the question name when one matches."""
        sfx = self._suffixes
        if sfx is None:
            sfx, off = {}, 12
            for i, lab in enumerate(self.qlabels):
                sfx[self.qlow[i:]] = off
                off += 1 + len(lab)
            self._suffixes = sfx
        low = tuple(x.lower() for x in labels)
        out = []
        for i, lab in enumerate(labels):
            ptr = sfx.get(low[i:])
            if ptr is not None:
                out.append(U16.pack(0xC000 | ptr))
                return b"".join(out)
            out.append(bytes((len(lab),)) + lab)
        out.append(b"\x00")
        return b"".join(out)

    def soa(self) -> None:
        """RFC 2308: negative answers carry the zone's SOA so resolvers know how long to cache."""
        cfg, zone = self.cfg, self.zone
        times = (
            int(time.time()) & 0xFFFFFFFF,
            cfg.soa_refresh,
            cfg.soa_retry,
            cfg.soa_expire,
            cfg.soa_min_ttl,
        )
        rdata = encode_rdata(SOA, (b"ns", *zone), (b"hostmaster", *zone), times)
        self.authority.append(self.rr(zone, T_SOA, clamp_ttl(cfg.soa_min_ttl), rdata))

    def negative(self, rcode: int) -> None:
        self.rcode = rcode
        self.answers.clear()
        self.soa()

    def target(self, first: Labels | None, kind: bytes = b"node") -> Labels | None:
        """`FIRST.KIND.DC.DOMAIN`, or None when that would exceed DNS's 255-byte limit."""
        if first is None:
            return None
        name = (*first, kind, self.view.datacenter.encode(), *self.zone)
        return name if sum(map(len, name)) + len(name) < 255 else None

    # ---- the query forms ----

    def in_zone(self, rest: Labels, orig: Labels) -> None:
        """Consul's forms: NAME.KIND[.DC.dc] and the legacy NAME.KIND.DC, under a domain."""
        if not rest:
            return self.apex()
        dc = None
        if len(rest) >= 4 and rest[-1] == b"dc" and rest[-3] in _KINDS:
            dc, rest, orig = rest[-2], rest[:-2], orig[:-2]
        elif len(rest) >= 3 and rest[-2] in _KINDS and rest[-1] not in _KINDS:
            dc, rest, orig = rest[-1], rest[:-1], orig[:-1]
        kind, names, orig = rest[-1], rest[:-1], orig[:-1]
        if dc is not None and dc != self.view.datacenter.lower().encode():
            kind = b""  # no WAN federation: another datacenter's names do not exist here
        if kind == b"service" and names:
            if len(names) == 2 and names[0][:1] == b"_" and names[1][:1] == b"_":  # RFC 2782
                tag = names[1][1:]
                return self.service(orig[0][1:].decode(), None if tag in (b"tcp", b"udp") else tag)
            return self.service(orig[-1].decode(), b".".join(names[:-1]) or None)
        if kind == b"connect" and len(names) == 1:
            return self.service(orig[0].decode(), None, connect=True)
        if kind == b"node" and names:
            return self.node(b".".join(orig).decode())
        if kind == b"addr" and len(names) == 1:
            return self.addr(names[0])
        if kind == b"query" and len(names) == 1:
            return self.prepared(orig[0].decode())
        return self.negative(NXDOMAIN)

    def service(self, name: str, tag_label: bytes | None, connect: bool = False) -> None:
        view, cfg = self.view, self.cfg
        lookup = view.connect_instances if connect else view.service_instances
        lname = name.lower()
        instances = self.uses(q.ServiceNodes(Service=name, Connect=connect)) and lookup(name)
        if not instances and lname != name:
            instances = self.uses(q.ServiceNodes(Service=lname, Connect=connect)) and lookup(lname)
        if self.needs:
            return None
        tag = tag_label.decode().lower() if tag_label is not None else None
        # instances in a random order, health-checked as they are drawn: a 1,000-instance
        # service answered with 3 records draws a few, not 1,000
        healthy = _draw_healthy(list(instances or ()), cfg.only_passing, tag)
        first = next(healthy, None)
        if first is None:
            return self.negative(NXDOMAIN)
        self.instances(itertools.chain((first,), healthy), service_ttl(cfg, lname))

    def prepared(self, name: str) -> None:
        """`NAME.query.DOMAIN`: a prepared query, executed as the HTTP API does (its filters,
        its DNS TTL), answered like a service."""
        queries = getattr(self.view, "prepared_queries", None)
        if queries is None or not self.uses(_QUERIES):
            return None if queries is not None else self.negative(NXDOMAIN)
        resolved = pq.resolve(queries(), name)
        if resolved is None:
            return self.negative(NXDOMAIN)
        query = resolved.query
        svc = query["Service"]
        connect = bool(svc["Connect"]["Enabled"])
        if not self.uses(q.ServiceNodes(Service=svc["Service"], Connect=connect)):
            return None
        lookup = self.view.connect_instances if connect else self.view.service_instances
        rows = pq.select(query, lookup(svc["Service"]))
        if not rows:
            return self.negative(NXDOMAIN)
        warned = [(r, any(c.Status == HEALTH_WARNING for c in r.Checks)) for r in rows]
        random.shuffle(warned)
        ttl = pq.dns_ttl(query)
        self.instances(warned, clamp_ttl(ttl) if ttl is not None else service_ttl(self.cfg, name))

    def instances(self, healthy: Iterable[tuple[CheckServiceNode, bool]], ttl: int) -> None:
        """A/AAAA or SRV records for (instance, has a warning) pairs, in the order given, until
        `budget` records are built (then `complete` is False: the rest were never looked at)."""
        cfg, qtype = self.cfg, self.qtype
        budget = self.budget
        if qtype in _ADDR_TYPES and cfg.a_record_limit > 0:
            budget = min(budget, cfg.a_record_limit)
        healthy = iter(healthy)
        if qtype in _ADDR_TYPES:
            seen: set[str] = set()
            for inst, _warn in healthy:
                address = inst.Service.Address or inst.Node.Address
                if address not in seen:
                    seen.add(address)
                    if self.address_record(address, ttl) and len(self.answers) >= budget:
                        break
        elif qtype == T_SRV:
            for inst, warn in healthy:
                weights = inst.Service.Weights
                weight = (weights.Warning if warn else weights.Passing) if weights else 1
                target, glue = self.srv_target(inst, ttl)
                if target is not None:
                    rdata = encode_rdata(
                        SRV, 1, min(max(weight, 0), 0xFFFF), inst.Service.Port & 0xFFFF, target
                    )
                    self.add(T_SRV, ttl, rdata, glue)
                    if len(self.answers) >= budget:
                        break
        self.complete = next(healthy, None) is None
        if not self.answers:
            self.soa()

    def address_record(self, address: str, ttl: int) -> bool:
        """A or AAAA as asked, or a CNAME when the address is a hostname."""
        kind, value = parse_addr(address)
        if kind == 4 and self.qtype != T_AAAA:
            self.add(T_A, ttl, value)
        elif kind == 6 and self.qtype != T_A:
            self.add(T_AAAA, ttl, value)
        elif kind == 0 and value is not None:
            self.add(T_CNAME, ttl, encode_rdata(CNAME, value))
        else:
            return False
        return True

    def srv_target(self, inst: CheckServiceNode, ttl: int) -> tuple[Labels | None, Glue]:
        """Consul's SRV target: the node's name when the instance uses the node's address, the
        `<hex>.addr.DC.DOMAIN` form for a different IP (so the glue A is unambiguous), else the
        service's hostname itself (no glue: we are not authoritative for it)."""
        address = inst.Service.Address or inst.Node.Address
        kind, value = parse_addr(address)
        if kind == 0:
            return value, ()
        if address == inst.Node.Address:
            target = self.target(to_labels(inst.Node.Node))
        else:
            target = self.target((value.hex().encode(),), b"addr")
        if target is None:
            return None, ()
        return target, (self.rr(target, T_A if kind == 4 else T_AAAA, ttl, value),)

    def node(self, name: str) -> None:
        if not self.uses(_NODES):
            return None
        node = self.view.node(name) or _node_nocase(self.view, name)
        if node is None:
            return self.negative(NXDOMAIN)
        ttl = clamp_ttl(self.cfg.node_ttl)
        if self.qtype in _ADDR_TYPES:
            self.address_record(node.Address, ttl)
        if self.qtype in (T_TXT, T_ANY):
            for key, value in node.Meta.items():
                text = (value if key.startswith("rfc1035-") else f"{key}={value}").encode()
                chunks = tuple(text[i : i + 255] for i in range(0, len(text), 255)) or (b"",)
                self.add(T_TXT, ttl, encode_rdata(TXT, chunks))
        if not self.answers:
            self.soa()

    def addr(self, label: bytes) -> None:
        """`<hex>.addr.DC.DOMAIN`: the names our own SRV answers point at."""
        try:
            packed = bytes.fromhex(label.decode())
        except ValueError:
            packed = b""
        if len(packed) not in (4, 16):
            return self.negative(NXDOMAIN)
        rtype = T_A if len(packed) == 4 else T_AAAA
        if self.qtype in (rtype, T_ANY):
            self.add(rtype, 0, packed)
        else:
            self.soa()

    def apex(self) -> None:
        if self.qtype in (T_SOA, T_ANY):
            self.soa()
            self.answers.append((self.authority.pop(), ()))
        if self.qtype in (T_NS, T_ANY) and self.uses(_NODES):
            ttl = clamp_ttl(self.cfg.node_ttl)
            servers = self.view.server_nodes()
            if not servers:
                me = self.view.node(self.view.node_name)
                servers = [me] if me is not None else []
            for server in servers:
                target = self.target(to_labels(server.Node))
                kind, value = parse_addr(server.Address)
                if target is not None:
                    rtype = T_A if kind == 4 else T_AAAA
                    glue = (self.rr(target, rtype, ttl, value),) if kind else ()
                    self.add(T_NS, ttl, encode_rdata(NS, target), glue)
        if not self.answers:
            self.soa()

    def reverse(self) -> bool:
        """PTR for our nodes' addresses; False when no node has it, so the caller can recurse."""
        low = self.qlow
        try:
            if low[-2:] == IN_ADDR and len(low) == 6 and all(x.isdigit() for x in low[:4]):
                packed = bytes(int(x) for x in reversed(low[:4]))
            elif low[-2:] == IP6 and len(low) == 34 and all(len(x) == 1 for x in low[:32]):
                packed = bytes.fromhex(b"".join(reversed(low[:32])).decode())
            else:
                return False
        except ValueError:
            return False
        if not self.uses(_NODES):
            return True  # NeedData: asked again once the nodes are here
        ttl = clamp_ttl(self.cfg.node_ttl)
        found = [n for n in self.view.nodes() if parse_addr(n.Address)[1] == packed]
        if not found:
            return False
        self.aa = True
        if self.qtype in (T_PTR, T_ANY):
            for node in found:
                target = self.target(to_labels(node.Node))
                if target is not None:
                    self.add(T_PTR, ttl, encode_rdata(PTR, target))
        if not self.answers:
            self.soa()
        return True

    def assemble(self, limit: int, edns: bool) -> DNSOutcome:
        """Encode, trimming answers from the end to fit `limit` (Consul's trimUDPResponse): a
        plain 512-byte UDP answer also stops at `udp_answer_limit` records. Running out of room
        always sets TC; the count limit sets it only with `enable_truncate`, as in Consul."""
        answers, authority, cfg = self.answers, self.authority, self.cfg
        tc = False
        keep = len(answers)
        if limit == UDP_PLAIN and 0 < cfg.udp_answer_limit < keep:
            keep, tc = cfg.udp_answer_limit, cfg.enable_truncate
        qwire = question_wire(self.req)
        opt = opt_wire(0) if edns else b""
        size = 12 + len(qwire) + sum(map(len, authority)) + len(opt)
        if size > limit:  # only a pathological SOA could do this; never exceed the limit anyway
            authority, size, keep, tc = [], 12 + len(qwire) + len(opt), 0, True
        trimmed = keep < len(answers)
        an, ar, overflow = _sections(answers, keep, size, limit, trimmed)
        if overflow and not trimmed:
            an, ar, overflow = _sections(answers, keep, size, limit, True)
        tc = tc or overflow
        if opt:
            ar.append(opt)
        flags = header_flags(self.req, self.rcode, self.aa, tc, bool(cfg.recursors))
        head = HEADER.pack(self.req.header.id, flags, 1, len(an), len(authority), len(ar))
        return DNSOutcome(
            b"".join((head, qwire, *an, *authority, *ar)), rcode=self.rcode, truncated=tc
        )


def _sections(
    answers: list[tuple[bytes, Glue]], keep: int, size: int, limit: int, dedupe: bool
) -> tuple[list[bytes], list[bytes], bool]:
    """(answer, additional, overflowed). An answer that is not being trimmed carries one glue
    record per SRV record even when targets repeat (HAProxy's server-template fills one slot per
    additional record); once trimming, a target's glue is sent once, as Consul's syncExtra."""
    an: list[bytes] = []
    ar: list[bytes] = []
    seen: set[bytes] | None = set() if dedupe else None
    for rr, glue in answers[:keep]:
        extra = glue
        if seen is not None and glue:
            extra = tuple(g for g in glue if g not in seen)
            seen.update(extra)
        grow = len(rr) + sum(map(len, extra))
        if size + grow > limit:
            return an, ar, True
        size += grow
        an.append(rr)
        if extra:
            ar.extend(extra)
    return an, ar, False


def _draw_healthy(
    pool: list[CheckServiceNode], only_passing: bool, tag: str | None
) -> Iterator[tuple[CheckServiceNode, bool]]:
    """(instance, has a warning) for the instances DNS may hand out, in a uniformly random
    order, drawn one at a time (a partial Fisher-Yates shuffle of `pool`, which it reorders):
    any critical check (which includes maintenance) hides an instance, and with only_passing so
    does a warning."""
    n = len(pool)
    for i in range(n):
        j = random.randrange(i, n)
        inst = pool[j]
        pool[j] = pool[i]  # slot i is never looked at again: no need to store `inst` there
        warn = False
        for check in inst.Checks:
            status = check.Status
            if status == HEALTH_PASSING:
                continue
            if status == HEALTH_CRITICAL or only_passing:
                break
            warn = warn or status == HEALTH_WARNING
        else:
            if tag is None or any(t.lower() == tag for t in inst.Service.Tags):
                yield inst, warn


def _node_nocase(view: DNSView, name: str) -> Node | None:
    """Labels are case-insensitive but the catalog is keyed by exact name; the scan runs only
    when the name as asked missed."""
    low = name.lower()
    if low != name and (node := view.node(low)) is not None:
        return node
    return next((n for n in view.nodes() if n.Node.lower() == low), None)
