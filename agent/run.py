"""`meshd agent`: run an agent until SIGINT/SIGTERM, reloading on SIGHUP, speaking sd_notify.

Signals follow Consul: SIGTERM leaves the cluster when `leave_on_terminate` (clients by default),
SIGINT leaves unless `skip_leave_on_interrupt` (servers skip by default: a ^C must not shrink
the Raft quorum). Under systemd (`Type=notify`), READY=1 is sent only once HTTP, DNS and gRPC
listen and the agent has joined a cluster with a leader, so `systemctl start` returning means
the agent answers, and a rolling restart can wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from meshd.agent.agent import Agent, StartError
from meshd.agent.logs import LogSetup, setup_logging
from meshd.agent.reload import ConfigSource, Reloader, ReloadError
from meshd.agent.sdnotify import Notifier
from meshd.config import Config
from meshd.fsutil import atomic_write
from meshd.metrics import watch_gc

log = logging.getLogger("meshd.agent")

JOIN_POLL = 0.2


async def _wait_joined(agent: Agent, notifier: Notifier) -> None:
    """Until this agent's servers (or, on a server, its Raft peers) have elected a leader."""
    waiting = ""
    while True:
        try:
            leader, _ = await agent.backend.status()
        except Exception as e:
            leader, reason = "", f"no server reachable ({e})"
        else:
            reason = "waiting for a cluster leader"
        if leader:
            return
        if reason != waiting:
            waiting = reason
            notifier.status(reason[0].upper() + reason[1:])
            log.info("not ready yet: %s", reason)
        await asyncio.sleep(JOIN_POLL)


def _should_leave(cfg: Config, signum: int) -> bool:
    if signum == signal.SIGINT:
        return not cfg.skip_leave_on_interrupt
    return bool(cfg.leave_on_terminate)


class _Run:
    """The agent process's life: start, notify, serve signals, stop."""

    def __init__(self, cfg: Config, source: ConfigSource | None, logs: LogSetup | None) -> None:
        self.cfg = cfg
        self.source = source
        self.logs = logs
        self.notifier = Notifier.from_env()
        self.signum: int = signal.SIGTERM
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop: asyncio.Event
        self.agent: Agent

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_stop_signal(self, signum: int) -> None:
        if not self.stop.is_set():
            log.info("caught signal %s", signal.Signals(signum).name)
            self.signum = signum
            self.stop.set()

    def _on_hup(self) -> None:
        if self.agent.reloader is None:
            log.warning("SIGHUP before the agent is ready: ignored")
            return
        self._spawn(self._reload(self.agent.reloader), "reload")

    @staticmethod
    async def _reload(reloader: Reloader) -> None:
        try:
            await reloader.reload()
        except ReloadError:
            pass  # logged by the reloader; the agent runs on with the old config
        except Exception:  # a bug must not pass silently in a task nobody awaits
            log.exception("reload failed")

    async def main(self) -> int:
        self.stop = asyncio.Event()
        self.agent = Agent(self.cfg)  # inside the loop: it creates loop-bound primitives
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)  # the default action would kill us
        self._spawn(self.notifier.watchdog(), "sd-watchdog")
        self.notifier.status("Starting")
        agent, cfg = self.agent, self.cfg
        try:
            await agent.start()
        except (OSError, StartError) as e:
            print(f"Error: cannot start agent: {e}", file=sys.stderr)
            await agent.stop()
            return 1
        # Start-up objects live for the whole run: move them out of the collector's sight, and
        # collect young objects less often. Both cut the GC pauses that show up as DNS/HTTP tails.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        watch_gc(agent.stats)  # for the process's life: meshd.runtime.gc_pause and _full_pause
        print(
            f"==> meshd agent running (node {cfg.node_name}, datacenter {cfg.datacenter})",
            flush=True,
        )
        print(
            f"    HTTP: {cfg.client_addr}:{cfg.ports.http}  DNS: {cfg.client_addr}:{cfg.ports.dns}"
            f"  gRPC: {cfg.client_addr}:{cfg.ports.grpc}",
            flush=True,
        )
        joined = asyncio.ensure_future(_wait_joined(agent, self.notifier))
        stopping = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({joined, stopping}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()
        if not self.stop.is_set():
            if self.source is not None:
                agent.reloader = Reloader(agent, self.source, self.logs, self.notifier)
            role = "server" if cfg.server else "client"
            self.notifier.ready(f"Running ({role}, node {cfg.node_name})")
            log.info("agent ready: joined a cluster with a leader")
        await stopping
        return await self._shutdown()

    async def _shutdown(self) -> int:
        agent = self.agent
        self.notifier.stopping()
        if _should_leave(agent.config, self.signum):
            print("==> leaving the cluster", flush=True)
            try:
                await asyncio.wait_for(agent.leave(), 10)
            except Exception as e:
                print(f"    leave failed: {e}", flush=True)
        print("==> shutting down", flush=True)
        for t in list(self.tasks):
            t.cancel()
        await agent.stop()
        self.notifier.close()
        return 0


def _write_pid_file(path: str) -> None:
    try:
        atomic_write(path, f"{os.getpid()}\n".encode())
    except OSError as e:
        raise StartError(f"cannot write pid_file {path}: {e.strerror}") from None


def run_agent(cfg: Config, source: ConfigSource | None = None) -> int:
    """Run until stopped; `source` lets SIGHUP and /v1/agent/reload re-read the same files."""
    try:
        logs = setup_logging(cfg)
    except OSError as e:
        print(f"Error: cannot open log_file {cfg.log_file}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        if cfg.pid_file:
            _write_pid_file(cfg.pid_file)
    except StartError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    try:
        return _run_loop(_Run(cfg, source, logs))
    finally:
        if cfg.pid_file:
            with contextlib.suppress(OSError):
                os.remove(cfg.pid_file)
        logs.close()


def _run_loop(run: _Run) -> int:
    if os.environ.get("MESHD_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:  # optional: plain asyncio works, only slower
            pass
        else:
            return uvloop.run(run.main())
    return asyncio.run(run.main())
