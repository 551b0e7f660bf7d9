"""DNS against a real `meshd agent -dev`, with dnspython and with `dig`."""

from __future__ import annotations

import shutil
import subprocess

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest


def ask(agent, name: str, rtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, "127.0.0.1", port=agent.dns_port, timeout=3)


def addrs(resp: dns.message.Message) -> set[str]:
    return {r.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for r in rrset}


@pytest.fixture(scope="module")
def dns_services(agent):
    for i in range(3):
        agent.put(
            "/v1/agent/service/register",
            {
                "Name": "dnsweb",
                "ID": f"dnsweb-{i}",
                "Address": f"127.0.1.{i + 1}",
                "Port": 80 + i,
                "Tags": ["v1"] if i < 2 else ["v2"],
                "Check": {"CheckID": f"dnsweb-{i}-ttl", "TTL": "10m", "Status": "passing"},
            },
        )
    agent.put(
        "/v1/agent/service/register",
        {"Name": "dnsbig", "ID": "dnsbig-0", "Address": "127.0.2.1", "Port": 1},
    )
    for i in range(40):
        agent.put(
            "/v1/catalog/register",
            {
                "Node": f"big-{i}",
                "Address": f"127.0.3.{i + 1}",
                "Service": {"Service": "many", "ID": f"many-{i}", "Port": 1000 + i},
            },
        )
    return agent


def test_service_a_and_tag(dns_services):
    a = dns_services
    r = ask(a, "dnsweb.service.consul")
    assert r.rcode() == dns.rcode.NOERROR
    assert addrs(r) == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}
    assert addrs(ask(a, "v2.dnsweb.service.consul")) == {"127.0.1.3"}
    assert addrs(ask(a, "dnsweb.service.dc1.consul")) == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}


def test_srv_rfc2782_with_glue(dns_services):
    r = ask(dns_services, "_dnsweb._v1.service.consul", "SRV")
    ports = {rr.port for rrset in r.answer for rr in rrset}
    assert ports == {80, 81}
    glue = {rr.address for rrset in r.additional if rrset.rdtype == dns.rdatatype.A for rr in rrset}
    assert glue == {"127.0.1.1", "127.0.1.2"}
    r = ask(dns_services, "_dnsweb._tcp.service.consul", "SRV")
    assert {rr.port for rrset in r.answer for rr in rrset} == {80, 81, 82}


def test_critical_instance_dropped_and_nxdomain(dns_services):
    a = dns_services
    a.put("/v1/agent/check/fail/dnsweb-2-ttl")
    try:
        assert addrs(ask(a, "dnsweb.service.consul")) == {"127.0.1.1", "127.0.1.2"}
        r = ask(a, "v2.dnsweb.service.consul")
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert any(rr.rdtype == dns.rdatatype.SOA for rr in r.authority)
    finally:
        a.put("/v1/agent/check/pass/dnsweb-2-ttl")
    assert ask(a, "nosuch.service.consul").rcode() == dns.rcode.NXDOMAIN


def test_nodata_for_aaaa(dns_services):
    r = ask(dns_services, "dnsweb.service.consul", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert any(rr.rdtype == dns.rdatatype.SOA for rr in r.authority)


def test_node_lookup_and_ptr(dns_services):
    a = dns_services
    node = a.get("/v1/agent/self").json()["Config"]["NodeName"]
    assert addrs(ask(a, f"{node}.node.consul")) == {"127.0.0.1"}
    r = ask(a, "1.3.0.127.in-addr.arpa", "PTR")
    assert [str(rr.target) for rrset in r.answer for rr in rrset] == ["big-0.node.dc1.consul."]


def test_truncation_and_tcp_fallback(dns_services):
    r = ask(dns_services, "many.service.consul", "SRV")
    assert r.flags & dns.flags.TC
    full = ask(dns_services, "many.service.consul", "SRV", tcp=True)
    assert not full.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in full.answer) == 40


def test_answers_are_shuffled(dns_services):
    orders = {
        tuple(
            rr.address
            for rrset in ask(dns_services, "many.service.consul", use_edns=0, payload=4096).answer
            for rr in rrset
        )
        for _ in range(10)
    }
    assert len(orders) > 1


def test_malformed_packet_formerr_and_refused_elsewhere(dns_services):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"\x12\x34\x01\x00\x00\x01garbage", ("127.0.0.1", dns_services.dns_port))
    data, _ = s.recvfrom(512)
    assert data[:2] == b"\x12\x34" and data[3] & 0x0F == dns.rcode.FORMERR
    assert ask(dns_services, "example.org").rcode() == dns.rcode.REFUSED
    # still serving after the bad packet
    assert addrs(ask(dns_services, "dnsweb.service.consul"))


