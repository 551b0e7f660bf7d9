"""The DNS answer cache: valid while the view's version stands, reshuffled on every hit."""

from __future__ import annotations

from test_dns_answer import MemView, ask

from meshd.agent.dns import DNSSettings


class VersionedView(MemView):
    ver: int = 0

    def version(self) -> int:
        return self.ver


def addresses(resp) -> list[str]:
    return [str(rr.rdata) for rr in resp.rr]


def test_hits_reshuffle_and_a_version_change_invalidates():
    v = VersionedView()
    for i in range(8):
        v.add(f"n{i}", f"10.0.0.{i + 1}", "web", f"web-{i}")
    first = ask(v, "web.service.consul")
    assert hasattr(v, "dns_cache") and v.dns_cache  # the answer was cached
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
    assert not getattr(v, "dns_cache", None)
