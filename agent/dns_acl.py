"""DNS under ACLs: services and nodes the `dns` (else `default`) token cannot read do not exist.

A view wrapper over the agent's DNS view: the pure answer code stays ACL-free, and with ACLs off
the agent never builds this wrapper (no cost). The token's authorizer is resolved through the
agent's token cache and refreshed every `token_ttl`; a change of authorizer drops the cached
answers, which were built with the old rights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from meshd.acl import Access, Authorizer, build_authorizer
from meshd.agent.acl import ACLNotFoundError, TokenResolver
from meshd.agent.dns import DNSView
from meshd.agent.dns_cache import AnswerCache
from meshd.structs import CheckServiceNode, Node

log = logging.getLogger("meshd.dns")
R = Access.READ
_DENY = build_authorizer([], "deny")


class ACLDNSView:
    """Per query this adds one clock read (the expiry) to a cached answer: the hot path."""

    def __init__(self, view: DNSView, authz: Authorizer) -> None:
        self._view = view
        self.datacenter = view.datacenter
        self.node_name = view.node_name
        # the answer path looks these up on every query: bound here, not via __getattr__
        for name in ("stamp", "load"):
            if hasattr(view, name):
                setattr(self, name, getattr(view, name))
        self.authz = authz
        self._until = math.inf
        self._answers = AnswerCache()
        self.set_authorizer(authz, force=True)

    @property
    def dns_answers(self) -> AnswerCache:
        if self._until <= time.time():
            self._current()
        return self._answers

    def _current(self) -> Authorizer:
        """The token's rights, until it expires: from then on nothing (checked per query, so
        an expired dns token stops answering at once, not at the next refresh)."""
        if self._until <= time.time():
            log.warning("the DNS token expired: DNS answers nothing")
            self.set_authorizer(_DENY)
        return self.authz

    def __getattr__(self, name: str) -> Any:  # anything else: the underlying view's
        return getattr(self._view, name)

    def set_authorizer(self, authz: Authorizer, force: bool = False) -> None:
        if force or authz is not self.authz:
            self.authz = authz
            self._until = math.inf if authz.expires_at is None else authz.expires_at
            self._answers = AnswerCache()

    def _instances(self, rows: list[CheckServiceNode]) -> list[CheckServiceNode]:
        a = self._current()
        return [
            r
            for r in rows
            if a.allowed("service", r.Service.Service, R) and a.allowed("node", r.Node.Node, R)
        ]

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self._instances(self._view.service_instances(name))

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return self._instances(self._view.connect_instances(name))

    def node(self, name: str) -> Node | None:
        node = self._view.node(name)
        return node if node is not None and self._current().allowed("node", node.Node, R) else None

    def nodes(self) -> list[Node]:
        a = self._current()
        return [n for n in self._view.nodes() if a.allowed("node", n.Node, R)]

    def server_nodes(self) -> list[Node]:
        return self._view.server_nodes()  # NS records: the servers are not secret (Consul)


async def dns_authorizer(resolver: TokenResolver) -> Authorizer:
    token = resolver.config.tokens.dns or resolver.config.tokens.default
    try:
        return await resolver.resolve(token)
    except ACLNotFoundError:
        log.warning("acl.tokens.dns is not a token the servers know: DNS answers nothing")
        return build_authorizer([], "deny")


async def refresh(view: ACLDNSView, resolver: TokenResolver) -> None:
    """Keep the view's authorizer current (the resolver's cache bounds the RPCs to one a TTL)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(resolver.forgotten.wait(), resolver.config.token_ttl)
        resolver.forgotten.clear()
        with contextlib.suppress(Exception):  # logged by the resolver; keep the last rights
            view.set_authorizer(await dns_authorizer(resolver))


async def guarded(view: DNSView, resolver: TokenResolver) -> tuple[ACLDNSView, asyncio.Task[None]]:
    """The view DNS answers from with ACLs on, and the task that keeps its rights current."""
    acl_view = ACLDNSView(view, await dns_authorizer(resolver))
    return acl_view, asyncio.create_task(refresh(acl_view, resolver), name="dns-acl-refresh")
