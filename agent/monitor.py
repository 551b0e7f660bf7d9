"""`/v1/agent/monitor`: this agent's log lines, streamed as they are written.

A handler on the root logger per request, at the requested level. When that level is below the
agent's own, the root logger is lowered for the duration and the agent's other handlers are held
at the configured level, so the console and log file do not change; the last monitor to leave
restores it. Records can come from any thread (Raft runs on its own): they are handed to the
event loop with call_soon_threadsafe and a bounded queue drops lines for a reader too slow to
keep up, rather than growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from meshd.agent.logs import LEVELS, _Formatter

QUEUE_LINES = 512


class MonitorLevelError(ValueError):
    """An unknown `loglevel` (HTTP 400)."""


def parse_level(name: str) -> int:
    level = LEVELS.get(name.upper() if name else "INFO")
    if level is None:
        raise MonitorLevelError(f"Unknown log level: {name}")
    return level


class _QueueHandler(logging.Handler):
    def __init__(self, level: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]):
        super().__init__(level)
        self.loop, self.queue = loop, queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.loop.call_soon_threadsafe(self._put, line)
        except RuntimeError:  # the loop is closed: the agent is stopping
            pass

    def _put(self, line: str) -> None:
        if not self.queue.full():
            self.queue.put_nowait(line)


class _Levels:
    """Root-level bookkeeping shared by the monitors of one process."""

    def __init__(self) -> None:
        self.monitors: list[_QueueHandler] = []
        self.configured: int | None = None
        self.pinned: list[logging.Handler] = []

    def attach(self, handler: _QueueHandler) -> None:
        root = logging.getLogger()
        if not self.monitors:
            self.configured = root.level
            self.pinned = [h for h in root.handlers if h.level == logging.NOTSET]
            for h in self.pinned:
                h.setLevel(root.level)
        self.monitors.append(handler)
        root.addHandler(handler)
        root.setLevel(min(root.level, handler.level))

    def detach(self, handler: _QueueHandler) -> None:
        root = logging.getLogger()
        root.removeHandler(handler)
        self.monitors.remove(handler)
        configured = self.configured if self.configured is not None else logging.INFO
        if self.monitors:
            root.setLevel(min([configured, *(m.level for m in self.monitors)]))
            return
        root.setLevel(configured)
        for h in self.pinned:
            h.setLevel(logging.NOTSET)
        self.pinned, self.configured = [], None


_levels = _Levels()


async def stream(
    level: int, json_lines: bool, secrets: Callable[[], list[str]]
) -> AsyncIterator[str]:
    """Yield formatted log lines until the consumer stops iterating."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_LINES)
    handler = _QueueHandler(level, loop, queue)
    handler.setFormatter(_Formatter(json_lines=json_lines, journald=False, secrets=secrets))
    _levels.attach(handler)
    try:
        while True:
            yield await queue.get()
    finally:
        _levels.detach(handler)
