"""systemd's readiness protocol (sd_notify): datagrams of `KEY=value` lines to $NOTIFY_SOCKET.

The protocol is a few lines, so no library: a name starting with '@' is in the abstract
namespace (a leading NUL byte on the wire). The variables are removed from the environment once
read, as sd_notify(unset_environment=1) does, so a script check or an Envoy started by the agent
cannot speak for it. Sending never blocks the event loop: the socket is non-blocking. When the
receiver's queue is full (Linux queues only 10 datagrams per socket by default), WATCHDOG and
STATUS-only messages are dropped, harmlessly, but state changes (READY, RELOADING, STOPPING)
wait in order and are retried from the loop: a lost READY would fail the unit's start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import MutableMapping

log = logging.getLogger("meshd.sdnotify")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_DROPPABLE = ("STATUS=", "WATCHDOG=")
RETRY = 0.05


class Notifier:
    """One agent's channel to its service manager; every method is a no-op without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._pending: deque[bytes] = deque()
        self._retrying = False
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        address, usec, pid = (env.pop(k, None) for k in _ENV)
        watchdog: int | None = None
        if usec and (not pid or pid == str(os.getpid())):
            try:
                watchdog = int(usec) if int(usec) > 0 else None
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec)
        if address and not address.startswith(("/", "@")):
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path or an abstract name", address)
            address = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        data = "\n".join(lines).encode()
        if not self._pending and self._try(data):
            return
        if all(line.startswith(_DROPPABLE) for line in lines):
            return
        self._pending.append(data)
        self._schedule()

    def _target(self) -> str:
        address = self.address or ""
        return "\0" + address[1:] if address.startswith("@") else address

    def _try(self, data: bytes) -> bool:
        """True when sent or hopeless (the manager is gone); False when it should be retried."""
        assert self._sock is not None
        try:
            self._sock.sendto(data, self._target())
        except BlockingIOError:
            return False
        except OSError as e:
            log.debug("sd_notify %r failed: %s", data[:40], e)
        return True

    def _schedule(self) -> None:
        if self._retrying:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: close() makes the last attempt
        self._retrying = True
        loop.call_later(RETRY, self._flush)

    def _flush(self) -> None:
        self._retrying = False
        while self._pending and self._sock is not None:
            if not self._try(self._pending[0]):
                self._schedule()
                return
            self._pending.popleft()

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) tell this reload from an older one.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=Shutting down")

    async def watchdog(self) -> None:
        """Ping at half the interval, from the event loop: a stuck loop misses its pings and
        systemd restarts the agent, which is the point of the watchdog."""
        if not self.watchdog_usec or self._sock is None:
            return
        interval = self.watchdog_usec / 2e6
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def close(self, timeout: float = 1.0) -> None:
        """At exit, block briefly for what is still queued (STOPPING, usually)."""
        if self._sock is None:
            return
        self._sock.settimeout(timeout)
        while self._pending:
            try:
                self._sock.sendto(self._pending.popleft(), self._target())
            except OSError:
                break
        self._sock.close()
        self._sock = None
