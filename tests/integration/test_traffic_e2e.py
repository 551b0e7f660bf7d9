"""Traffic management end to end: discovery-chain entries -> real Envoys -> real requests.

One dev agent, three sidecars (api v1, api v2, web) and two upstream apps shared by every test;
each test writes its entries, watches the traffic change, and deletes them again (in reverse
order, as the servers refuse removing a subset something still splits to).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from helpers import BackgroundHTTP, MeshdProcess, dev_agent, free_ports, wait_for
from test_mesh_e2e import Mesh

RESOLVER = {
    "Kind": "service-resolver",
    "Name": "api",
    "DefaultSubset": "v1",
    "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2"},
    },
}


class App:
    """An `api` instance: answers with its version; `/flaky` fails every other request with
    503, `/slow` and `/hold` take 2 s and 1 s, and `broken` makes it answer 500 to everything."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.broken = False
        self.flaky = itertools.count()

    async def handle(self, request: web.Request) -> web.Response:
        if self.broken:
            return web.Response(status=500, text="broken")
        if request.path.startswith("/flaky") and next(self.flaky) % 2 == 0:
            return web.Response(status=503, text="flaky")
        if request.path.startswith("/slow"):
            await asyncio.sleep(2)
        if request.path.startswith("/hold"):
            await asyncio.sleep(1)
        return web.json_response({"version": self.version, "path": request.path})


