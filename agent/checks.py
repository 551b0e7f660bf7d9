"""The agent's health-check runner: one asyncio task per check, reporting status changes.

Everything runs on the agent's event loop so a check result and the local state it updates
never race; a probe that hangs is bounded by its Timeout and lives in its own task, so it can
only ever delay itself. The flap-damping counters are a pure function (`step`) so their
Consul semantics can be tested without a clock or a server.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from meshd.agent import probes
from meshd.agent.definitions import CheckDefinition, DefinitionError
from meshd.agent.probes import Result, http_status, output_max
from meshd.structs import (
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_STATES,
    HEALTH_WARNING,
    HealthCheck,
)

__all__ = [
    "AliasSource",
    "CheckRunner",
    "CheckState",
    "ScriptChecksDisabledError",
    "alias_result",
    "http_status",
    "next_status",
    "step",
]

log = logging.getLogger("meshd.checks")

AliasChecks = list[HealthCheck] | None  # None: no such service (so the alias is critical)
AliasSource = Callable[[str | None, str], AliasChecks | Awaitable[AliasChecks]]
OnUpdate = Callable[[str, str, str], None]

KINDS = ("http", "tcp", "udp", "grpc", "ttl", "script", "alias")
DEFAULT_INTERVAL = 10.0
ALIAS_INTERVAL = 1.0  # we poll local state instead of Consul's blocking query; keep it snappy


class ScriptChecksDisabledError(DefinitionError):
    """A subclass of DefinitionError so the HTTP layer answers 400, as Consul does."""

    def __init__(self) -> None:
        super().__init__(
            "Scripts are disabled on this agent; to enable, configure "
            "'enable_script_checks' to true"
        )


# ---- flap damping -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckState:
    """The reported status plus the consecutive success/failure counts behind it.

    Immutable so `step` stays pure: the runner swaps in the new state, tests replay sequences.
    """

    status: str = HEALTH_CRITICAL
    successes: int = 0
    failures: int = 0

    @classmethod
    def initial(cls, d: CheckDefinition) -> CheckState:
        """Counters start at their thresholds, as Consul's StatusHandler does, so the first
        result after (re)registration is reported at once; the thresholds only damp flapping
        from then on. A fresh CheckState(status) instead applies them from the start."""
        return cls(d.Status, d.SuccessBeforePassing, d.FailuresBeforeCritical)


def step(state: CheckState, result: str, d: CheckDefinition) -> tuple[CheckState, bool]:
    """Fold one probe result in; the bool says whether to report it (with its output).

    Warning counts as a success, as in Consul: the service answered. A failure below the
    critical threshold but at the warning one reports warning. FailuresBeforeWarning unset
    means "same as FailuresBeforeCritical". A held-back result changes neither status nor
    output, so the catalog keeps showing the output that explains the current status.
    """
    if result in (HEALTH_PASSING, HEALTH_WARNING):
        ok = state.successes + 1
        if ok >= d.SuccessBeforePassing:
            return CheckState(result, ok, 0), True
        return CheckState(state.status, ok, 0), False
    bad = state.failures + 1
    before_critical = d.FailuresBeforeCritical
    before_warning = d.FailuresBeforeWarning or before_critical
    if bad >= before_critical:
        return CheckState(HEALTH_CRITICAL, 0, bad), True
    if bad >= before_warning:
        return CheckState(HEALTH_WARNING, 0, bad), True
    return CheckState(state.status, 0, bad), False


def next_status(state: CheckState, result: str, d: CheckDefinition) -> str:
    return step(state, result, d)[0].status


# ---- alias ------------------------------------------------------------------------------------


def alias_result(checks: list[HealthCheck] | None, node: str, service_id: str) -> Result:
    """Worst of the aliased service's checks; node-level checks (no ServiceID) count too,
    since a dead node makes its services dead (Consul's processChecks)."""
    if checks is None:
        return HEALTH_CRITICAL, "No checks found."
    health, msg = HEALTH_PASSING, "No checks found."
    for c in checks:
        if node and c.Node != node:
            continue
        if c.ServiceID and c.ServiceID != service_id:
            continue
        if c.Status in (HEALTH_CRITICAL, HEALTH_WARNING):
            health, msg = c.Status, f'Aliased check "{c.Name}" failing: {c.Output}'
            if c.Status == HEALTH_CRITICAL:
                break
        elif health == HEALTH_PASSING:
            msg = "All checks passing."
    return health, msg


# ---- the runner -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    d: CheckDefinition
    state: CheckState
    reported: tuple[str, str]
    task: asyncio.Task[None] | None = None
    ttl_timer: asyncio.TimerHandle | None = None
    ttl_output: str = ""
    stopped: bool = False  # besides cancel(), so a cancel swallowed by a library can't leak


class CheckRunner:
    """Owns every running check of one agent.

    `on_update(check_id, status, output)` is called on the loop, only on a real change; the
    initial status (d.Status) is the caller's to register and is never echoed back.
    """

    def __init__(
        self,
        on_update: OnUpdate,
        *,
        enable_script_checks: bool = False,
        alias_source: AliasSource | None = None,
    ) -> None:
        self._on_update = on_update
        self._scripts = enable_script_checks
        self._alias_source = alias_source
        self._checks: dict[str, _Entry] = {}
        self._dying: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    # ---- public API -----------------------------------------------------------------------

    def add(self, d: CheckDefinition) -> None:
        """(Re)start a check; a re-add restarts counters and timers from the new definition."""
        if self._closed:
            raise RuntimeError("check runner is closed")
        if d.Type not in KINDS:
            raise DefinitionError(f"check {d.CheckID!r}: unknown check type {d.Type!r}")
        if d.Type == "script" and not self._scripts:
            raise ScriptChecksDisabledError()
        self.remove(d.CheckID)
        e = _Entry(d=d, state=CheckState.initial(d), reported=(d.Status, ""))
        self._checks[d.CheckID] = e
        if d.Type == "ttl":
            if d.TTL > 0:
                e.ttl_timer = asyncio.get_running_loop().call_later(d.TTL, self._ttl_expired, e)
            return
        e.task = asyncio.get_running_loop().create_task(self._run(e), name=f"check:{d.CheckID}")

    def remove(self, check_id: str) -> None:
        """Unknown IDs are fine: deregistering must be idempotent."""
        e = self._checks.pop(check_id, None)
        if e is None:
            return
        e.stopped = True
        if e.ttl_timer is not None:
            e.ttl_timer.cancel()
        if e.task is not None and not e.task.done():
            e.task.cancel()
            self._dying.add(e.task)
            e.task.add_done_callback(self._dying.discard)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status and re-arm its timer; output is capped like Consul's."""
        e = self._checks.get(check_id)
        if e is None or e.d.Type != "ttl":
            raise KeyError(check_id)
        if status not in HEALTH_STATES:
            raise ValueError(f"invalid check status {status!r}")
        limit = output_max(e.d)
        raw = output.encode()
        if len(raw) > limit:
            output = (
                raw[:limit].decode("utf-8", "ignore")
                + f" ... (captured {limit} of {len(raw)} bytes)"
            )
        e.ttl_output = output
        self._emit(e, status, output)
        if e.ttl_timer is not None:
            e.ttl_timer.cancel()
        if e.d.TTL > 0:
            e.ttl_timer = asyncio.get_running_loop().call_later(e.d.TTL, self._ttl_expired, e)

    def get(self, check_id: str) -> tuple[str, str] | None:
        """The last (status, output) this runner knows for a check, for debugging and tests."""
        e = self._checks.get(check_id)
        return e.reported if e else None

    def __contains__(self, check_id: object) -> bool:
        return check_id in self._checks

    async def close(self) -> None:
        """Stop everything and wait for it, so no subprocess or socket outlives the agent."""
        self._closed = True
        for cid in list(self._checks):
            self.remove(cid)
        if self._dying:
            await asyncio.gather(*list(self._dying), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- internals ------------------------------------------------------------------------

    def _emit(self, e: _Entry, status: str, output: str) -> None:
        if self._checks.get(e.d.CheckID) is not e or (status, output) == e.reported:
            return
        e.reported = (status, output)
        try:
            self._on_update(e.d.CheckID, status, output)
        except Exception:
            log.exception("check %s: on_update callback failed", e.d.CheckID)

    def _ttl_expired(self, e: _Entry) -> None:
        e.ttl_timer = None
        log.warning("check %s missed its TTL, is now critical", e.d.CheckID)
        msg = "TTL expired"
        if e.ttl_output:
            msg += f" (last output before timeout follows): {e.ttl_output}"
        self._emit(e, HEALTH_CRITICAL, msg)

    async def _run(self, e: _Entry) -> None:
        d = e.d
        interval = (
            d.Interval
            if d.Interval > 0
            else (ALIAS_INTERVAL if d.Type == "alias" else DEFAULT_INTERVAL)
        )
        # Consul staggers the first run so an agent restart doesn't fire every check at once.
        await asyncio.sleep(random.uniform(0, interval))
        while not e.stopped:
            status, output = await self._probe(d)
            if e.stopped:
                return
            if d.Type == "alias":
                self._emit(e, status, output)
            else:
                e.state, report = step(e.state, status, d)
                if report:
                    self._emit(e, e.state.status, output)
            await asyncio.sleep(interval)

    async def _probe(self, d: CheckDefinition) -> Result:
        try:
            if d.Type == "http":
                return await probes.probe_http(self._http(), d)
            if d.Type == "tcp":
                return await probes.probe_tcp(d)
            if d.Type == "udp":
                return await probes.probe_udp(d)
            if d.Type == "grpc":
                return await probes.probe_grpc(d)
            if d.Type == "script":
                return await probes.probe_script(d)
            return await self._alias(d)
        except Exception as exc:  # a buggy probe must not kill the check's task
            log.exception("check %s: probe failed", d.CheckID)
            return HEALTH_CRITICAL, f"check error: {exc!r}"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = probes.new_http_session()
        return self._session

    async def _alias(self, d: CheckDefinition) -> Result:
        if self._alias_source is None:
            return alias_result(None, d.AliasNode, d.AliasService)
        try:
            got = self._alias_source(d.AliasNode or None, d.AliasService)
            if inspect.isawaitable(got):
                got = await got
        except Exception as exc:
            log.warning("check %s: alias source failed", d.CheckID, exc_info=True)
            return HEALTH_CRITICAL, f"Failure checking aliased node or service: {exc}"
        return alias_result(got, d.AliasNode, d.AliasService)
