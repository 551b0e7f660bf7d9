"""The agent's DNS views over real data: a server's store (answers invalidated by the topics they
read, not by every Raft index) and the watch cache (NeedData, then answers from memory)."""

from __future__ import annotations

import dns.asyncquery
import dns.message
import dns.rcode
from dnslib import DNSRecord
from test_cache import StoreBackend

from meshd import queries as q
from meshd.agent.cache import WatchCache
from meshd.agent.dns import NXDOMAIN, TCP_MAX, DNSOutcome, DNSSettings, answer
from meshd.agent.dns_server import DNSServer
from meshd.agent.views import CacheView, StoreView
from meshd.structs import ConfigEntryOp, HealthCheck, KVOp, NodeService, Register


def ask(view: StoreView | CacheView, name: str, qtype: str = "A") -> DNSOutcome:
    return answer(DNSRecord.question(name, qtype), view, DNSSettings(), max_size=TCP_MAX)


def addresses(out: DNSOutcome) -> list[str]:
    return sorted(str(rr.rdata) for rr in out.response.rr)


def test_store_answers_survive_writes_to_other_data_and_not_to_their_own() -> None:
    backend = StoreBackend()
    backend.register("web", node="n1", address="10.1.0.1")
    backend.register("db", node="n2", address="10.1.0.2")
    view = StoreView(backend.store, "dc1", "n1")
    key = (tuple(b"web service consul".split()), 1)
    assert addresses(ask(view, "web.service.consul")) == ["10.1.0.1"]
    cached = view.dns_answers.entries[key]
    hits = view.dns_answers.hits

    backend.write(KVOp(Verb="set", Key="app/config", Value=b"x"))
    backend.write(ConfigEntryOp(Op="set", Kind="service-defaults", Name="web", Entry={}))
    backend.register("db", node="n3", address="10.1.0.3")
    assert addresses(ask(view, "web.service.consul")) == ["10.1.0.1"]
    assert view.dns_answers.hits == hits + 1
    assert view.dns_answers.entries[key] is cached

    backend.register("web", node="n4", address="10.1.0.4")
    assert addresses(ask(view, "web.service.consul")) == ["10.1.0.1", "10.1.0.4"]
    assert view.dns_answers.hits == hits + 1
    assert view.dns_answers.entries[key] is not cached


def test_store_answers_follow_health_changes_of_their_service() -> None:
    backend = StoreBackend()
    backend.register("web", node="n1", address="10.2.0.1")
    view = StoreView(backend.store, "dc1", "n1")
    assert addresses(ask(view, "web.service.consul")) == ["10.2.0.1"]
    check = HealthCheck(Node="n1", CheckID="c", Name="c", Status="critical", ServiceID="web-n1")
    backend.write(Register(Node="n1", Address="10.2.0.1", Check=check))
    assert ask(view, "web.service.consul").rcode == NXDOMAIN


def test_store_node_answers_follow_the_node_table() -> None:
    backend = StoreBackend()
    backend.register("web", node="n1", address="10.3.0.1")
    view = StoreView(backend.store, "dc1", "n1")
    assert addresses(ask(view, "n1.node.consul")) == ["10.3.0.1"]
    backend.write(KVOp(Verb="set", Key="k", Value=b"v"))
    hits = view.dns_answers.hits
    assert addresses(ask(view, "n1.node.consul")) == ["10.3.0.1"]
    assert view.dns_answers.hits == hits + 1
    backend.write(Register(Node="n1", Address="10.3.0.9"))
    assert addresses(ask(view, "n1.node.consul")) == ["10.3.0.9"]


async def test_cache_view_needs_data_then_answers_from_memory() -> None:
    backend = StoreBackend()
    backend.register("web", node="n1", address="10.4.0.1")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    view = CacheView(cache, "dc1", "agent")
    out = ask(view, "web.service.consul")
    assert out.need == (q.ServiceNodes(Service="web"),)
    assert await view.load(out.need)
    assert addresses(ask(view, "web.service.consul")) == ["10.4.0.1"]
    assert addresses(ask(view, "web.service.consul")) == ["10.4.0.1"]
    assert view.dns_answers.hits == 1
    assert backend.reads[q.ServiceNodes(Service="web")] <= 2  # the fetch, then the watch
    await cache.close()


async def test_cache_view_negative_answers_hold_no_watch() -> None:
    backend = StoreBackend()
    backend.register("web")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    view = CacheView(cache, "dc1", "agent")
    names = [f"missing{i}.service.consul" for i in range(50)]
    for name in names:
        out = ask(view, name)
        assert await view.load(out.need)
        assert ask(view, name).rcode == NXDOMAIN
    assert not any(cache.watching(q.ServiceNodes(Service=f"missing{i}")) for i in range(50))
    assert sum(backend.in_flight.values()) == 0  # no blocking read held for any of them
    await cache.close()


def test_store_connect_answers_follow_native_instances_too() -> None:
    backend = StoreBackend()
    native = NodeService(ID="api-1", Service="api", Port=80, Connect={"Native": True})
    backend.write(Register(Node="n1", Address="10.5.0.1", Service=native))
    view = StoreView(backend.store, "dc1", "n1")
    assert addresses(ask(view, "api.connect.consul")) == ["10.5.0.1"]
    check = HealthCheck(Node="n1", CheckID="c", Name="c", Status="critical", ServiceID="api-1")
    backend.write(Register(Node="n1", Address="10.5.0.1", Check=check))
    assert ask(view, "api.connect.consul").rcode == NXDOMAIN


async def test_a_client_agent_dns_listener_fills_its_cache_once_per_name() -> None:
    backend = StoreBackend()
    backend.register("web", node="n1", address="10.6.0.1")
    cache = WatchCache(backend)  # type: ignore[arg-type]
    server = DNSServer(CacheView(cache, "dc1", "agent"), DNSSettings(), "127.0.0.1", 0)
    await server.start()
    try:
        for _ in range(3):
            query = dns.message.make_query("web.service.consul", "A")
            msg = await dns.asyncquery.udp(query, "127.0.0.1", port=server.udp_port, timeout=5)
            assert sorted(rd.to_text() for rrset in msg.answer for rd in rrset) == ["10.6.0.1"]
            query = dns.message.make_query("gone.service.consul", "A")
            msg = await dns.asyncquery.tcp(query, "127.0.0.1", port=server.tcp_port, timeout=5)
            assert msg.rcode() == dns.rcode.NXDOMAIN
        assert backend.reads[q.ServiceNodes(Service="gone")] == 1  # a negative answer is kept
        assert backend.in_flight[q.ServiceNodes(Service="gone")] == 0  # and not watched
        assert cache.watching(q.ServiceNodes(Service="web"))
    finally:
        await server.stop()
        await cache.close()
