"""Blocking watchers for benchmarks/scale.py, in processes of their own.

Each watcher is a blocking RPC read of one service (stale, with MinIndex, as an agent's watch
cache reads), re-issued as soon as it returns. In a real fleet every watcher is an agent on its
own host; run all 1,000 in the benchmark's one asyncio process and that process, not the
servers, is what a burst waits for (measured: one core busy decoding answers while the servers
had CPU to spare). So they run in `procs` processes, which report each watcher's progress
(watcher, highest port seen, when) on a queue; CLOCK_MONOTONIC is the same in every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
from typing import Any

import aiohttp
import msgspec

from meshd import queries as q
from meshd.keyring import hmac_key
from meshd.rpc import ReadReply, ReadRequest
from meshd.rpc_client import RPCClient, RPCError


class WideClient(RPCClient):
    """The real RPC client with no cap on parallel connections (a watcher each)."""

    def _sess(self, blocking: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(blocking)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ssl=False)
            session = self._sessions[blocking] = aiohttp.ClientSession(connector=connector)
        return session


async def _watch(rpc: RPCClient, server: str, k: int, out: Any) -> None:
    query = q.ServiceNodes(Service=f"svc-{k}")
    index, seen = 0, 0
    while True:
        req = ReadRequest(
            Query=query, MinIndex=index, Wait=60.0 if index else 0.0, Consistency="stale"
        )
        try:  # a refused or timed-out read is retried, as the agents' cache does
            reply = await rpc.call(
                "read", req, ReadReply, addr=server, timeout=70, blocking=index > 0
            )
        except RPCError:
            await asyncio.sleep(0.1)
            continue
        now = time.monotonic()
        index = reply.Index
        rows = msgspec.msgpack.decode(reply.Value)
        top = max((r["Service"]["Port"] for r in rows), default=0)
        if top > seen:
            seen = top
            out.put((k, top, now))


async def _watch_all(servers: list[str], key: str, watchers: list[int], out: Any) -> None:
    rpc = WideClient(servers, hmac_key(key))
    await asyncio.gather(*(_watch(rpc, servers[k % len(servers)], k, out) for k in watchers))


def _child(servers: list[str], key: str, watchers: list[int], out: Any) -> None:
    asyncio.run(_watch_all(servers, key, watchers, out))


class WatcherPool:
    """`count` watchers (services svc-0 ...) spread over `procs` processes."""

    def __init__(self, servers: list[str], key: str, count: int, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._out: Any = ctx.Queue()
        self.marks: dict[int, tuple[int, float]] = {}  # watcher -> (highest port seen, when)
        self.woke = {k: asyncio.Event() for k in range(count)}
        self._procs = [
            ctx.Process(
                target=_child,
                args=(servers, key, list(range(p, count, procs)), self._out),
                daemon=True,
            )
            for p in range(max(1, procs))
        ]
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for p in self._procs:
            p.start()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                k, top, when = await asyncio.to_thread(self._out.get, True, 0.5)
            except queue.Empty:
                continue
            if top > self.marks.get(k, (0, 0.0))[0]:
                self.marks[k] = (top, when)
                self.woke[k].set()

    def seen(self, k: int) -> int:
        return self.marks.get(k, (0, 0.0))[0]

    async def close(self) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            await asyncio.to_thread(p.join, 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
