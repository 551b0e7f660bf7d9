"""The ADS gRPC server (grpc.aio): serves per-node resources to Envoys and proxyless clients.

Resources are keyed by node id (= the proxy's service ID, from the first request's node.id).
`set_snapshot` builds and installs a sidecar's resources; `set_resources` is the lower-level
entry for anything else (gRFC A27 proxyless clients); a default provider answers nodes that have
neither. A stream whose node has nothing yet is held open until something arrives.

Envoy NACKs a whole response for one bad resource: the rejection is logged and recorded, the
client keeps its last good config, and nothing is resent until the resources change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from .ads_streams import BaseStream, DeltaStream, NodeResources, SotwStream, short_type
from .common import digest
from .snapshot import ProxySnapshot

log = logging.getLogger("meshd.proxy.ads")

Resources = dict[str, list[Any]]
Provider = Callable[[str], Resources | None]
AckHook = Callable[[str, str, str], None]
NackHook = Callable[[str, str, str, str], None]

NACK_HISTORY = 20


def _token(context: grpc.aio.ServicerContext) -> str:
    """The ACL token Envoy sends as `x-consul-token` (its bootstrap's initial_metadata)."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-consul-token":
            return value if isinstance(value, str) else value.decode()
    return ""


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server: ADSServer) -> None:
        self._server = server

    async def _serve(
        self,
        stream: BaseStream,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        stream.token = _token(context)
        try:
            async for resp in stream.run():
                yield resp
        except PermissionError as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        async for resp in self._serve(SotwStream(self._server, request_iterator), context):
            yield resp

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[Any]:
        async for resp in self._serve(DeltaStream(self._server, request_iterator), context):
            yield resp


class ADSServer:
    """Aggregated Discovery Service over gRPC, SotW and delta, for any number of nodes.

    The mutating methods are plain functions: they may be called from the event loop or from
    another thread (wake-ups are marshalled onto the server's loop).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8502,
        *,
        server_credentials: grpc.ServerCredentials | None = None,
        on_ack: AckHook | None = None,
        on_nack: NackHook | None = None,
        cds_gate_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.on_ack = on_ack
        self.on_nack = on_nack
        #: How long listeners/routes wait for an outstanding CDS response to be ACKed.
        self.cds_gate_s = cds_gate_s
        self._credentials = server_credentials
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeResources] = {}
        self._provided: dict[str, NodeResources | None] = {}
        self._provider: Provider | None = None
        self._streams: dict[str, set[BaseStream]] = {}
        self._acked: dict[str, dict[str, str]] = {}
        self._nacks: dict[str, deque[dict[str, Any]]] = {}
        #: totals since start, for the agent's metrics
        self.pushes = self.acks_total = self.nacks_total = 0
        #: `await authorize(node_id, token)` raises PermissionError to refuse a stream (the
        #: agent's ACL check) and returns when the token expires (the stream is checked again
        #: then); None: every local stream is served (ACLs off).
        self.authorize: Callable[[str, str], Awaitable[float | None]] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                # Envoy pings idle ADS streams; do not treat that as abuse.
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        addr = f"{self.host}:{self.port}"
        if self._credentials is not None:
            bound = server.add_secure_port(addr, self._credentials)
        else:
            bound = server.add_insecure_port(addr)
        if not bound:
            raise OSError(f"ADS server could not bind {addr}")
        self.port = bound
        await server.start()
        self._server = server
        log.info("ADS server listening on %s:%d", self.host, self.port)

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # --- resources -----------------------------------------------------------------------------

    def set_snapshot(self, node_id: str, snap: ProxySnapshot | None) -> None:
        """Install a sidecar's snapshot (None forgets it; the Envoy keeps what it has)."""
        if snap is None:
            self.set_resources(node_id, None, "")
            return
        # the translator pulls in every Envoy proto module (~12 MB): only load it once a
        # sidecar exists, so agents without one stay light
        from .resources import build_resources

        self.set_resources(node_id, build_resources(snap), str(snap.version))

    def set_resources(self, node_id: str, resources: Resources | None, version: str) -> None:
        """Install prepared resources (protobuf messages or packed Any) for one node id."""
        with self._lock:
            if resources is None:
                self._nodes.pop(node_id, None)
            else:
                self._nodes[node_id] = NodeResources(resources, version)
        self._wake(node_id)

    def set_default_provider(self, provider: Provider | None) -> None:
        """Consulted for node ids with no resources of their own (proxyless gRPC clients)."""
        with self._lock:
            self._provider = provider
            self._provided.clear()
        self._wake(None)

    def invalidate(self, node_id: str | None = None) -> None:
        """The default provider's answer changed (for one node, or all): ask it again."""
        with self._lock:
            if node_id is None:
                self._provided.clear()
            else:
                self._provided.pop(node_id, None)
        self._wake(node_id)

    def lookup(self, node_id: str) -> NodeResources | None:
        with self._lock:
            res = self._nodes.get(node_id)
            if res is not None or self._provider is None:
                return res
            if node_id in self._provided:
                return self._provided[node_id]
            provider = self._provider
        got = provider(node_id)
        prepared = None if got is None else NodeResources(got, _content_version(got))
        with self._lock:
            self._provided[node_id] = prepared
        return prepared

    # --- observation ---------------------------------------------------------------------------

    def stats(self, node_id: str) -> dict[str, Any]:
        """acked: type URL -> last version the client ACKed (kept after the stream ends);
        synced: every live stream has ACKed exactly the current resources; kinds: "sotw" or
        "delta" per live stream; nacks: recent rejections, newest last."""
        with self._lock:
            streams = list(self._streams.get(node_id, ()))
            acked = dict(self._acked.get(node_id, {}))
            nacks = list(self._nacks.get(node_id, ()))
            res = self._nodes.get(node_id) or self._provided.get(node_id)
        synced = bool(streams) and res is not None and all(s.synced(res) for s in streams)
        return {
            "version": res.version if res else None,
            "streams": len(streams),
            "kinds": sorted(s.kind for s in streams),
            "acked": acked,
            "synced": synced,
            "nacks": nacks,
        }

    def stream_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._streams.values())

    def admin_addresses(self) -> dict[str, str]:
        """node id -> admin address announced by a live stream (only Envoys announce one)."""
        with self._lock:
            out = {}
            for node_id, streams in self._streams.items():
                addrs = sorted(s.admin_addr for s in streams if s.admin_addr)
                if addrs:
                    out[node_id] = addrs[0]
            return out

    async def wait_synced(self, node_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until the node's streams have ACKed the current resources (tests, tooling)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats(node_id)
            if st["synced"]:
                return st
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node_id} not synced after {timeout}s: {st}")
            await asyncio.sleep(0.02)

    # --- StreamHost ----------------------------------------------------------------------------

    def register(self, stream: BaseStream) -> None:
        assert stream.node_id is not None
        with self._lock:
            self._streams.setdefault(stream.node_id, set()).add(stream)
        log.debug("xDS stream opened for %s", stream.node_id)

    def unregister(self, stream: BaseStream) -> None:
        assert stream.node_id is not None
        with self._lock:
            streams = self._streams.get(stream.node_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._streams[stream.node_id]

    def record_ack(self, node_id: str, type_url: str, version: str) -> None:
        with self._lock:
            self.acks_total += 1
            self._acked.setdefault(node_id, {})[type_url] = version
        if self.on_ack is not None:
            try:
                self.on_ack(node_id, type_url, version)
            except Exception:
                log.exception("on_ack hook failed")

    def record_nack(self, node_id: str, type_url: str, version: str, message: str) -> None:
        log.warning(
            "Envoy rejected %s: %s (node %s, version %s)",
            short_type(type_url),
            " ".join(message.split()),
            node_id,
            version,
        )
        with self._lock:
            self.nacks_total += 1
            self._nacks.setdefault(node_id, deque(maxlen=NACK_HISTORY)).append(
                {"type_url": type_url, "version": version, "message": message, "time": time.time()}
            )
        if self.on_nack is not None:
            try:
                self.on_nack(node_id, type_url, version, message)
            except Exception:
                log.exception("on_nack hook failed")

    # --- internals -----------------------------------------------------------------------------

    def _wake(self, node_id: str | None) -> None:
        with self._lock:
            if node_id is None:
                targets = [s for ss in self._streams.values() for s in ss]
            else:
                targets = list(self._streams.get(node_id, ()))
        if not targets or self._loop is None:
            return
        try:
            in_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            in_loop = False
        for s in targets:
            if in_loop:
                s.wake.set()
            else:
                self._loop.call_soon_threadsafe(s.wake.set)


def _content_version(resources: Resources) -> str:
    """Provider answers carry no version: derive one from the content."""
    chunks: list[bytes] = []
    for t in sorted(resources):
        chunks.append(t.encode())
        chunks.extend(r.SerializeToString(deterministic=True) for r in resources[t])
    return digest(chunks)[:16]
