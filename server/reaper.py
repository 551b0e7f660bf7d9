"""`deregister_critical_service_after`, enforced by the leader for every node.

The agent enforces it for its own services, but an agent that died cannot: its services would
stay in the catalog forever (critical through `serfHealth`). The leader therefore watches the
instances with such a check on failed nodes (and only there, so it never races a live agent)
and removes each once it has been critical for that long. Timers live
in the leader's memory; a new leader starts them afresh, which only ever delays a removal.
"""

from __future__ import annotations

from meshd.config import ConfigError, parse_duration
from meshd.server.store import Store
from meshd.structs import HEALTH_CRITICAL, SERF_CHECK_ID, Deregister


class CriticalReaper:
    def __init__(self) -> None:
        self.since: dict[tuple[str, str], float] = {}

    def tick(self, store: Store, now: float) -> list[Deregister]:
        ops: list[Deregister] = []
        seen: set[tuple[str, str]] = set()
        with store.lock:
            for node, checks in store.checks.items():
                serf = checks.get(SERF_CHECK_ID)
                if serf is None or serf.Status != HEALTH_CRITICAL:
                    continue  # a live agent enforces its own services' limits
                limits: dict[str, float] = {}
                for c in checks.values():
                    raw = (
                        c.Definition.get("DeregisterCriticalServiceAfter") if c.ServiceID else None
                    )
                    if raw:
                        try:
                            limit = parse_duration(raw)
                        except (ConfigError, ValueError):
                            continue
                        if limit > 0:
                            limits[c.ServiceID] = min(limit, limits.get(c.ServiceID, limit))
                for sid, limit in limits.items():
                    key = (node, sid)
                    seen.add(key)
                    critical = any(
                        c.Status == HEALTH_CRITICAL
                        for c in checks.values()
                        if c.ServiceID in ("", sid)
                    )
                    if not critical:
                        self.since.pop(key, None)
                        continue
                    start = self.since.setdefault(key, now)
                    if now - start >= limit:
                        ops.append(Deregister(Node=node, ServiceID=sid))
                        del self.since[key]
        for key in list(self.since):
            if key not in seen:
                del self.since[key]
        return ops

    def reset(self) -> None:
        self.since.clear()
