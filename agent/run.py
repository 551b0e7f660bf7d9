"""`meshd agent`: run an agent until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys

from meshd.agent.agent import Agent, StartError
from meshd.config import Config


async def _main(cfg: Config) -> int:
    agent = Agent(cfg)
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
    print(
        f"==> meshd agent running (node {cfg.node_name}, datacenter {cfg.datacenter})", flush=True
    )
    print(
        f"    HTTP: {cfg.client_addr}:{cfg.ports.http}  DNS: {cfg.client_addr}:{cfg.ports.dns}"
        f"  gRPC: {cfg.client_addr}:{cfg.ports.grpc}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if cfg.leave_on_terminate:
        print("==> leaving the cluster", flush=True)
        try:
            await asyncio.wait_for(agent.leave(), 10)
        except Exception as e:
            print(f"    leave failed: {e}", flush=True)
    print("==> shutting down", flush=True)
    await agent.stop()
    return 0


def run_agent(cfg: Config) -> int:
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    if os.environ.get("MESHD_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:  # optional: plain asyncio works, only slower
            pass
        else:
            return uvloop.run(_main(cfg))
    return asyncio.run(_main(cfg))
