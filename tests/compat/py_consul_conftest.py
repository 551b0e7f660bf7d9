"""Replacement for py-consul's root conftest.py: the same fixtures, backed by `meshd agent -dev`.

py-consul's own conftest starts `hashicorp/consul` containers through Docker, one per test and
per Consul version. The runner (run_py_consul.py) copies this file over it, so the tests run
unchanged against meshd: one fresh agent per test, as upstream, with its version read from
/v1/agent/self exactly as upstream does.

A fresh agent per test costs ~2 s of mostly idle start-up (Raft election, serfHealth), so
agents are started a few ahead in background threads and stopped in the background: the
per-test isolation stays, the wall-clock cost mostly goes.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

sys.path.insert(0, os.path.join(os.environ["MESHD_REPO"], "tests"))

from helpers import MeshdProcess, dev_agent, wait_for

ConsulInstance = collections.namedtuple("ConsulInstance", ["container", "port", "version"])

PREFETCH = int(os.environ.get("MESHD_COMPAT_PREFETCH", "3"))
# Upstream's agent config, minus what `-dev` already implies.
BASE_CONFIG: dict[str, Any] = {"enable_script_checks": True}


class AgentStartError(RuntimeError):
    """A meshd agent for a py-consul test did not come up; carries its log tail."""


def _config_file(config: dict[str, Any]) -> str:
    fd, path = tempfile.mkstemp(prefix="meshd-compat-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


def _start(config: dict[str, Any], attempts: int = 3) -> MeshdProcess:
    """A ready agent; a failed start is retried on fresh ports, since on a busy shared host a
    port picked free can be taken by another process before the agent binds it."""
    errors: list[str] = []
    for _ in range(attempts):
        agent = dev_agent(f"-config-file={_config_file(config)}")
        try:
            return agent.start(timeout=30)
        except (RuntimeError, OSError) as e:
            agent.stop()
            errors.append(str(e))
    raise AgentStartError("\n---\n".join(errors))


class AgentPool:
    """Agents of one configuration, started `PREFETCH` ahead so a test never waits for Raft."""

    def __init__(self, workers: ThreadPoolExecutor, config: dict[str, Any]) -> None:
        self._workers = workers
        self._config = config
        self._ready: collections.deque[Future[MeshdProcess]] = collections.deque()

    def take(self) -> MeshdProcess:
        while len(self._ready) < PREFETCH + 1:
            self._ready.append(self._workers.submit(_start, self._config))
        agent = self._ready.popleft().result()
        self._ready.append(self._workers.submit(_start, self._config))
        return agent

    def close(self) -> None:
        for f in self._ready:
            if f.exception() is None:
                f.result().stop()


class Agents:
    """Session-wide pools: plain agents, and agents with ACLs on under one management token."""

    def __init__(self) -> None:
        self.workers = ThreadPoolExecutor(max_workers=2 * PREFETCH + 2)
        self.acl_token = uuid.uuid4().hex
        self.plain = AgentPool(self.workers, BASE_CONFIG)
        self.acl = AgentPool(self.workers, {**BASE_CONFIG, **self._acl_config()})

    def _acl_config(self) -> dict[str, Any]:
        """Upstream's ACL config, if this meshd knows the `acl` block (else the tests will say)."""
        from meshd.config import ConfigError, load_config

        acl = {
            "primary_datacenter": "dc1",
            "acl": {"enabled": True, "tokens": {"initial_management": self.acl_token}},
        }
        try:
            load_config(files=[_config_file(acl)], dev=True)
        except ConfigError:
            return {}
        return acl

    def stop_later(self, agent: MeshdProcess) -> None:
        self.workers.submit(agent.stop)

    def close(self) -> None:
        self.plain.close()
        self.acl.close()
        self.workers.shutdown(wait=True)


def _version(agent: MeshdProcess) -> str:
    return str(agent.get("/v1/agent/self").json()["Config"]["Version"]).strip()


@pytest.fixture(scope="session")
def _meshd_agents() -> Iterator[Agents]:
    agents = Agents()
    yield agents
    agents.close()


@pytest.fixture(scope="session", autouse=True)
def _unset_consul_token() -> None:
    os.environ.pop("CONSUL_HTTP_TOKEN", None)


@pytest.fixture
def consul_instance(_meshd_agents: Agents) -> Iterator[ConsulInstance]:
    agent = _meshd_agents.plain.take()
    yield ConsulInstance(agent, agent.http_port, _version(agent))
    _meshd_agents.stop_later(agent)


@pytest.fixture
def acl_consul_instance(_meshd_agents: Agents) -> Iterator[tuple[ConsulInstance, str]]:
    agent = _meshd_agents.acl.take()
    # the leader stores the initial management and anonymous tokens once it takes office (as
    # Consul's does); upstream's tests read them first thing, so hand the agent over after that
    token = _meshd_agents.acl_token
    path = f"/v1/acl/token/00000000-0000-0000-0000-000000000002?token={token}"
    wait_for(lambda: agent.get(path).status == 200, 30)
    yield ConsulInstance(agent, agent.http_port, _version(agent)), _meshd_agents.acl_token
    _meshd_agents.stop_later(agent)


@pytest.fixture
def consul_port(consul_instance: ConsulInstance) -> tuple[int, str]:
    return consul_instance.port, consul_instance.version
