"""The measurements a server takes of its own writes, for Consul's metric names.

Kept as plain Timers on the Server, filled where the write passes (`Server.write`), so the
agent's metrics endpoint reads them without the server knowing about HTTP or Prometheus.
"""

from __future__ import annotations

import time

from meshd.metrics import Timer
from meshd.structs import Command, Deregister, Register


class ServerMetrics:
    """commit: every write this server proposed, from proposal to commit (Consul's
    consul.raft.commitTime); register/deregister: the whole catalog write, admission included
    (consul.catalog.register / deregister); became_leader: consul.raft.state.leader."""

    def __init__(self) -> None:
        self.commit = Timer()
        self.register = Timer()
        self.deregister = Timer()
        self.became_leader = 0

    def written(self, cmd: Command, started: float, proposed: float) -> None:
        """A committed write: `started` before admission, `proposed` when it went to Raft
        (time.perf_counter() readings)."""
        now = time.perf_counter()
        self.commit.observe((now - proposed) * 1000.0)
        if isinstance(cmd, Register):
            self.register.observe((now - started) * 1000.0)
        elif isinstance(cmd, Deregister):
            self.deregister.observe((now - started) * 1000.0)
