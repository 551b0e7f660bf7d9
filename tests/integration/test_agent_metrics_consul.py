"""meshd's own metrics under Consul's names at /v1/agent/metrics: each moves when the thing it
measures happens (a register, a DNS question, an HTTP request, a Raft write)."""

from __future__ import annotations

import re
from typing import Any

import dns.message
import dns.query
from helpers import wait_for


def metrics(agent) -> dict[str, dict[str, Any]]:
    body = agent.get("/v1/agent/metrics").json()
    out: dict[str, dict[str, Any]] = {}
    for kind in ("Gauges", "Counters", "Samples"):
        for row in body[kind]:
            out[row["Name"]] = {**row, "kind": kind}
    return out


def count(agent, name: str) -> int:
    return int(metrics(agent).get(name, {}).get("Count", 0))


def ask(agent, name: str, rtype: str = "A") -> None:
    q = dns.message.make_query(name, rtype)
    dns.query.udp(q, "127.0.0.1", port=agent.dns_port, timeout=3)


def test_a_register_and_a_deregister_move_the_catalog_timers(agent):
    reg, dereg = count(agent, "consul.catalog.register"), count(agent, "consul.catalog.deregister")
    commits = count(agent, "consul.raft.commitTime")
    assert agent.put("/v1/catalog/register", {"Node": "m1", "Address": "10.9.0.1"}).status == 200
    assert count(agent, "consul.catalog.register") >= reg + 1  # anti-entropy may add one
    assert count(agent, "consul.raft.commitTime") > commits
    assert agent.put("/v1/catalog/deregister", {"Node": "m1"}).status == 200
    assert count(agent, "consul.catalog.deregister") >= dereg + 1
    m = metrics(agent)
    sample = m["consul.catalog.register"]
    assert sample["kind"] == "Samples" and 0 < sample["Min"] <= sample["Mean"] <= sample["Max"]
    assert m["consul.raft.apply"]["kind"] == "Counters" and m["consul.raft.apply"]["Count"] > 0


def test_dns_questions_move_the_domain_and_ptr_timers(agent):
    domain, ptr = count(agent, "consul.dns.domain_query"), count(agent, "consul.dns.ptr_query")
    ask(agent, "consul.service.consul")
    assert count(agent, "consul.dns.domain_query") == domain + 1
    assert count(agent, "consul.dns.ptr_query") == ptr
    ask(agent, "1.0.0.127.in-addr.arpa", "PTR")
    assert count(agent, "consul.dns.ptr_query") == ptr + 1
    assert count(agent, "consul.dns.domain_query") == domain + 1


def test_http_requests_are_timed_per_route_in_consuls_form(agent):
    before = count(agent, "consul.http.GET.v1.kv._")
    for key in ("a", "b/c"):
        agent.get(f"/v1/kv/{key}")
    # the key is not part of the name: one timer for the route
    assert count(agent, "consul.http.GET.v1.kv._") == before + 2
    agent.get("/v1/agent/services")
    assert count(agent, "consul.http.GET.v1.agent.services") >= 1
    # a made-up method or path mints no timer of its own
    agent.request("BREW", "/v1/agent/services")
    agent.get("/v1/no/such/path")
    names = set(metrics(agent))
    assert not any("BREW" in n or "no.such" in n for n in names)


def test_leader_and_autopilot_gauges_on_a_dev_server(agent):
    m = metrics(agent)
    assert m["consul.raft.state.leader"]["Count"] == 1  # it became leader once
    assert m["consul.autopilot.healthy"]["Value"] == 1
    assert m["consul.raft.leader.lastContact"]["Value"] == 0  # no followers to wait for
    assert m["meshd.server.watches"]["kind"] == "Gauges"
    assert m["meshd.xds.pushes"]["kind"] == "Counters"
    wait_for(lambda: count(agent, "meshd.heartbeat.rtt") > 0, 10)


def test_prometheus_format_has_the_timers_as_summaries(agent):
    agent.get("/v1/kv/x")
    body = agent.get("/v1/agent/metrics?format=prometheus").body.decode()
    assert "# TYPE consul_http_GET_v1_kv__ summary" in body
    n = re.search(r"^consul_http_GET_v1_kv___count (\S+)$", body, re.M)
    assert n and float(n.group(1)) >= 1
    assert re.search(r'^consul_raft_commitTime\{quantile="0.99"\} \S+$', body, re.M)
    assert "\nconsul_raft_apply_total " in body
