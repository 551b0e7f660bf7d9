"""The agent's own token: without one, its catalog sync is refused by the servers; a token with
node:write on its node, set through `meshd acl set-agent-token`, lets it register its services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from acl_helpers import MGMT, ACLAgent, running_acl_agent
from helpers import run_meshd, wait_for


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent(agent_token=False)


def test_agent_token_enables_catalog_sync(acl: ACLAgent) -> None:
    node = acl.ok("GET", "/v1/agent/self")["Config"]["NodeName"]
    acl.ok("PUT", "/v1/agent/service/register", {"Name": "web", "Port": 80})
    wait_for(lambda: "anti-entropy sync failed: Permission denied" in acl.proc.read_log())
    assert acl.ok("GET", "/v1/catalog/service/web") == []

    _, own_node = acl.token_for(f'node "{node}" {{ policy = "write" }}')
    _, other_node = acl.token_for('node "elsewhere" { policy = "write" }')
    addr = acl.proc.http
    refused = run_meshd(
        "acl", "set-agent-token", "agent", own_node, f"-token={other_node}", http_addr=addr
    )
    assert refused.returncode != 0 and "lacks permission 'agent:write'" in refused.stderr
    done = run_meshd("acl", "set-agent-token", "agent", own_node, f"-token={MGMT}", http_addr=addr)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: acl.ok("GET", "/v1/catalog/service/web"), timeout=15)
