"""With ACLs off, Consul answers its ACL endpoints and the agent's token endpoints with 401
"ACL support disabled" (clients such as py-consul raise ACLDisabled on it); the rest works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, dev_agent


@pytest.fixture(scope="module")
def agent() -> Iterator[MeshdProcess]:
    proc = dev_agent().start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/v1/agent/token/default", {"Token": "x"}),
        ("PUT", "/v1/agent/token/nonsense", {"Token": "x"}),
        ("PUT", "/v1/acl/bootstrap", None),
        ("GET", "/v1/acl/tokens", None),
        ("PUT", "/v1/acl/policy", {"Name": "p"}),
        ("GET", "/v1/acl/token/self", None),
        ("GET", "/v1/acl/roles", None),
    ],
)
def test_acl_endpoints_answer_401_when_acls_are_off(
    agent: MeshdProcess, method: str, path: str, body: object
) -> None:
    r = agent.request(method, path, body)
    assert (r.status, r.body) == (401, b"ACL support disabled")


def test_other_endpoints_need_no_token_with_acls_off(agent: MeshdProcess) -> None:
    assert agent.put("/v1/kv/free", b"v").status == 200
    assert agent.get("/v1/kv/free?raw").body == b"v"
