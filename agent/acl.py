"""The agent's token cache: a SecretID -> a compiled Authorizer, kept for `token_ttl`.

Resolving a token is one read on the servers (`ACLResolve`, the token's resolved rule texts);
the compiled authorizer is cached so that a request with a known token costs a dict lookup.
When no server answers, `down_policy` decides (Consul's): `allow`, `deny`, or, for
`extend-cache`/`async-cache`, the last known answer for that token (deny if none).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict

from meshd import queries as q
from meshd.acl import MANAGEMENT, Authorizer, build_authorizer, parse_rules
from meshd.acl.expiry import epoch
from meshd.acl.model import ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, expired
from meshd.acl.settings import ACLConfig
from meshd.agent.backend import CatalogBackend
from meshd.server.raft import RaftError

log = logging.getLogger("meshd.acl")
MAX_CACHED = 10_000


class ACLNotFoundError(Exception):
    """403 `ACL not found`: the token does not exist (or expired), as Consul answers."""

    def __init__(self) -> None:
        super().__init__("ACL not found")


class TokenResolver:
    def __init__(self, config: ACLConfig, backend: CatalogBackend) -> None:
        self.config = config
        self.backend = backend
        self._cache: OrderedDict[str, tuple[Authorizer, float]] = OrderedDict()
        self._anonymous = build_authorizer([], config.default_policy, ANONYMOUS_ACCESSOR)
        self._deny = build_authorizer([], "deny")
        self._allow = build_authorizer([], "allow")
        # set when cached answers are dropped (a token or policy write, an agent token set):
        # the DNS view re-resolves its token then instead of at its next refresh
        self.forgotten = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def _is_initial_management(self, secret: str) -> bool:
        configured = self.config.tokens.initial_management
        return bool(configured) and hmac.compare_digest(configured.encode(), secret.encode())

    async def resolve(self, secret: str) -> Authorizer:
        """The authorizer of `secret` ("" = the agent's default token, else anonymous)."""
        if not self.config.enabled:
            return MANAGEMENT
        # no token: the default token, else the anonymous token (whose policies an operator
        # may extend, as in Consul; until the leader has created it, the default policy)
        secret = secret or self.config.tokens.default or ANONYMOUS_SECRET
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None:  # the hot path: a dict lookup and a clock read
            authz, until = hit
            if authz.expires_at is not None and authz.expires_at <= time.time():
                self._cache.pop(secret, None)  # expired while cached: refused at once
                raise ACLNotFoundError()
            if until > now:
                return authz
        if self._is_initial_management(secret):
            return MANAGEMENT
        try:
            answer = await self.backend.read(q.ACLResolve(SecretID=secret))
        except RaftError:
            return self._down(hit)
        resolved = answer.value
        if resolved is None and secret == ANONYMOUS_SECRET:
            self._cache[secret] = (self._anonymous, now + self.config.token_ttl)
            return self._anonymous
        if resolved is None or expired(resolved.ExpirationTime):
            self._cache.pop(secret, None)
            raise ACLNotFoundError()
        if resolved.Management:
            authz = Authorizer(management=True, accessor=resolved.AccessorID)
        else:
            rules = [r for text in resolved.Rules for r in parse_rules(text)]
            authz = build_authorizer(rules, self.config.default_policy, resolved.AccessorID)
        authz.expires_at = epoch(resolved.ExpirationTime)
        self._cache[secret] = (authz, now + self.config.token_ttl)
        self._cache.move_to_end(secret)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return authz

    def _down(self, hit: tuple[Authorizer, float] | None) -> Authorizer:
        policy = self.config.down_policy
        log.warning("no server answered a token lookup; applying down_policy %s", policy)
        if policy == "allow":
            return self._allow
        if policy in ("extend-cache", "async-cache") and hit is not None:
            return hit[0]
        return self._deny

    def forget(self) -> None:
        """Drop every cached answer (after a token or policy write through this agent)."""
        self._cache.clear()
        self.forgotten.set()
