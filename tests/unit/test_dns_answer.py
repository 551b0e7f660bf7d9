"""agent/dns.py: Consul's DNS forms, answered from a small in-memory view (no sockets)."""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass, field

import dns.message
import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from meshd.agent.dns import (
    FORMERR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    TCP_MAX,
    UDP_PLAIN,
    DNSOutcome,
    DNSSettings,
    answer,
    parse_packet,
    service_ttl,
)
from meshd.structs import CheckServiceNode, HealthCheck, Node, NodeService, Weights


@dataclass
class MemView:
    datacenter: str = "dc1"
    node_name: str = "agent-1"
    services: dict[str, list[CheckServiceNode]] = field(default_factory=dict)
    connect: dict[str, list[CheckServiceNode]] = field(default_factory=dict)
    node_map: dict[str, Node] = field(default_factory=dict)
    servers: list[str] = field(default_factory=list)

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self.services.get(name, [])

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return self.connect.get(name, [])

    def node(self, name: str) -> Node | None:
        return self.node_map.get(name)

    def nodes(self) -> list[Node]:
        return list(self.node_map.values())

    def server_nodes(self) -> list[Node]:
        return [self.node_map[s] for s in self.servers if s in self.node_map]

    def add(
        self,
        node: str,
        addr: str,
        service: str,
        sid: str,
        *,
        port: int = 80,
        svc_addr: str = "",
        tags: tuple[str, ...] = (),
        status: str = "passing",
        check_id: str = "",
        weights: Weights | None = None,
        meta: dict[str, str] | None = None,
    ) -> CheckServiceNode:
        n = self.node_map.setdefault(
            node, Node(Node=node, Address=addr, Datacenter="dc1", Meta=meta or {})
        )
        svc = NodeService(
            ID=sid,
            Service=service,
            Tags=list(tags),
            Address=svc_addr,
            Port=port,
            Weights=weights or Weights(),
        )
        checks = [
            HealthCheck(Node=node, CheckID="serfHealth", Name="serf", Status="passing"),
            HealthCheck(
                Node=node,
                CheckID=check_id or f"service:{sid}",
                Name="c",
                Status=status,
                ServiceID=sid,
            ),
        ]
        inst = CheckServiceNode(Node=n, Service=svc, Checks=checks)
        self.services.setdefault(service, []).append(inst)
        return inst


def ask(
    view: MemView,
    name: str,
    qtype: str = "A",
    cfg: DNSSettings | None = None,
    *,
    max_size: int = TCP_MAX,
    edns: int | None = None,
) -> DNSRecord:
    return outcome(view, name, qtype, cfg, max_size=max_size, edns=edns).response


def outcome(
    view: MemView,
    name: str,
    qtype: str = "A",
    cfg: DNSSettings | None = None,
    *,
    max_size: int = TCP_MAX,
    edns: int | None = None,
) -> DNSOutcome:
    req = DNSRecord.question(name, qtype)
    if edns is not None:
        req.add_ar(EDNS0(udp_len=edns))
    out = answer(req, view, cfg or DNSSettings(), max_size=max_size)
    if not out.forward:
        msg = dns.message.from_wire(out.wire)  # dnspython must accept every response we build
        assert msg.id == req.header.id
    return out


def rdatas(resp: DNSRecord, rtype: str | None = None) -> list[str]:
    return sorted(str(rr.rdata) for rr in resp.rr if rtype is None or QTYPE[rr.rtype] == rtype)


@pytest.fixture
def view() -> MemView:
    v = MemView(servers=["server-1"])
    v.node_map["server-1"] = Node(Node="server-1", Address="10.0.0.100")
    v.node_map["agent-1"] = Node(Node="agent-1", Address="10.0.0.1")
    v.add("n1", "10.0.0.1", "web", "web-1", tags=("v1", "Primary"), port=8080)
    v.add(
        "n2",
        "10.0.0.2",
        "web",
        "web-2",
        tags=("v2",),
        port=8081,
        status="warning",
        weights=Weights(Passing=10, Warning=3),
    )
    v.add("n3", "10.0.0.3", "web", "web-3", port=8082, status="critical")
    v.add(
        "n4",
        "10.0.0.4",
        "web",
        "web-4",
        port=8083,
        status="critical",
        check_id="_service_maintenance:web-4",
    )
    v.add(
        "n5",
        "10.0.0.5",
        "db",
        "db-1",
        svc_addr="10.9.0.5",
        port=5432,
        meta={"env": "prod", "rack": "r1"},
    )
    v.add("n6", "10.0.0.6", "ext", "ext-1", svc_addr="api.example.com", port=443)
    v.add("n7", "fd00::7", "v6", "v6-1", port=80)
    return v


