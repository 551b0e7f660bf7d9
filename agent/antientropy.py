"""Anti-entropy: make the catalog's view of this node equal the agent's local state.

Every local change triggers a sync at once; changes that arrive while a sync is in flight are
coalesced into the next one, so a burst of registrations becomes one Raft entry (a `Batch`).
A periodic full sync, staggered, repairs anything the catalog lost or anyone else changed.
Entries on this node that the agent does not own are removed, except the servers' `serfHealth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import msgspec

from meshd import queries as q
from meshd.agent.backend import CatalogBackend
from meshd.agent.local import LocalState
from meshd.server.authority import CommandForbiddenError
from meshd.structs import (
    CONSUL_SERVICE,
    SERF_CHECK_ID,
    Batch,
    Deregister,
    HealthCheck,
    NodeService,
    Register,
)

log = logging.getLogger("meshd.antientropy")
replace = msgspec.structs.replace


def _bare(x: Any) -> Any:
    return replace(x, CreateIndex=0, ModifyIndex=0)


def _same_service(a: NodeService, b: NodeService) -> bool:
    return _bare(replace(a, Datacenter="")) == _bare(replace(b, Datacenter=""))


def _same_check(a: HealthCheck, b: HealthCheck) -> bool:
    return _bare(a) == _bare(b)


def diff_node(local: LocalState, remote: Any) -> list[Register | Deregister]:
    """Pure: the catalog operations that turn `remote` (NodeInfo answer) into `local`."""
    ops: list[Register | Deregister] = []
    node_reg = Register(
        Node=local.node,
        Address=local.address,
        ID=local.node_id,
        Datacenter=local.datacenter,
        TaggedAddresses=local.tagged_addresses,
        NodeMeta=local.node_meta,
    )
    rnode, rsvcs, rchecks = remote if remote else (None, [], [])
    if rnode is None or (rnode.Address, rnode.ID, rnode.TaggedAddresses, rnode.Meta) != (
        local.address,
        local.node_id,
        local.tagged_addresses,
        local.node_meta,
    ):
        ops.append(node_reg)
    remote_svcs = {s.ID: s for s in rsvcs}
    remote_checks = {c.CheckID: c for c in rchecks}
    # the servers own the `consul` service of a server's node (as Consul's anti-entropy skips it)
    remote_only = remote_svcs.keys() - local.services.keys() - {CONSUL_SERVICE}
    for sid in remote_only:
        ops.append(Deregister(Node=local.node, ServiceID=sid))
    for cid, c in remote_checks.items():
        if cid not in local.checks and cid != SERF_CHECK_ID and c.ServiceID not in remote_only:
            ops.append(Deregister(Node=local.node, CheckID=cid))
    for sid, svc in local.services.items():
        r = remote_svcs.get(sid)
        if r is None or not _same_service(svc, r):
            ops.append(
                Register(Node=local.node, Address=local.address, Service=svc, SkipNodeUpdate=True)
            )
    changed_checks = [
        lc.check
        for cid, lc in local.checks.items()
        if cid not in remote_checks or not _same_check(lc.check, remote_checks[cid])
    ]
    if changed_checks:
        ops.append(
            Register(
                Node=local.node, Address=local.address, Checks=changed_checks, SkipNodeUpdate=True
            )
        )
    return ops


def dirty_ops(
    local: LocalState, services: set[str], checks: set[str]
) -> list[Register | Deregister]:
    """Pure: the operations that push just the changed entries (services before checks).

    An unchanged entry re-sent is harmless: the store ignores a write that changes nothing.
    """
    ops: list[Register | Deregister] = []
    for sid in sorted(services):
        svc = local.services.get(sid)
        ops.append(
            Register(Node=local.node, Address=local.address, Service=svc, SkipNodeUpdate=True)
            if svc is not None
            else Deregister(Node=local.node, ServiceID=sid)
        )
    present = [local.checks[c].check for c in sorted(checks) if c in local.checks]
    ops.extend(
        Deregister(Node=local.node, CheckID=c) for c in sorted(checks) if c not in local.checks
    )
    if present:
        ops.append(
            Register(Node=local.node, Address=local.address, Checks=present, SkipNodeUpdate=True)
        )
    return ops


class AntiEntropy:
    def __init__(self, local: LocalState, backend: CatalogBackend, interval: float = 60.0) -> None:
        self.local = local
        self.backend = backend
        self.interval = interval
        self._wake = asyncio.Event()
        self._synced_gen = -1
        # the last generation whose sync the servers refused (ACLs): waiting longer for it is
        # pointless until something changes, so its waiters are answered at once
        self._refused_gen = -1
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.last_error: str = ""
        self._need_full = True

    def trigger(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="anti-entropy")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_synced(self, timeout: float = 10.0) -> bool:
        """Wait until everything changed so far is committed; False on timeout."""
        target = self.local.generation
        self.trigger()
        try:
            async with self._cond:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: max(self._synced_gen, self._refused_gen) >= target),
                    timeout,
                )
            return self._synced_gen >= target
        except TimeoutError:
            return False

    async def _run(self) -> None:
        backoff = 0.2
        failing_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval * random.uniform(0.5, 1.0))
            except TimeoutError:
                self._need_full = True  # the periodic, staggered full sync
            self._wake.clear()
            try:
                await self.sync_once()
                backoff = 0.2
                failing_since = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep retrying: the servers may be down or electing
                self.last_error = str(e)
                if isinstance(e, CommandForbiddenError):
                    async with self._cond:
                        self._refused_gen = self.local.generation
                        self._cond.notify_all()
                failing_since = failing_since or loop.time()
                # an election at start-up is normal; only a lasting failure is worth a warning
                level = logging.WARNING if loop.time() - failing_since > 5 else logging.DEBUG
                log.log(level, "anti-entropy sync failed: %s", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    async def sync_once(self) -> None:
        gen = self.local.generation
        services, checks = self.local.take_dirty()
        try:
            if self._need_full:
                res = await self.backend.read(q.NodeInfo(Node=self.local.node))
                ops = diff_node(self.local, res.value)
            else:
                ops = dirty_ops(self.local, services, checks)
            if ops:
                await self.backend.write(ops[0] if len(ops) == 1 else Batch(Ops=list(ops)))
        except BaseException:
            self.local.restore_dirty(services, checks)
            self._need_full = True
            raise
        self._need_full = False
        async with self._cond:
            self._synced_gen = max(self._synced_gen, gen)
            self._cond.notify_all()