def test_soa_and_ns(dns_services):
    r = ask(dns_services, "consul", "SOA")
    assert r.answer and r.answer[0].rdtype == dns.rdatatype.SOA
    assert ask(dns_services, "consul", "NS").answer


def test_dig(dns_services):
    assert shutil.which("dig"), "scripts/test installs dig (bind9-dnsutils)"
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(dns_services.dns_port), "+short", "dnsweb.service.consul"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert set(out.stdout.split()) == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}
    out = subprocess.run(
        [
            "dig",
            "@127.0.0.1",
            "-p",
            str(dns_services.dns_port),
            "+short",
            "many.service.consul",
            "SRV",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert len(out.stdout.split("\n")) >= 40  # dig retried over TCP after TC


def test_connect_form_answers_sidecars(dns_services):
    a = dns_services
    r = a.put(
        "/v1/agent/service/register",
        {
            "Name": "dnsconn",
            "ID": "dnsconn",
            "Port": 9000,
            "Address": "127.0.4.1",
            "Connect": {"SidecarService": {"Port": 21999, "Checks": []}},
        },
    )
    assert r.status == 200, r.body
    resp = ask(a, "dnsconn.connect.consul", "SRV")
    assert [rr.port for rrset in resp.answer for rr in rrset] == [21999]
    assert addrs(ask(a, "dnsconn.connect.consul")) == {"127.0.4.1"}


def test_node_txt_from_meta(dns_services):
    a = dns_services
    a.put(
        "/v1/catalog/register",
        {"Node": "metanode", "Address": "127.0.5.1", "NodeMeta": {"rack": "r9"}},
    )
    resp = ask(a, "metanode.node.consul", "TXT")
    txt = {b"".join(rr.strings).decode() for rrset in resp.answer for rr in rrset}
    assert "rack=r9" in txt


@pytest.fixture(scope="module")
def custom_domain_agent(dns_services):
    """An agent with its own domain and alt domain that forwards other names to `agent`."""
    from helpers import dev_agent

    b = dev_agent(
        "-domain=mesh.internal",
        "-alt-domain=alt.test",
        f"-recursor=127.0.0.1:{dns_services.dns_port}",
    ).start()
    b.put("/v1/agent/service/register", {"Name": "local", "Address": "127.0.6.1", "Port": 1})
    yield b
    b.stop()


def test_configured_domain_alt_domain_and_recursor(custom_domain_agent, dns_services):
    b = custom_domain_agent
    assert addrs(ask(b, "local.service.mesh.internal")) == {"127.0.6.1"}
    assert addrs(ask(b, "local.service.alt.test")) == {"127.0.6.1"}
    # consul. is not b's domain: forwarded to the recursor (the first agent), answered there
    forwarded = ask(b, "dnsweb.service.consul")
    assert forwarded.rcode() == dns.rcode.NOERROR
    assert addrs(forwarded) == {"127.0.1.1", "127.0.1.2", "127.0.1.3"}


def test_srv_answers_sharing_a_target_each_get_glue(agent):
    """HAProxy `server-template ... resolvers`: N instances on one node need N additional
    records, one per SRV answer, or all but one server slot stays without an address."""
    for i in range(3):
        r = agent.put(
            "/v1/agent/service/register",
            {"Name": "hapback", "ID": f"hapback-{i}", "Port": 7000 + i},
        )
        assert r.status == 200
    for tcp in (False, True):
        q = dns.message.make_query("_hapback._tcp.service.consul", "SRV")
        fn = dns.query.tcp if tcp else dns.query.udp
        resp = fn(q, "127.0.0.1", port=agent.dns_port, timeout=3, one_rr_per_rrset=True)
        srv = [r for rrset in resp.answer for r in rrset]
        assert sorted(r.port for r in srv) == [7000, 7001, 7002]
        targets = {str(r.target) for r in srv}
        glue = [rrset for rrset in resp.additional if rrset.rdtype == dns.rdatatype.A]
        assert len(glue) == 3 and {str(g.name) for g in glue} == targets


def test_srv_target_is_addr_name_when_service_address_differs(agent):
    agent.put(
        "/v1/agent/service/register",
        {"Name": "addrsvc", "Address": "127.0.9.7", "Port": 5555},
    )
    resp = ask(agent, "addrsvc.service.consul", "SRV")
    target = str(resp.answer[0][0].target)
    assert target == "7f000907.addr.dc1.consul."
    assert addrs(ask(agent, target)) == {"127.0.9.7"}
    assert ask(agent, "7f000907.addr.dc1.consul", "AAAA").answer == []
