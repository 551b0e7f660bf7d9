"""The agent's `watches` config: each watch a plan (meshd/watchplan.py) against this agent.

As in Consul, a configured watch is a client of the agent's own HTTP API, with the same handlers
as `meshd watch`. Each plan blocks on HTTP and on its handler's process, so each runs on a daemon
thread of its own, never on the event loop; stopping sets the plan's flag, and a plan still
inside a blocking read when it is stopped ends without calling its handler again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from meshd.api import Client
from meshd.watchplan import Plan, WatchError, WatchSpec, parse_watch

log = logging.getLogger("meshd.watches")
WAIT = "60s"  # a stopped plan's thread lingers at most this long in its read
CLIENT_TIMEOUT = 90.0


def parse_watches(raw: Sequence[Mapping[str, Any]]) -> list[WatchSpec]:
    """Every watch of the config, or WatchError naming the first bad one."""
    specs = []
    for i, w in enumerate(raw):
        try:
            specs.append(parse_watch(w))
        except WatchError as e:
            raise WatchError(f"watches[{i}]: {e}") from None
    return specs


def watch_errors(raw: Sequence[Mapping[str, Any]]) -> list[str]:
    try:
        parse_watches(raw)
    except WatchError as e:
        return [str(e)]
    return []


def local_address(host: str, port: int) -> str:
    """The agent's own HTTP API as a client reaches it (a wildcard bind means loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class WatchRunner:
    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.token = token
        self.plans: list[Plan] = []

    def start(self, specs: list[WatchSpec]) -> None:
        for spec in specs:
            client = Client(self.address, token=spec.token or self.token, timeout=CLIENT_TIMEOUT)
            plan = Plan(spec, client, wait=WAIT, on_error=log.warning)
            thread = threading.Thread(
                target=self._run, args=(plan,), name=f"watch-{spec.type}", daemon=True
            )
            self.plans.append(plan)
            thread.start()
        if specs:
            log.info("running %d watches", len(specs))

    def replace(self, specs: list[WatchSpec]) -> None:
        """A reload: the old plans stop and the new ones start from a first answer, as Consul's
        agent does (each new plan runs its handler once with the current data)."""
        self.stop()
        self.start(specs)

    def stop(self) -> None:
        for plan in self.plans:
            plan.stop()
        self.plans = []

    @staticmethod
    def _run(plan: Plan) -> None:
        try:
            plan.run()
        except WatchError as e:  # e.g. a 403 or 400 from the API: this plan cannot go on
            log.error("%s; this watch stopped", e)
