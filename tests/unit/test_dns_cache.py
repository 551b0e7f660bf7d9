"""The DNS answer cache: valid while the stamps of what an answer read stand, reshuffled on
every hit; and NeedData, the core's way of asking its caller for data the view lacks."""

from __future__ import annotations

from dataclasses import dataclass, field

from dnslib import DNSRecord
from test_dns_answer import MemView, ask

from meshd import queries as q
from meshd.agent.dns import NXDOMAIN, TCP_MAX, DNSOutcome, DNSRead, DNSSettings, answer
from meshd.agent.dns_cache import AnswerCache


@dataclass
class VersionedView(MemView):
    """Every read shares one stamp, moved by hand: a catalog change the cache cannot see."""

    ver: int = 0
    dns_answers: AnswerCache = field(default_factory=AnswerCache)

    def stamp(self, read: DNSRead) -> int:
        return self.ver


def addresses(resp) -> list[str]:
    return [str(rr.rdata) for rr in resp.rr]


def test_hits_reshuffle_and_a_version_change_invalidates():
    v = VersionedView()
    for i in range(8):
        v.add(f"n{i}", f"10.0.0.{i + 1}", "web", f"web-{i}")
    first = ask(v, "web.service.consul")
    assert v.dns_answers.entries  # the answer was cached
    orders = {tuple(addresses(ask(v, "web.service.consul"))) for _ in range(20)}
    assert len(orders) > 1 and all(len(o) == 8 for o in orders)
    assert sorted(addresses(first)) == sorted(orders.pop())
    # a catalog change the cache cannot see until the version moves
    v.services["web"] = v.services["web"][:2]
    assert len(addresses(ask(v, "web.service.consul"))) == 8
    v.ver += 1
    assert sorted(addresses(ask(v, "web.service.consul"))) == ["10.0.0.1", "10.0.0.2"]


def test_no_cache_with_a_record_limit():
    v = VersionedView()
    for i in range(8):
        v.add(f"n{i}", f"10.0.1.{i + 1}", "api", f"api-{i}")
    cfg = DNSSettings(a_record_limit=2)
    seen = set()
    for _ in range(30):
        got = addresses(ask(v, "api.service.consul", cfg=cfg))
        assert len(got) == 2
        seen.update(got)
    assert len(seen) > 2  # a different random subset each time, not one frozen pair
    assert not v.dns_answers.entries


def outcome(view: MemView, name: str, qtype: str = "A") -> DNSOutcome:
    return answer(DNSRecord.question(name, qtype), view, DNSSettings(), max_size=TCP_MAX)


class StampedView(MemView):
    """Stamps per read, as the agent's views give them: a store topic or a cache entry each.
    A read missing from `stamps` is data the view does not hold yet."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: dict[DNSRead, int] = {}
        self.dns_answers = AnswerCache()

    def stamp(self, read: DNSRead) -> int | None:
        return self.stamps.get(read)


def test_only_a_change_to_what_an_answer_read_invalidates_it():
    v = StampedView()
    v.add("n1", "10.0.2.1", "web", "web-1")
    v.add("n2", "10.0.2.2", "db", "db-1")
    web, db = q.ServiceNodes(Service="web"), q.ServiceNodes(Service="db")
    v.stamps.update({web: 1, db: 1, q.Nodes(): 1})
    ask(v, "web.service.consul")
    hits = v.dns_answers.hits
    v.stamps[db] = 2  # another service changed
    v.stamps[q.Nodes()] = 2  # and the node table: a service answer did not read it
    assert sorted(str(r.rdata) for r in ask(v, "web.service.consul").rr) == ["10.0.2.1"]
    assert v.dns_answers.hits == hits + 1
    v.services["web"] = []
    v.stamps[web] = 2
    assert ask(v, "web.service.consul").header.rcode == NXDOMAIN
    assert v.dns_answers.hits == hits + 1


def test_need_data_names_the_missing_reads_and_caches_nothing():
    v = StampedView()
    v.add("n1", "10.0.3.1", "api", "api-1")
    out = outcome(v, "api.service.consul")
    assert out.need == (q.ServiceNodes(Service="api"),) and out.wire == b""
    out = outcome(v, "n1.node.consul")
    assert out.need == (q.Nodes(),)
    out = outcome(v, "api.connect.consul")
    assert out.need == (q.ServiceNodes(Service="api", Connect=True),)
    assert not v.dns_answers.entries
    # the caller loads the data and asks again
    v.stamps[q.ServiceNodes(Service="api")] = 1
    assert [str(r.rdata) for r in ask(v, "api.service.consul").rr] == ["10.0.3.1"]


def test_a_mixed_case_name_needs_both_spellings_at_once():
    v = StampedView()
    out = outcome(v, "Api.service.consul")
    assert out.need == (q.ServiceNodes(Service="Api"), q.ServiceNodes(Service="api"))
    v.stamps.update(dict.fromkeys(out.need, 1))
    assert ask(v, "Api.service.consul").header.rcode == NXDOMAIN


def test_names_that_read_no_catalog_data_never_need_any():
    v = StampedView()
    assert outcome(v, "0a000001.addr.dc1.consul").need == ()
    assert outcome(v, "consul", "SOA").need == ()
    assert outcome(v, "x.nokind.consul").need == ()
