"""The mesh reads through the agent's one watch cache: a change wakes only the proxies that read
it. A real dev agent in this process (real Raft, real HTTP), so its snapshots can be inspected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from helpers import free_port

from meshd import queries as q
from meshd.agent.agent import Agent
from meshd.agent.definitions import parse_service
from meshd.config import load_config


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    http, grpc = free_port(), free_port()
    while grpc == http:
        grpc = free_port()
    flags = {"node": "mesh-1", "http-port": http, "grpc-port": grpc, "dns-port": -1}
    a = Agent(load_config(flags=flags, dev=True))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


async def settled(agent: Agent) -> None:
    """Until the builder has gone quiet (the first leaves and roots cause a few rebuilds)."""
    last = None
    while last != dict(agent.mesh.builds):
        last = dict(agent.mesh.builds)
        await asyncio.sleep(0.3)


async def test_an_intention_wakes_only_the_proxies_of_its_destination(agent: Agent) -> None:
    for name, port in (("x", 9101), ("y", 9102)):
        defn = parse_service(
            {"Name": name, "Port": port, "Connect": {"SidecarService": {"Checks": []}}}
        )
        await agent.register_service(defn)
    mesh = agent.mesh
    px, py = "x-sidecar-proxy", "y-sidecar-proxy"
    await until(
        lambda: mesh.snapshot(px) is not None and mesh.snapshot(py) is not None, "snapshots"
    )
    await settled(agent)
    sx, sy = mesh.snapshot(px), mesh.snapshot(py)
    assert sx is not None and sy is not None
    builds_y = mesh.builds[py]
    # each destination's intentions are a watch of their own
    assert agent.cache.watching(q.ConfigEntries(Kind="service-intentions", Name="x"))
    assert agent.cache.watching(q.ConfigEntries(Kind="service-intentions", Name="y"))

    url = f"http://127.0.0.1:{agent.config.ports.http}/v1/connect/intentions/exact"
    async with aiohttp.ClientSession() as http:
        params = {"source": "web", "destination": "x"}
        async with http.put(url, params=params, json={"Action": "deny"}) as resp:
            assert resp.status == 200, await resp.text()

    await until(lambda: mesh.snapshot(px) is not sx, "x's new snapshot")
    new_x = mesh.snapshot(px)
    assert new_x is not None and new_x.version > sx.version and new_x.rbac != sx.rbac
    assert mesh.snapshot(py) is sy and sy.version == mesh.snapshot(py).version
    assert mesh.builds[py] == builds_y  # y's proxy was not even rebuilt


async def test_a_wildcard_intention_wakes_every_proxy(agent: Agent) -> None:
    for name, port in (("x", 9201), ("y", 9202)):
        defn = parse_service(
            {"Name": name, "Port": port, "Connect": {"SidecarService": {"Checks": []}}}
        )
        await agent.register_service(defn)
    mesh = agent.mesh
    px, py = "x-sidecar-proxy", "y-sidecar-proxy"
    await until(
        lambda: mesh.snapshot(px) is not None and mesh.snapshot(py) is not None, "snapshots"
    )
    await settled(agent)
    before = {p: mesh.snapshot(p) for p in (px, py)}
    url = f"http://127.0.0.1:{agent.config.ports.http}/v1/connect/intentions/exact"
    async with aiohttp.ClientSession() as http:
        params = {"source": "web", "destination": "*"}
        async with http.put(url, params=params, json={"Action": "deny"}) as resp:
            assert resp.status == 200, await resp.text()
    await until(
        lambda: all(mesh.snapshot(p) is not before[p] for p in (px, py)), "both new snapshots"
    )


async def test_a_chain_entry_wakes_only_its_callers_and_is_watched(agent: Agent) -> None:
    """A splitter for `api` rebuilds the sidecar that calls api (its chain gains the split and
    the subset targets), not one that does not; an upstream's own protocol tcp drops it."""
    upstreams = {
        "web": [{"DestinationName": "api", "LocalBindPort": 9311}],
        "raw": [{"DestinationName": "api", "LocalBindPort": 9312, "Config": {"protocol": "tcp"}}],
        "other": [],
    }
    for i, (name, ups) in enumerate(upstreams.items()):
        sidecar = {"Checks": [], "Proxy": {"Upstreams": ups}}
        defn = parse_service(
            {"Name": name, "Port": 9301 + i, "Connect": {"SidecarService": sidecar}}
        )
        await agent.register_service(defn)
    mesh = agent.mesh
    proxies = [f"{n}-sidecar-proxy" for n in upstreams]
    await until(lambda: all(mesh.snapshot(p) is not None for p in proxies), "snapshots")
    await settled(agent)
    before = {p: mesh.snapshot(p) for p in proxies}
    builds_other = mesh.builds["other-sidecar-proxy"]
    base = f"http://127.0.0.1:{agent.config.ports.http}/v1/config"
    entries = [
        {"Kind": "service-defaults", "Name": "api", "Protocol": "http"},
        {
            "Kind": "service-resolver",
            "Name": "api",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": ""}},
        },
        {
            "Kind": "service-splitter",
            "Name": "api",
            "Splits": [
                {"Weight": 75, "ServiceSubset": "v1"},
                {"Weight": 25, "ServiceSubset": "v2"},
            ],
        },
    ]
    async with aiohttp.ClientSession() as http:
        for entry in entries:
            async with http.put(base, json=entry) as resp:
                assert resp.status == 200, await resp.text()

    def chain_of(proxy: str) -> dict:
        snap = mesh.snapshot(proxy)
        assert snap is not None and snap.upstreams[0].chain is not None
        return snap.upstreams[0].chain

    await until(
        lambda: chain_of("web-sidecar-proxy")["StartNode"] == "splitter:api.default.default",
        "web's chain with the splitter",
    )
    assert set(chain_of("web-sidecar-proxy")["Targets"]) == {
        "v1.api.default.default.dc1",
        "v2.api.default.default.dc1",
    }
    assert agent.cache.watching(q.ConfigEntries(Kind="service-splitter", Name="api"))
    raw = chain_of("raw-sidecar-proxy")
    assert raw["Protocol"] == "tcp" and raw["StartNode"] == "resolver:api.default.default.dc1"
    assert mesh.snapshot("raw-sidecar-proxy").upstreams[0].protocol == "tcp"
    assert mesh.snapshot("other-sidecar-proxy") is before["other-sidecar-proxy"]
    assert mesh.builds["other-sidecar-proxy"] == builds_other