class Client:
    """Keep-alive HTTP to web's upstream listener: thousands of requests, few connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def get(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, str]:
        for attempt in range(2):
            try:
                self.conn.request("GET", path, headers=headers or {})
                r = self.conn.getresponse()
                body = r.read().decode(errors="replace")
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                return r.status, body
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                if attempt:
                    return 0, ""
        return 0, ""

    def version(self, path: str = "/", headers: dict[str, str] | None = None) -> str:
        status, body = self.get(path, headers)
        return body.split('"version": "')[1][:2] if status == 200 and "version" in body else ""


class Traffic:
    def __init__(self, agent: MeshdProcess, ports: dict[str, int], apps: dict[str, App]) -> None:
        self.agent = agent
        self.ports = ports
        self.apps = apps
        self.client = Client(ports["up"])

    @contextlib.contextmanager
    def entries(self, *raw: dict[str, Any]) -> Iterator[None]:
        written = []
        try:
            for entry in raw:
                r = self.agent.put("/v1/config", entry)
                assert r.status == 200 and r.json() is True, r.body
                written.append(entry)
            yield
        finally:
            for entry in reversed(written):
                path = f"/v1/config/{entry['Kind']}/{entry['Name']}"
                assert self.agent.request("DELETE", path).status == 200

    def versions(self, n: int, path: str = "/", headers: dict[str, str] | None = None) -> Counter:
        return Counter(self.client.version(path, headers) for _ in range(n))


@pytest.fixture(scope="module")
def traffic() -> Iterator[Traffic]:
    agent = dev_agent().start()
    background = BackgroundHTTP()
    mesh = Mesh(agent)
    names = ("v1", "v2", "web", "up", "pub1", "pub2", "pubw", "adm1", "adm2", "admw")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    apps = {"v1": App("v1"), "v2": App("v2")}
    try:
        assert (
            agent.put(
                "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
            ).status
            == 200
        )
        for i, version in ((1, "v1"), (2, "v2")):
            background.serve(ports[version], apps[version].handle)
            r = agent.put(
                "/v1/agent/service/register",
                {
                    "Name": "api",
                    "ID": f"api-{i}",
                    "Port": ports[version],
                    "Meta": {"version": version},
                    "Check": {"CheckID": f"api-{i}-ttl", "TTL": "10m", "Status": "passing"},
                    "Connect": {"SidecarService": {"Port": ports[f"pub{i}"]}},
                },
            )
            assert r.status == 200, r.body
            mesh.sidecar(f"api-{i}", ports[f"adm{i}"])
        background.serve(ports["web"], App("web").handle)
        r = agent.put(
            "/v1/agent/service/register",
            {
                "Name": "web",
                "ID": "web",
                "Port": ports["web"],
                "Connect": {
                    "SidecarService": {
                        "Port": ports["pubw"],
                        "Proxy": {
                            "Upstreams": [{"DestinationName": "api", "LocalBindPort": ports["up"]}]
                        },
                    }
                },
            },
        )
        assert r.status == 200, r.body
        mesh.sidecar("web", ports["admw"])
        t = Traffic(agent, ports, apps)
        wait_for(lambda: set(t.versions(10)) == {"v1", "v2"}, 60)
        yield t
    finally:
        mesh.close()
        background.close()
        agent.stop()


def test_split_90_10_over_2000_requests(traffic: Traffic) -> None:
    splitter = {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}],
    }
    with traffic.entries(RESOLVER, splitter):
        # the resolver alone sends everything to v1; the split then adds v2's 10 %
        wait_for(lambda: traffic.versions(30)["v2"] > 0, 30)
        seen = traffic.versions(2000)
        assert set(seen) == {"v1", "v2"}, seen
        assert 0.87 <= seen["v1"] / 2000 <= 0.93, seen
    wait_for(lambda: set(traffic.versions(20)) == {"v1", "v2"}, 30)


def test_header_route_sends_only_matching_requests_to_v2(traffic: Traffic) -> None:
    router = {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
                "Destination": {"ServiceSubset": "v2"},
            }
        ],
    }
    with traffic.entries(RESOLVER, router):
        wait_for(lambda: traffic.versions(5, headers={"x-canary": "1"}) == {"v2": 5}, 30)
        assert traffic.versions(50, headers={"x-canary": "1"}) == {"v2": 50}
        assert traffic.versions(50) == {"v1": 50}
        assert traffic.versions(50, headers={"x-canary": "0"}) == {"v1": 50}


def test_request_timeout_cuts_a_slow_upstream_with_504(traffic: Traffic) -> None:
    router = {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/slow"}}, "Destination": {"RequestTimeout": "200ms"}}
        ],
    }
    with traffic.entries(router):
        wait_for(lambda: traffic.client.get("/slow")[0] == 504, 30)
        started = time.monotonic()
        status, _ = traffic.client.get("/slow")
        elapsed = time.monotonic() - started
        assert status == 504
        assert elapsed < 1.0  # cut by the route's timeout, not by the app's 2 s answer
    wait_for(lambda: traffic.client.get("/slow")[0] == 200, 30)  # the app's own pace again


def test_retries_turn_a_flaky_upstream_into_successes(traffic: Traffic) -> None:
    without = Counter(traffic.client.get("/flaky")[0] for _ in range(60))
    assert without[503] >= 25, without  # what the app does on its own: half are 503
    router = {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"PathPrefix": "/flaky"}},
                "Destination": {"NumRetries": 3, "RetryOnStatusCodes": [503]},
            }
        ],
    }
    with traffic.entries(router):
        wait_for(lambda: all(traffic.client.get("/flaky")[0] == 200 for _ in range(10)), 30)
        # each retry waits Envoy's back-off (25 ms base), so a few hundred requests suffice
        outcome = Counter(traffic.client.get("/flaky")[0] for _ in range(200))
        assert outcome[200] / 200 >= 0.99, outcome


def test_failover_to_another_subset_and_back(traffic: Traffic) -> None:
    resolver = {**RESOLVER, "Failover": {"v1": {"ServiceSubset": "v2"}}}
    with traffic.entries(resolver):
        wait_for(lambda: traffic.versions(20) == {"v1": 20}, 30)
        traffic.agent.put("/v1/agent/check/fail/api-1-ttl")
        try:
            wait_for(lambda: traffic.versions(10) == {"v2": 10}, 30)
            assert traffic.versions(30) == {"v2": 30}
        finally:
            traffic.agent.put("/v1/agent/check/pass/api-1-ttl")
        wait_for(lambda: traffic.versions(10) == {"v1": 10}, 30)


def test_circuit_breaker_rejects_requests_above_the_limit_at_once(traffic: Traffic) -> None:
    defaults = {
        "Kind": "service-defaults",
        "Name": "web",
        "UpstreamConfig": {
            "Overrides": [
                {"Name": "api", "Limits": {"MaxConcurrentRequests": 2, "MaxPendingRequests": 1}}
            ]
        },
    }

    def burst() -> list[tuple[int, float]]:
        def one(_: int) -> tuple[int, float]:
            started = time.monotonic()
            status, _body = Client(traffic.ports["up"]).get("/hold")
            return status, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(8)))

    base = burst()
    assert all(status == 200 for status, _ in base), base  # no limit: all 8 are served
    with traffic.entries(defaults):
        wait_for(lambda: any(status == 503 for status, _ in burst()), 30)
        results = burst()
        rejected = [elapsed for status, elapsed in results if status == 503]
        served = [status for status, _ in results if status == 200]
        assert len(rejected) >= 5 and len(served) <= 3, results
        assert max(rejected) < 0.9  # refused at once, not after the 1 s the app takes


def test_outlier_detection_ejects_a_failing_instance_and_brings_it_back(traffic: Traffic) -> None:
    defaults = {
        "Kind": "service-defaults",
        "Name": "web",
        "UpstreamConfig": {
            "Defaults": {
                "PassiveHealthCheck": {
                    "Interval": "1s",
                    "MaxFailures": 3,
                    "BaseEjectionTime": "2s",
                    "MaxEjectionPercent": 50,
                }
            }
        },
    }
    with traffic.entries(defaults):
        time.sleep(1)  # the outlier detector is in place before v2 breaks
        traffic.apps["v2"].broken = True
        try:
            wait_for(lambda: all(traffic.client.get()[0] == 200 for _ in range(20)), 30)
            assert traffic.versions(40) == {"v1": 40}  # v2 ejected
        finally:
            traffic.apps["v2"].broken = False
        wait_for(lambda: traffic.versions(20)["v2"] > 0, 30)  # back after the ejection time


def test_fault_injection_aborts_half_and_delays(traffic: Traffic) -> None:
    router = {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"PathPrefix": "/abort"}},
                "Destination": {"Fault": {"AbortStatus": 503, "AbortPercent": 50}},
            },
            {
                "Match": {"HTTP": {"PathPrefix": "/delay"}},
                "Destination": {"Fault": {"Delay": "300ms", "DelayPercent": 100}},
            },
        ],
    }
    with traffic.entries(router):
        wait_for(lambda: any(traffic.client.get("/abort")[0] == 503 for _ in range(20)), 30)
        outcome = Counter(traffic.client.get("/abort")[0] for _ in range(400))
        assert set(outcome) == {200, 503} and 0.40 <= outcome[503] / 400 <= 0.60, outcome
        started = time.monotonic()
        assert traffic.client.get("/delay")[0] == 200
        # Envoy's 300 ms timer may fire a little early (298.6 ms was seen in CI); an undelayed
        # request through the same sidecars takes a few ms
        assert time.monotonic() - started >= 0.28
        assert traffic.client.get("/other")[0] == 200  # other routes are untouched


def test_chain_changes_under_traffic_drop_no_request(traffic: Traffic) -> None:
    """Subset clusters come and go with each change; Envoy must never route to one it lacks."""
    splitter = {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}],
    }
    statuses: Counter = Counter()
    stop = False

    def load() -> None:
        client = Client(traffic.ports["up"])
        while not stop:
            statuses[client.get()[0]] += 1

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(load)
        for _ in range(2):
            with traffic.entries(RESOLVER):
                wait_for(lambda: traffic.versions(10) == {"v1": 10}, 30)
                with traffic.entries(splitter):
                    wait_for(lambda: traffic.versions(20)["v2"] > 0, 30)
            wait_for(lambda: set(traffic.versions(20)) == {"v1", "v2"}, 30)
        stop = True
        running.result()
    assert set(statuses) == {200} and statuses[200] > 100, statuses


def test_discovery_chain_endpoint_and_refused_entries(traffic: Traffic) -> None:
    agent = traffic.agent
    splitter = {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v3"}],
    }
    with traffic.entries(RESOLVER):
        r = agent.put("/v1/config", splitter)
        assert r.status == 400 and b"does not have a subset named 'v3'" in r.body
        assert agent.get("/v1/config/service-splitter/api").status == 404
        chain = agent.get("/v1/discovery-chain/api").json()["Chain"]
        assert chain["StartNode"] == "resolver:v1.api.default.default.dc1"
        assert chain["Protocol"] == "http"
        assert set(chain["Targets"]) == {"v1.api.default.default.dc1"}
    tcp_router = {"Kind": "service-router", "Name": "web", "Routes": []}
    r = agent.put("/v1/config", tcp_router)
    assert r.status == 400 and b"does not permit advanced routing" in r.body
    assert agent.get("/v1/config/service-router/web").status == 404
