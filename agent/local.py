"""The services and checks this agent owns.

The agent is authoritative for its node: this is the truth anti-entropy pushes to the catalog,
and what `/v1/agent/*` reads. Every mutation bumps `generation`, which is how anti-entropy knows a
sync is due and how a register call can wait until its own change has been committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from meshd.agent.definitions import CheckDefinition
from meshd.structs import (
    HEALTH_CRITICAL,
    NODE_MAINT_CHECK_ID,
    HealthCheck,
    NodeService,
    service_maint_check_id,
)

replace = msgspec.structs.replace


class UnknownServiceError(KeyError):
    def __str__(self) -> str:
        return f'Unknown service ID "{self.args[0]}"'


class UnknownCheckError(KeyError):
    def __str__(self) -> str:
        return f'Unknown check ID "{self.args[0]}"'


@dataclass
class LocalCheck:
    check: HealthCheck
    definition: CheckDefinition | None = None  # None for maintenance checks
    critical_since: float | None = None


@dataclass
class LocalState:
    node: str
    address: str
    datacenter: str
    node_id: str = ""
    node_meta: dict[str, str] = field(default_factory=dict)
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    services: dict[str, NodeService] = field(default_factory=dict)
    checks: dict[str, LocalCheck] = field(default_factory=dict)
    generation: int = 0
    on_change: Callable[[], None] | None = None
    # what changed since anti-entropy last took them: it pushes just these, not the whole node
    dirty_services: set[str] = field(default_factory=set)
    dirty_checks: set[str] = field(default_factory=set)

    def _changed(self, services: Iterable[str] = (), checks: Iterable[str] = ()) -> None:
        self.dirty_services.update(services)
        self.dirty_checks.update(checks)
        self.generation += 1
        if self.on_change is not None:
            self.on_change()

    def take_dirty(self) -> tuple[set[str], set[str]]:
        out = (self.dirty_services, self.dirty_checks)
        self.dirty_services, self.dirty_checks = set(), set()
        return out

    def restore_dirty(self, services: set[str], checks: set[str]) -> None:
        """A push failed: keep its changes for the next one."""
        self.dirty_services |= services
        self.dirty_checks |= checks

    # ---- services -------------------------------------------------------------------------

    def add_service(
        self, svc: NodeService, checks: list[CheckDefinition], replace_checks: bool = False
    ) -> list[str]:
        """Returns the IDs of checks dropped (so the runner can stop them)."""
        svc = replace(svc, Datacenter="")
        self.services[svc.ID] = svc
        dropped = []
        if replace_checks:
            keep = {c.CheckID for c in checks}
            for cid, lc in list(self.checks.items()):
                if lc.check.ServiceID == svc.ID and lc.definition and cid not in keep:
                    del self.checks[cid]
                    dropped.append(cid)
        for d in checks:
            self.add_check(d, notify=False)
        touched = []
        for cid, lc in self.checks.items():  # checks carry the service's name and tags
            if lc.check.ServiceID == svc.ID:
                lc.check = replace(lc.check, ServiceName=svc.Service, ServiceTags=list(svc.Tags))
                touched.append(cid)
        self._changed([svc.ID], [*touched, *dropped])
        return dropped

    def remove_service(self, sid: str) -> list[str]:
        if sid not in self.services:
            raise UnknownServiceError(sid)
        del self.services[sid]
        dropped = [cid for cid, lc in self.checks.items() if lc.check.ServiceID == sid]
        for cid in dropped:
            del self.checks[cid]
        self._changed([sid], dropped)
        return dropped

    # ---- checks ---------------------------------------------------------------------------

    def add_check(self, d: CheckDefinition, notify: bool = True) -> None:
        svc = self.services.get(d.ServiceID) if d.ServiceID else None
        if d.ServiceID and svc is None:
            raise UnknownServiceError(d.ServiceID)
        old = self.checks.get(d.CheckID)
        check = d.to_health_check(self.node, svc)
        if (
            old is not None
            and old.definition is not None
            and d.raw.get("Status") is None
            and d.raw.get("status") is None
        ):
            # re-registering keeps the current status, as Consul does
            check = replace(check, Status=old.check.Status, Output=old.check.Output)
        self.checks[d.CheckID] = LocalCheck(check=check, definition=d)
        self.dirty_checks.add(d.CheckID)
        if notify:
            self._changed()

    def remove_check(self, cid: str) -> None:
        if cid not in self.checks:
            raise UnknownCheckError(cid)
        del self.checks[cid]
        self._changed(checks=[cid])

    def set_status(self, cid: str, status: str, output: str) -> bool:
        lc = self.checks.get(cid)
        if lc is None:
            raise UnknownCheckError(cid)
        if lc.check.Status == status and lc.check.Output == output:
            return False
        lc.check = replace(lc.check, Status=status, Output=output)
        self._changed(checks=[cid])
        return True

    # ---- maintenance ----------------------------------------------------------------------

    def set_service_maintenance(self, sid: str, enable: bool, reason: str) -> None:
        if sid not in self.services:
            raise UnknownServiceError(sid)
        cid = service_maint_check_id(sid)
        if enable:
            svc = self.services[sid]
            self.checks[cid] = LocalCheck(
                HealthCheck(
                    Node=self.node,
                    CheckID=cid,
                    Name="Service Maintenance Mode",
                    Status=HEALTH_CRITICAL,
                    ServiceID=sid,
                    ServiceName=svc.Service,
                    ServiceTags=list(svc.Tags),
                    Type="maintenance",
                    Notes=reason
                    or "Maintenance mode is enabled for this service, but no reason "
                    "was provided. This is a default message.",
                )
            )
        elif cid in self.checks:
            del self.checks[cid]
        self._changed(checks=[cid])

    def set_node_maintenance(self, enable: bool, reason: str) -> None:
        if enable:
            self.checks[NODE_MAINT_CHECK_ID] = LocalCheck(
                HealthCheck(
                    Node=self.node,
                    CheckID=NODE_MAINT_CHECK_ID,
                    Name="Node Maintenance Mode",
                    Status=HEALTH_CRITICAL,
                    Type="maintenance",
                    Notes=reason
                    or "Maintenance mode is enabled for this node, but no reason was "
                    "provided. This is a default message.",
                )
            )
        else:
            self.checks.pop(NODE_MAINT_CHECK_ID, None)
        self._changed(checks=[NODE_MAINT_CHECK_ID])

    def service_checks(self, sid: str) -> list[HealthCheck]:
        return [
            lc.check
            for lc in self.checks.values()
            if lc.check.ServiceID == sid or not lc.check.ServiceID
        ]
