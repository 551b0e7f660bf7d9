"""Leaf certificates for this agent's services: key and CSR here, signature from the servers.

The private key is generated on the agent and never sent anywhere; only the CSR goes to the
servers. Each leaf is renewed at a random point between 60% and 90% of its lifetime (spreading
the fleet's renewals), and at once when the CA's active root changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from meshd.agent.backend import CatalogBackend
from meshd.rpc import SignRequest
from meshd.spiffe import check_service_name, spiffe_service_id

log = logging.getLogger("meshd.leaf")


class LeafError(ValueError):
    """A leaf that can never be issued (the name cannot be in a SPIFFE ID): a 400, not a retry."""


@dataclass
class Leaf:
    service: str
    key_pem: str
    cert_pem: str  # leaf followed by any cross-signed intermediate
    serial: str
    valid_after: dt.datetime
    valid_before: dt.datetime
    root_id: str
    index: int
    spiffe_id: str


class LeafManager:
    def __init__(
        self, backend: CatalogBackend, datacenter: str, on_change: Callable[[], None]
    ) -> None:
        self.backend = backend
        self.datacenter = datacenter
        self.on_change = on_change
        self.trust_domain = ""
        self.active_root = ""
        self.leaves: dict[str, Leaf] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._counter = 0
        self._changed = asyncio.Condition()

    def set_roots(self, trust_domain: str, active_root: str) -> None:
        """Called when the CA roots change; a new active root re-signs every leaf now."""
        rotated = self.active_root and active_root and active_root != self.active_root
        self.trust_domain, self.active_root = trust_domain, active_root
        if rotated:
            for service in list(self._tasks):
                self._restart(service)

    def _restart(self, service: str) -> None:
        task = self._tasks.get(service)
        if task:
            task.cancel()
        # a fresh context: the loop outlives whichever request started it, so it signs and
        # renews with the agent's own token, never with a caller's that may be deleted later
        self._tasks[service] = asyncio.create_task(
            self._loop(service), name=f"leaf {service}", context=contextvars.Context()
        )

    def ensure(self, service: str) -> None:
        """Start issuing (and renewing) a leaf for `service`, once.

        A name no CA would sign starts no retry loop: it would fail, and log, forever.
        """
        if service in self._tasks:
            return
        try:
            check_service_name(service)
        except ValueError as e:
            log.warning("no leaf for %r: %s", service, e)
            return
        if service not in self._tasks:
            self._ready[service] = asyncio.Event()
            self._restart(service)

    async def get(self, service: str, timeout: float = 15.0) -> Leaf:
        try:
            check_service_name(service)
        except ValueError as e:
            raise LeafError(f"cannot issue a leaf certificate: {e}") from None
        self.ensure(service)
        await asyncio.wait_for(self._ready[service].wait(), timeout)
        return self.leaves[service]

    async def wait_change(self, service: str, index: int, timeout: float) -> Leaf:
        """Blocking-query semantics for /v1/agent/connect/ca/leaf: wait for a newer leaf."""
        leaf = await self.get(service)
        if leaf.index > index:
            return leaf
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.leaves[service].index > index), timeout
                )
        return self.leaves[service]

    async def _loop(self, service: str) -> None:
        backoff = 0.2
        while True:
            try:
                leaf = await self._issue(service)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # servers unreachable or CA not ready: retry
                log.warning("leaf for %s: %s", service, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.2
            self.leaves[service] = leaf
            self._ready[service].set()
            async with self._changed:
                self._changed.notify_all()
            self.on_change()
            # the certificate's NotBefore is backdated for clock skew; the renewal window is a
            # share of the lifetime from when we got it
            issued = dt.datetime.now(dt.UTC)
            from meshd.agent.leafkeys import renew_at

            when = renew_at(min(issued, leaf.valid_before), leaf.valid_before, random)
            delay = (when - dt.datetime.now(dt.UTC)).total_seconds()
            await asyncio.sleep(max(delay, 1.0))

    async def _issue(self, service: str) -> Leaf:
        # cryptography is only needed once a local service takes part in the mesh
        from meshd.agent.leafkeys import new_key_and_csr

        while not self.trust_domain:
            await asyncio.sleep(0.1)
        key_pem, csr_pem = await asyncio.to_thread(
            new_key_and_csr, self.trust_domain, self.datacenter, service
        )
        reply = await self.backend.sign(SignRequest(CSR=csr_pem, Service=service))
        self._counter += 1
        return Leaf(
            service=service,
            key_pem=key_pem,
            cert_pem=reply.CertPEM,
            serial=reply.SerialNumber,
            valid_after=dt.datetime.fromisoformat(reply.ValidAfter),
            valid_before=dt.datetime.fromisoformat(reply.ValidBefore),
            root_id=reply.RootID,
            index=self._counter,
            spiffe_id=spiffe_service_id(self.trust_domain, self.datacenter, service),
        )

    def drop(self, service: str) -> None:
        task = self._tasks.pop(service, None)
        if task:
            task.cancel()
        self.leaves.pop(service, None)
        self._ready.pop(service, None)

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        self._tasks.clear()
