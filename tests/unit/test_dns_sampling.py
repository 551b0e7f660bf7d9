"""A DNS answer for a large service draws its records before building them: a plain UDP answer
for 1,000 instances builds a handful of records, not 1,000, and is still right (only healthy,
tag-matching instances; TC when more exist) and random (every healthy instance gets its turn)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from dnslib import QTYPE
from test_dns_answer import MemView, ask, outcome
from test_dns_cache import VersionedView

from meshd.agent import dns_query
from meshd.agent.dns import NXDOMAIN, TCP_MAX, UDP_PLAIN, DNSSettings


def big_service(view: MemView, n: int = 1000) -> set[str]:
    """`n` instances of `big`; one in four critical, one in four warning, every fifth tagged
    `canary`. Returns the addresses DNS may hand out (passing or warning)."""
    ok = set()
    for i in range(n):
        addr = f"10.{i // 250}.{i % 250}.1"
        status = ("critical", "warning", "passing", "passing")[i % 4]
        tags = ("canary",) if i % 5 == 0 else ()
        view.add(f"n{i}", addr, "big", f"big-{i}", status=status, tags=tags)
        if status != "critical":
            ok.add(addr)
    return ok


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many answer records each query built (calls to Query.add)."""
    count: Counter[str] = Counter()
    real = dns_query.Query.add

    def add(self: Any, *args: Any, **kwargs: Any) -> None:
        count["records"] += 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(dns_query.Query, "add", add)
    return count


@pytest.mark.parametrize("qtype", ["A", "SRV"])
def test_a_udp_answer_for_1000_instances_builds_a_few_records(
    built: Counter[str], qtype: str
) -> None:
    view = VersionedView()
    ok = big_service(view)
    cfg = DNSSettings(enable_truncate=True)
    out = outcome(view, "big.service.consul", qtype, cfg, max_size=UDP_PLAIN)
    resp = out.response
    answers = [rr for rr in resp.rr if QTYPE[rr.rtype] == qtype]
    assert len(answers) == 3 and out.truncated  # udp_answer_limit, and TC: there were more
    hosts = {str(rr.rdata) for rr in resp.rr if QTYPE[rr.rtype] == "A"}
    if qtype == "A":
        assert hosts <= ok and len(hosts) == 3
    assert built["records"] <= 4  # what the answer carries, and one to know there was more
    assert not view.dns_answers.entries  # a sample is never frozen into the answer cache


def test_udp_answers_are_random_over_every_healthy_instance() -> None:
    view = MemView()
    ok = big_service(view, 40)
    seen: Counter[str] = Counter()
    for _ in range(600):
        resp = ask(view, "big.service.consul", max_size=UDP_PLAIN)
        got = [str(rr.rdata) for rr in resp.rr]
        assert len(got) == 3 and len(set(got)) == 3 and set(got) <= ok
        seen.update(got)
    # 600 draws of 3 from 30 healthy: each is expected ~60 times; never seen would mean the
    # draw is not over all of them (chance of a false alarm ~1e-23)
    assert set(seen) == ok


def test_a_tag_and_health_filter_still_hold_when_sampling() -> None:
    view = MemView()
    big_service(view)
    canaries = {f"10.{i // 250}.{i % 250}.1" for i in range(0, 1000, 5) if i % 4 != 0}
    for _ in range(50):
        resp = ask(view, "canary.big.service.consul", max_size=UDP_PLAIN)
        got = {str(rr.rdata) for rr in resp.rr}
        assert len(got) == 3 and got <= canaries
    only_passing = DNSSettings(only_passing=True)
    passing = {f"10.{i // 250}.{i % 250}.1" for i in range(1000) if i % 4 in (2, 3)}
    resp = ask(view, "big.service.consul", cfg=only_passing, max_size=UDP_PLAIN)
    assert {str(rr.rdata) for rr in resp.rr} <= passing


def test_a_tcp_answer_carries_as_many_as_fit_and_none_unhealthy() -> None:
    view = MemView()
    ok = big_service(view)
    resp = ask(view, "big.service.consul", max_size=TCP_MAX)
    got = [str(rr.rdata) for rr in resp.rr]
    assert len(got) == len(ok) == len(set(got))  # 750 A records fit in 64 KiB
    assert set(got) == ok


def test_no_healthy_instance_is_nxdomain_and_a_missing_family_is_not() -> None:
    view = MemView()
    for i in range(50):
        view.add(f"n{i}", f"10.9.0.{i + 1}", "down", f"down-{i}", status="critical")
        view.add(f"m{i}", f"10.8.0.{i + 1}", "v4only", f"v4-{i}")
    assert outcome(view, "down.service.consul", max_size=UDP_PLAIN).rcode == NXDOMAIN
    aaaa = outcome(view, "v4only.service.consul", "AAAA", max_size=UDP_PLAIN)
    assert aaaa.rcode == 0 and not [rr for rr in aaaa.response.rr]