def test_service_a_hides_critical_and_maintenance(view: MemView) -> None:
    resp = ask(view, "web.service.consul")
    assert resp.header.rcode == RCODE.NOERROR and resp.header.aa
    assert rdatas(resp) == ["10.0.0.1", "10.0.0.2"]
    assert str(resp.rr[0].rname) == "web.service.consul."


def test_only_passing_hides_warning(view: MemView) -> None:
    resp = ask(view, "web.service.consul", cfg=DNSSettings(only_passing=True))
    assert rdatas(resp) == ["10.0.0.1"]


def test_all_forms_of_datacenter_and_case(view: MemView) -> None:
    for name in (
        "web.service.dc1.consul",
        "web.service.dc1.dc.consul",
        "WEB.Service.CONSUL",
        "web.service.DC1.consul.",
    ):
        assert rdatas(ask(view, name)) == ["10.0.0.1", "10.0.0.2"], name
    for name in ("web.service.dc2.consul", "web.service.dc2.dc.consul"):
        resp = ask(view, name)
        assert resp.header.rcode == RCODE.NXDOMAIN and QTYPE[resp.auth[0].rtype] == "SOA"


def test_tag_filters(view: MemView) -> None:
    assert rdatas(ask(view, "v1.web.service.consul")) == ["10.0.0.1"]
    assert rdatas(ask(view, "primary.web.service.consul")) == ["10.0.0.1"]  # case-insensitive
    assert ask(view, "v9.web.service.consul").header.rcode == RCODE.NXDOMAIN
    assert rdatas(ask(view, "_web._v2.service.consul", "SRV")) == ["1 3 8081 n2.node.dc1.consul."]


def test_rfc2782_srv_with_glue(view: MemView) -> None:
    resp = ask(view, "_web._tcp.service.consul", "SRV")
    assert rdatas(resp) == ["1 1 8080 n1.node.dc1.consul.", "1 3 8081 n2.node.dc1.consul."]
    glue = {str(rr.rname): str(rr.rdata) for rr in resp.ar}
    assert glue == {"n1.node.dc1.consul.": "10.0.0.1", "n2.node.dc1.consul.": "10.0.0.2"}
    assert rdatas(ask(view, "_web._udp.service.consul", "SRV")) == rdatas(resp)
    assert rdatas(ask(view, "web.service.consul", "SRV")) == rdatas(resp)


def test_srv_uses_addr_name_when_service_address_differs(view: MemView) -> None:
    resp = ask(view, "db.service.consul", "SRV")
    assert rdatas(resp) == ["1 1 5432 0a090005.addr.dc1.consul."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in resp.ar] == [
        ("0a090005.addr.dc1.consul.", "10.9.0.5")
    ]
    assert rdatas(ask(view, "0a090005.addr.dc1.consul")) == ["10.9.0.5"]
    v6 = "fd000000000000000000000000000007"
    assert rdatas(ask(view, f"{v6}.addr.dc1.consul", "AAAA")) == ["fd00::7"]
    assert ask(view, "zz.addr.dc1.consul").header.rcode == RCODE.NXDOMAIN


def test_hostname_address_gives_cname(view: MemView) -> None:
    resp = ask(view, "ext.service.consul")
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in resp.rr] == [("CNAME", "api.example.com.")]
    assert rdatas(ask(view, "ext.service.consul", "SRV")) == ["1 1 443 api.example.com."]


def test_aaaa_and_missing_type_is_nodata(view: MemView) -> None:
    assert rdatas(ask(view, "v6.service.consul", "AAAA")) == ["fd00::7"]
    resp = ask(view, "web.service.consul", "AAAA")
    assert resp.header.rcode == RCODE.NOERROR and not resp.rr
    assert QTYPE[resp.auth[0].rtype] == "SOA"
    assert ask(view, "web.service.consul", "TXT").header.rcode == RCODE.NOERROR


