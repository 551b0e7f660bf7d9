"""The agent's token cache: one server read per token per TTL, and down_policy without servers."""

from __future__ import annotations

from typing import Any

import pytest

from meshd import queries as q
from meshd.acl import Access
from meshd.acl.model import ResolvedToken
from meshd.acl.settings import ACLConfig, ACLTokens
from meshd.agent.acl import ACLNotFoundError, TokenResolver
from meshd.agent.backend import ReadResult
from meshd.server.raft import RaftError

SECRET = "6c1b8c36-44a5-4a0e-9f1c-3f3b0b2b6e11"


class Servers:
    """Answers ACLResolve like the servers; `down` makes every read fail as with no leader."""

    def __init__(self) -> None:
        self.reads = 0
        self.down = False
        self.tokens = {
            SECRET: ResolvedToken(AccessorID="acc", Rules=['key "k" { policy = "write" }'])
        }

    async def read(self, query: Any, **kw: Any) -> ReadResult:
        assert isinstance(query, q.ACLResolve)
        self.reads += 1
        if self.down:
            raise RaftError("No cluster leader")
        return ReadResult(1, self.tokens.get(query.SecretID))


def _resolver(servers: Servers, **kw: Any) -> TokenResolver:
    cfg = ACLConfig(enabled=True, default_policy="deny", tokens=ACLTokens(), **kw)
    return TokenResolver(cfg, servers)  # type: ignore[arg-type]


async def test_one_server_read_per_token_per_ttl() -> None:
    servers = Servers()
    resolver = _resolver(servers, token_ttl=3600.0)
    for _ in range(100):
        authz = await resolver.resolve(SECRET)
        assert authz.allowed("key", "k", Access.WRITE)
        assert not authz.allowed("key", "other", Access.READ)
    assert servers.reads == 1


async def test_unknown_token_is_acl_not_found_and_anonymous_is_default_policy() -> None:
    resolver = _resolver(Servers())
    with pytest.raises(ACLNotFoundError, match="ACL not found"):
        await resolver.resolve("00000000-0000-0000-0000-00000000dead")
    anonymous = await resolver.resolve("")
    assert not anonymous.allowed("service", "web", Access.READ)


@pytest.mark.parametrize(
    ("down_policy", "cached_first", "expect_write_k"),
    [
        ("extend-cache", True, True),  # the last known answer
        ("extend-cache", False, False),  # nothing known: deny
        ("allow", False, True),
        ("deny", True, False),
    ],
)
async def test_down_policy(down_policy: str, cached_first: bool, expect_write_k: bool) -> None:
    servers = Servers()
    resolver = _resolver(servers, down_policy=down_policy, token_ttl=0.000001)
    if cached_first:
        await resolver.resolve(SECRET)
    servers.down = True
    authz = await resolver.resolve(SECRET)
    assert authz.allowed("key", "k", Access.WRITE) is expect_write_k
    assert not authz.allowed("acl", "", Access.WRITE)
