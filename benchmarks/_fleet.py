"""The simulated fleet of benchmarks/scale.py: N nodes in one asyncio loop, each beating through
a client agent's own liveness socket (`HeartbeatLink`), with the instances they run and the
RPC writes and reads a benchmark makes on their behalf."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import BenchError

from meshd.agent.liveness_client import HeartbeatLink
from meshd.rpc import Heartbeat, ReadReply, ReadRequest, WriteReply, WriteRequest
from meshd.rpc_client import RPCClient
from meshd.structs import HealthCheck, NodeService, Register


async def send_heartbeat(link: HeartbeatLink, hb: Heartbeat) -> None:
    """The one place a simulated node's beat leaves: the transport client agents use."""
    await link.beat(hb)


def address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


class Fleet:
    def __init__(
        self,
        rpc: RPCClient,
        servers: list[str],
        nodes: int,
        instances: int,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.rpc = rpc
        self.interval = interval  # seconds between one node's beats
        self.servers = servers
        self.n = nodes
        self.m = instances
        self.names = max(1, instances // 10)  # ~10 instances per service name
        self.dead: set[int] = set()
        self.last_beat: dict[int, float] = {}
        self.last_ack: dict[int, float] = {}
        self.late: set[int] = set()  # nodes this fleet left without a beat for a whole timeout
        self.timeout = timeout  # the servers' node_failure_timeout
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.links: dict[int, HeartbeatLink] = {}
        self.beating: set[int] = set()  # a link carries one beat at a time, as an agent's does
        self.skipped = 0

    def node(self, i: int) -> str:
        return f"sim-{i}"

    def service_of(self, j: int) -> str:
        return f"svc-{j % self.names}"

    def instances_of(self, i: int) -> range:
        return range(i, self.m, self.n)  # instance j lives on node j % n

    def register_op(self, j: int, port: int = 0) -> Register:
        i = j % self.n
        sid = f"inst-{j}"
        svc = NodeService(ID=sid, Service=self.service_of(j), Port=port or 20000 + j % 10000)
        check = HealthCheck(
            Node=self.node(i), CheckID=f"check-{j}", Name="alive", Status="passing", ServiceID=sid
        )
        return Register(
            Node=self.node(i), Address=address(i), Service=svc, Check=check, SkipNodeUpdate=True
        )

    async def beat_forever(self) -> None:
        """Every node once an interval, spread evenly over it, 512 in flight at most."""
        slots = asyncio.Semaphore(512)
        tick = 0.02
        per_tick = max(1, round(self.n * tick / self.interval))
        i = 0
        start = time.monotonic()
        k = 0
        while not self._stop:
            for _ in range(per_tick):
                node = i % self.n
                i += 1
                if node in self.beating:
                    self.skipped += 1  # its last beat is still out: an agent would wait too
                elif node not in self.dead:
                    await slots.acquire()
                    task = asyncio.create_task(self._beat(node, slots))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
            k += 1
            await asyncio.sleep(max(0.0, start + k * tick - time.monotonic()))

    async def _beat(self, i: int, slots: asyncio.Semaphore) -> None:
        hb = Heartbeat(Node=self.node(i), Address=address(i), Datacenter="dc1")
        link = self.links.get(i)
        if link is None:
            link = self.links[i] = HeartbeatLink(self.rpc, self.node(i), lambda: self.servers)
        self.beating.add(i)
        sent = time.monotonic()
        if sent - self.last_ack.get(i, sent) > self.timeout:
            self.late.add(i)  # the server rightly failed it: this process was too busy to beat
        try:
            await send_heartbeat(link, hb)
            self.last_ack[i] = time.monotonic()
            self.latencies.append(self.last_ack[i] - sent)
            self.last_beat[i] = sent
        except Exception:
            self.failures += 1
        finally:
            self.beating.discard(i)
            slots.release()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()))

    def stop(self) -> None:
        self._stop = True

    async def write(self, cmd: Any) -> None:
        reply = await self.rpc.call("write", WriteRequest(Command=cmd), WriteReply, timeout=30)
        if reply.Error:
            raise BenchError(f"write refused: {reply.Error}")

    async def read(self, query: Any, server: str, min_index: int = 0, wait: float = 0) -> Any:
        # stale, as the agents' watch cache reads: any server answers from its own store
        req = ReadRequest(Query=query, MinIndex=min_index, Wait=wait, Consistency="stale")
        return await self.rpc.call(
            "read", req, ReadReply, addr=server, timeout=wait + 10, blocking=min_index > 0
        )