def test_negative_answers_carry_soa(view: MemView) -> None:
    before = int(time.time())
    resp = ask(view, "nope.service.consul", cfg=DNSSettings(soa_min_ttl=7, soa_retry=99))
    assert resp.header.rcode == RCODE.NXDOMAIN and resp.header.aa and not resp.rr
    soa = resp.auth[0]
    assert str(soa.rname) == "consul." and soa.ttl == 7
    assert str(soa.rdata.mname) == "ns.consul." and str(soa.rdata.rname) == "hostmaster.consul."
    serial, refresh, retry, expire, minimum = soa.rdata.times
    assert before <= serial <= before + 2 and (refresh, retry, expire, minimum) == (
        3600,
        99,
        86400,
        7,
    )
    only_critical = MemView()
    only_critical.add("x", "10.1.1.1", "sick", "sick-1", status="critical")
    assert ask(only_critical, "sick.service.consul").header.rcode == RCODE.NXDOMAIN
    for name in ("foo.bar.consul", "web.unknown.consul", "service.consul", "x.query.consul"):
        assert ask(view, name).header.rcode == RCODE.NXDOMAIN, name


def test_node_lookup_a_and_txt(view: MemView) -> None:
    cfg = DNSSettings(node_ttl=30)
    resp = ask(view, "n5.node.consul", cfg=cfg)
    assert rdatas(resp) == ["10.0.0.5"] and resp.rr[0].ttl == 30
    assert rdatas(ask(view, "N5.node.dc1.dc.consul")) == ["10.0.0.5"]
    txt = ask(view, "n5.node.consul", "TXT", cfg)
    assert rdatas(txt) == ['"env=prod"', '"rack=r1"']
    assert len(ask(view, "n5.node.consul", "ANY").rr) == 3
    nodata = ask(view, "n5.node.consul", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr and nodata.auth
    assert ask(view, "ghost.node.consul").header.rcode == RCODE.NXDOMAIN


def test_connect_uses_proxy_address_and_port(view: MemView) -> None:
    proxy = NodeService(
        ID="web-sidecar",
        Service="web-sidecar-proxy",
        Kind="connect-proxy",
        Port=21000,
        Address="10.0.0.50",
        Proxy={"DestinationServiceName": "web"},
    )
    view.connect["web"] = [CheckServiceNode(Node=view.node_map["n1"], Service=proxy, Checks=[])]
    assert rdatas(ask(view, "web.connect.consul")) == ["10.0.0.50"]
    assert rdatas(ask(view, "web.connect.consul", "SRV")) == ["1 1 21000 0a000032.addr.dc1.consul."]
    assert ask(view, "db.connect.consul").header.rcode == RCODE.NXDOMAIN


def test_reverse_lookups(view: MemView) -> None:
    resp = ask(view, "5.0.0.10.in-addr.arpa", "PTR")
    assert rdatas(resp) == ["n5.node.dc1.consul."] and resp.header.aa
    nibbles = ".".join(reversed("fd00" + "0" * 27 + "7"))
    resp6 = ask(view, f"{nibbles}.ip6.arpa", "PTR")
    assert rdatas(resp6) == ["n7.node.dc1.consul."]
    unknown = ask(view, "9.9.9.9.in-addr.arpa", "PTR")
    assert unknown.header.rcode == RCODE.NXDOMAIN
    assert outcome(view, "9.9.9.9.in-addr.arpa", "PTR", DNSSettings(recursors=["1.1.1.1"])).forward


def test_apex_soa_and_ns(view: MemView) -> None:
    soa = ask(view, "consul", "SOA")
    assert [QTYPE[rr.rtype] for rr in soa.rr] == ["SOA"] and not soa.auth
    ns = ask(view, "consul", "NS")
    assert rdatas(ns) == ["server-1.node.dc1.consul."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in ns.ar] == [
        ("server-1.node.dc1.consul.", "10.0.0.100")
    ]
    view.servers = []
    assert rdatas(ask(view, "consul", "NS")) == ["agent-1.node.dc1.consul."]
    apex_a = ask(view, "consul", "A")
    assert apex_a.header.rcode == RCODE.NOERROR and not apex_a.rr and apex_a.auth


def test_alt_domain_and_custom_domain(view: MemView) -> None:
    cfg = DNSSettings(domain="mesh.internal.", alt_domain="alt.example")
    assert rdatas(ask(view, "web.service.mesh.internal", cfg=cfg)) == ["10.0.0.1", "10.0.0.2"]
    srv = ask(view, "web.service.alt.example", "SRV", cfg)
    assert str(srv.rr[0].rname) == "web.service.alt.example."
    assert {str(rr.rdata.target) for rr in srv.rr} == {
        "n1.node.dc1.alt.example.",
        "n2.node.dc1.alt.example.",
    }
    assert ask(view, "web.service.consul", cfg=cfg).header.rcode == RCODE.REFUSED
    neg = ask(view, "nope.service.alt.example", cfg=cfg)
    assert str(neg.auth[0].rname) == "alt.example."


def test_ttls() -> None:
    cfg = DNSSettings(service_ttl={"*": 5, "web": 30, "we*": 20, "w*": 10})
    assert [service_ttl(cfg, n) for n in ("web", "webby", "wx", "db")] == [30, 20, 10, 5]
    assert service_ttl(DNSSettings(), "web") == 0
    v = MemView()
    v.add("n1", "10.0.0.1", "web", "web-1")
    resp = ask(v, "_web._tcp.service.consul", "SRV", cfg)
    assert resp.rr[0].ttl == 30 and resp.ar[0].ttl == 30


def test_shuffled_answers() -> None:
    v = MemView()
    for i in range(8):
        v.add(f"n{i}", f"10.0.1.{i}", "many", f"many-{i}")
    orders = {tuple(rdatas_in_order(ask(v, "many.service.consul"))) for _ in range(20)}
    assert len(orders) > 1


def rdatas_in_order(resp: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in resp.rr]


def test_udp_limits_truncation_and_edns() -> None:
    v = MemView()
    for i in range(30):
        v.add(f"node-with-a-long-name-{i}", f"10.0.2.{i}", "big", f"big-{i}")
    udp = outcome(v, "big.service.consul", max_size=UDP_PLAIN)
    assert udp.truncated and udp.response.header.tc and len(udp.response.rr) == 3
    quiet = outcome(
        v, "big.service.consul", cfg=DNSSettings(enable_truncate=False), max_size=UDP_PLAIN
    )
    assert not quiet.response.header.tc and len(quiet.response.rr) == 3
    tcp = outcome(v, "big.service.consul", max_size=TCP_MAX)
    assert not tcp.truncated and len(tcp.response.rr) == 30
    edns = outcome(v, "big.service.consul", max_size=UDP_PLAIN, edns=4096)
    assert not edns.truncated and len(edns.response.rr) == 30
    opt = [rr for rr in edns.response.ar if rr.rtype == QTYPE.OPT]
    assert len(opt) == 1 and opt[0].rclass == 4096
    srv = outcome(v, "big.service.consul", "SRV", max_size=UDP_PLAIN, edns=600)
    resp = srv.response
    assert srv.truncated and resp.header.tc and len(srv.wire) <= 600
    assert 3 < len(resp.rr) < 30 and len(resp.ar) == len(resp.rr) + 1  # glue follows its SRV
    small = outcome(v, "big.service.consul", "SRV", max_size=UDP_PLAIN, edns=100)
    assert len(small.wire) <= UDP_PLAIN and small.truncated
    capped = outcome(v, "big.service.consul", cfg=DNSSettings(a_record_limit=5))
    assert len(capped.response.rr) == 5 and not capped.truncated


def test_request_level_errors(view: MemView) -> None:
    req = DNSRecord.question("web.service.consul")
    req.header.opcode = 2
    assert answer(req, view, DNSSettings(), max_size=512).rcode == NOTIMP
    two = DNSRecord.question("web.service.consul")
    two.add_question(DNSRecord.question("db.service.consul").q)
    assert answer(two, view, DNSSettings(), max_size=512).rcode == FORMERR
    none = DNSRecord()
    assert answer(none, view, DNSSettings(), max_size=512).rcode == FORMERR
    resp = DNSRecord.question("web.service.consul")
    resp.header.qr = 1
    out = answer(resp, view, DNSSettings(), max_size=512)
    assert out.rcode == FORMERR and out.response.header.id == resp.header.id


def test_outside_domain_forwards_or_refuses(view: MemView) -> None:
    refused = outcome(view, "example.com")
    assert refused.rcode == REFUSED and not refused.response.header.ra
    fwd = outcome(view, "example.com", cfg=DNSSettings(recursors=["127.0.0.1:53"]))
    assert fwd.forward and fwd.wire == b""
    ours = ask(view, "web.service.consul", cfg=DNSSettings(recursors=["127.0.0.1"]))
    assert ours.header.ra and ours.header.aa


def test_edns_version_and_ids(view: MemView) -> None:
    req = DNSRecord.question("web.service.consul")
    req.add_ar(EDNS0(version=1))
    out = answer(req, view, DNSSettings(), max_size=512)
    assert out.rcode == 16 and out.response.header.id == req.header.id


def test_parse_packet_malformed() -> None:
    good = DNSRecord.question("web.service.consul")
    assert isinstance(parse_packet(good.pack()), DNSRecord)
    assert parse_packet(b"") == b"" and parse_packet(b"\x01") == b""
    header = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    short_label = header + b"\x05abc"
    pointer_loop = header + b"\xc0\x0c\x00\x01\x00\x01"
    for junk in (b"\xab\xcd", header[:6], short_label, pointer_loop):
        out = parse_packet(junk)
        assert isinstance(out, bytes) and len(out) == 12
        ident, flags = struct.unpack("!HH", out[:4])
        assert ident == 0xABCD and flags & 0x8000 and flags & 0xF == FORMERR
    response = bytearray(good.pack())
    response[2] |= 0x80
    assert parse_packet(bytes(response)) == b""  # never answer a response


def test_nxdomain_constant_matches() -> None:
    assert NXDOMAIN == RCODE.NXDOMAIN


def test_mutated_packets_never_raise(view: MemView) -> None:
    rng = random.Random(7)
    seeds = [
        DNSRecord.question(n, t).pack()
        for n, t in (
            ("web.service.consul", "A"),
            ("_web._tcp.service.dc1.consul", "SRV"),
            ("5.0.0.10.in-addr.arpa", "PTR"),
            ("n5.node.consul", "ANY"),
            ("consul", "NS"),
        )
    ]
    cfgs = [DNSSettings(), DNSSettings(recursors=["127.0.0.1"], alt_domain="alt.")]
    for i in range(3000):
        pkt = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            pkt[rng.randrange(len(pkt))] = rng.randrange(256)
        if i % 5 == 0:
            pkt = pkt[: rng.randrange(len(pkt) + 1)]
        req = parse_packet(bytes(pkt))
        if isinstance(req, bytes):
            continue
        out = answer(req, view, cfgs[i % 2], max_size=rng.choice((UDP_PLAIN, TCP_MAX)))
        if not out.forward:
            assert out.response.header.id == req.header.id
            if out.rcode != NOTIMP:  # dnspython reads other opcodes (UPDATE) by their own rules
                dns.message.from_wire(out.wire)


def _shared_target_view(n: int) -> MemView:
    v = MemView()
    for i in range(n):
        v.add("host-1", "10.0.0.1", "hap", f"hap-{i}", port=9000 + i)
    return v


def test_srv_answers_sharing_a_target_each_carry_glue_when_not_trimmed() -> None:
    """HAProxy's server-template fills one server slot per additional record."""
    v = _shared_target_view(3)
    for max_size in (UDP_PLAIN, TCP_MAX):
        out = outcome(v, "_hap._tcp.service.consul", "SRV", max_size=max_size)
        resp = out.response
        assert len(resp.rr) == 3 and not resp.header.tc
        assert [(str(r.rname), str(r.rdata)) for r in resp.ar] == [
            ("host-1.node.dc1.consul.", "10.0.0.1")
        ] * 3
        msg = dns.message.from_wire(out.wire, one_rr_per_rrset=True)
        assert len(msg.additional) == 3


def test_srv_glue_is_sent_once_per_target_when_trimmed() -> None:
    v = _shared_target_view(8)
    out = outcome(v, "hap.service.consul", "SRV", max_size=UDP_PLAIN)
    resp = out.response
    assert out.truncated and len(resp.rr) == 3  # udp_answer_limit trims
    assert [str(r.rname) for r in resp.ar] == ["host-1.node.dc1.consul."]
    whole = ask(v, "hap.service.consul", "SRV", max_size=TCP_MAX)
    assert len(whole.rr) == 8 and len(whole.ar) == 8
