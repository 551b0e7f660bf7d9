"""The HTTP API keeps its application state under typed keys (`web.AppKey`).

aiohttp deprecates string keys (`app["agent"]`) with a NotAppKeyWarning. A warning raised in a
child process never reaches pytest, so this one test runs a dev agent inside the test process
and drives a request through every API module; pyproject's filterwarnings turns the warning into
an error, and the test also checks for it explicitly.
"""

from __future__ import annotations

import warnings

import aiohttp
from aiohttp.web_exceptions import NotAppKeyWarning

from meshd.agent.agent import Agent
from meshd.config import load_config
from meshd.testing import free_ports

# one read per module: agent_api, catalog_api, kv_api, operator_api, connect_api
PATHS = {
    "/v1/agent/self": 200,
    "/v1/catalog/services": 200,
    "/v1/kv/missing": 404,
    "/v1/operator/raft/configuration": 200,
    "/v1/connect/ca/roots": 200,
}


async def test_every_api_module_serves_without_string_app_keys() -> None:
    (http,) = free_ports(1)
    cfg = load_config(flags={"http-port": http, "dns-port": -1, "grpc-port": -1}, dev=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        agent = Agent(cfg)
        await agent.start()
        try:
            statuses = {}
            async with aiohttp.ClientSession() as session:
                for path in PATHS:
                    async with session.get(f"http://127.0.0.1:{http}{path}") as r:
                        statuses[path] = r.status
        finally:
            await agent.stop()
    assert statuses == PATHS
    assert [str(w.message) for w in seen if issubclass(w.category, NotAppKeyWarning)] == []
