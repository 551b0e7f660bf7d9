"""Per-stream xDS state machines: state of the world (SotW) and incremental (delta).

One stream = one Envoy (or one proxyless gRPC client) connection. Each runs as a single
coroutine: a reader task only queues requests and sets the stream's wake event, and the main loop
(1) applies queued requests (subscriptions, ACK/NACK), (2) sends, in PUSH_ORDER, whatever the
client lacks, (3) sleeps until a request or a snapshot change wakes it. All state is touched by
that one coroutine, so no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from envoy.service.discovery.v3 import discovery_pb2 as ds
from google.protobuf import any_pb2, descriptor_pool, message_factory

from .bootstrap import ADMIN_ADDR_KEY
from .common import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    WILDCARD_TYPES,
    digest,
    resource_name,
)

_nonces = itertools.count(1)


def _nonce() -> str:
    return str(next(_nonces))


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Prepared:
    name: str
    packed: any_pb2.Any
    version: str  # content hash of this one resource (delta xDS per-resource version)


def unpack_name(a: any_pb2.Any) -> str:
    full = a.type_url.rsplit("/", 1)[-1]
    cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full))
    msg = cls()
    a.Unpack(msg)
    return resource_name(msg)


class NodeResources:
    """Resources of one node, packed and hashed once and then shared by all its streams."""

    def __init__(self, resources: dict[str, list[Any]], version: str) -> None:
        self.version = version
        self.by_type: dict[str, dict[str, Prepared]] = {}
        for type_url in sorted(resources):
            items: dict[str, Prepared] = {}
            for r in resources[type_url]:
                if isinstance(r, any_pb2.Any):
                    packed, name = r, unpack_name(r)
                else:
                    packed, name = any_pb2.Any(), resource_name(r)
                    packed.Pack(r, deterministic=True)
                data = packed.SerializeToString(deterministic=True)
                items[name] = Prepared(name, packed, hashlib.sha256(data).hexdigest()[:16])
            self.by_type[type_url] = {n: items[n] for n in sorted(items)}

    def select(self, type_url: str, names: set[str] | None) -> tuple[list[Prepared], str]:
        """Resources matching a subscription (None = wildcard) and a hash of that selection."""
        have = self.by_type.get(type_url, {})
        chosen = (
            list(have.values()) if names is None else [have[n] for n in sorted(names) if n in have]
        )
        return chosen, digest(p.version.encode() for p in chosen)


class StreamHost(Protocol):
    """What a stream needs from the server; keeps this module free of grpc server plumbing."""

    cds_gate_s: float
    pushes: int  # responses sent to any client (metrics)
    # raises PermissionError to refuse; returns when the grant lapses (epoch seconds) or None
    authorize: Callable[[str, str], Awaitable[float | None]] | None

    def lookup(self, node_id: str) -> NodeResources | None: ...
    def register(self, stream: BaseStream) -> None: ...
    def unregister(self, stream: BaseStream) -> None: ...
    def record_ack(self, node_id: str, type_url: str, version: str) -> None: ...
    def record_nack(self, node_id: str, type_url: str, version: str, message: str) -> None: ...


class BaseStream:
    """Request intake, the wake loop, and the CDS-before-LDS gate shared by both variants."""

    kind = ""

    def __init__(self, host: StreamHost, request_iterator: AsyncIterator[Any]) -> None:
        self.host = host
        self.node_id: str | None = None
        self.token = ""  # the caller's ACL token (gRPC metadata), checked once node_id is known
        self._grant_until: float | None = None  # the token's expiry: checked again from then
        #: Envoy's admin address as its bootstrap announced it (node metadata), for telemetry.
        self.admin_addr = ""
        self.wake = asyncio.Event()
        self._requests = request_iterator
        self._inbox: deque[Any] = deque()
        self._closed = False
        self._gate_deadline: float | None = None
        self._awaiting_eds_since: float | None = None

    async def _read(self) -> None:
        try:
            async for req in self._requests:
                self._inbox.append(req)
                self.wake.set()
        except (asyncio.CancelledError, Exception):  # client gone: end the stream either way
            pass
        finally:
            self._closed = True
            self.wake.set()

    async def run(self) -> AsyncIterator[Any]:
        reader = asyncio.create_task(self._read())
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self._inbox:
                    req = self._inbox.popleft()
                    if self.node_id is None:
                        if not req.node.id:
                            raise ValueError("first xDS request carries no node.id")
                        await self._authorize(req.node.id)
                        self.node_id = req.node.id
                        meta = req.node.metadata.fields.get(ADMIN_ADDR_KEY)
                        self.admin_addr = meta.string_value if meta is not None else ""
                        self.host.register(self)
                    self.handle(req)
                if self._closed:
                    return
                if self._grant_until is not None and time.time() >= self._grant_until:
                    assert self.node_id is not None
                    await self._authorize(self.node_id)  # an expired token ends the stream
                res = self.host.lookup(self.node_id) if self.node_id is not None else None
                self._gate_deadline = None
                if res is not None:
                    for resp in self.compute(res, loop.time()):
                        yield resp
                timeout = None
                if self._gate_deadline is not None:
                    timeout = max(0.0, self._gate_deadline - loop.time())
                if self._grant_until is not None:
                    left = max(0.0, self._grant_until - time.time())
                    timeout = left if timeout is None else min(timeout, left)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
                self.wake.clear()
        finally:
            reader.cancel()
            if self.node_id is not None:
                self.host.unregister(self)

    async def _authorize(self, node_id: str) -> None:
        if self.host.authorize is not None:
            self._grant_until = await self.host.authorize(node_id, self.token)

    def warming_since(
        self,
        outstanding: list[float],
        cds_wildcard: bool,
        eds_names: set[str] | None,
        res: NodeResources,
        now: float,
    ) -> float | None:
        """Since when clusters may still be warming: a CDS or EDS response not yet ACKed, or (an
        Envoy, which takes every cluster) new EDS clusters it has not asked endpoints for yet.
        A route to a cluster still warming answers 503, so a chain change (new subset clusters)
        would drop requests without this wait."""
        missing = (
            cds_wildcard
            and eds_names is not None
            and bool(set(res.by_type.get(ENDPOINT, {})) - eds_names)
        )
        if not missing:
            self._awaiting_eds_since = None
        elif self._awaiting_eds_since is None:
            self._awaiting_eds_since = now
        since = [*outstanding, *([self._awaiting_eds_since] if missing else [])]
        return min((t for t in since if t is not None), default=None)

    def gated(self, type_url: str, cds_sent_at: float | None, now: float) -> bool:
        """Listeners and routes wait (bounded) for an outstanding CDS response to be ACKed (and
        the new clusters' endpoints), so they never point at clusters Envoy does not have yet."""
        if type_url not in (LISTENER, ROUTE) or cds_sent_at is None:
            return False
        deadline = cds_sent_at + self.host.cds_gate_s
        if now >= deadline:
            return False
        self._gate_deadline = deadline
        return True

    def handle(self, req: Any) -> None:
        raise NotImplementedError

    def compute(self, res: NodeResources, now: float) -> Iterable[Any]:
        raise NotImplementedError

    def synced(self, res: NodeResources) -> bool:
        raise NotImplementedError


@dataclass
class SotwType:
    names: set[str] | None = None  # None = wildcard
    must_respond: bool = True
    sent_nonce: str = ""
    sent_version: str = ""
    sent_hash: str | None = None
    sent_at: float | None = None  # set while a response is outstanding
    acked_hash: str | None = None


class SotwStream(BaseStream):
    """StreamAggregatedResources: every response carries the full selection for its type."""

    kind = "sotw"

    def __init__(self, host: StreamHost, request_iterator: AsyncIterator[Any]) -> None:
        super().__init__(host, request_iterator)
        self.types: dict[str, SotwType] = {}
        self._clusters: dict[str, Prepared] = {}  # the clusters last sent (what Envoy holds)

    def _routes_settled(self, res: NodeResources) -> bool:
        """Envoy runs the current listeners and routes (ACKed, nothing in flight)."""
        for t in (LISTENER, ROUTE):
            st = self.types.get(t)
            if st is not None and (
                st.sent_at is not None or res.select(t, st.names)[1] != st.acked_hash
            ):
                return False
        return True

    def _keep_routed(
        self, chosen: list[Prepared], h: str, res: NodeResources
    ) -> tuple[list[Prepared], str]:
        """Break after make: a cluster the new snapshot drops stays in CDS until Envoy runs the
        routes that no longer name it; removed first, it would answer 503 in between."""
        if self._routes_settled(res):
            return chosen, h
        names = {p.name for p in chosen}
        kept = [p for n, p in self._clusters.items() if n not in names]
        if not kept:
            return chosen, h
        both = sorted([*chosen, *kept], key=lambda p: p.name)
        return both, digest(p.version.encode() for p in both)

    @staticmethod
    def _names(type_url: str, names: Iterable[str]) -> set[str] | None:
        got = set(names)
        if type_url in WILDCARD_TYPES and (not got or "*" in got):
            return None
        got.discard("*")
        return got

    def handle(self, req: ds.DiscoveryRequest) -> None:
        t = req.type_url
        if not t:
            return
        names = self._names(t, req.resource_names)
        st = self.types.get(t)
        if st is None or not req.response_nonce:
            # First request for the type (or a fresh subscription after reconnect): answer it
            # whatever nonce it carries, since an unknown nonce is from another server life.
            self.types[t] = SotwType(names=names)
            return
        if req.response_nonce != st.sent_nonce:
            return  # stale: the client will answer our latest response with its current names
        assert self.node_id is not None
        st.sent_at = None
        if req.HasField("error_detail"):
            self.host.record_nack(self.node_id, t, st.sent_version, req.error_detail.message)
        else:
            st.acked_hash = st.sent_hash
            self.host.record_ack(self.node_id, t, req.version_info)
        if names != st.names:
            st.names = names
            st.must_respond = True

    def compute(self, res: NodeResources, now: float) -> Iterable[ds.DiscoveryResponse]:
        for t in PUSH_ORDER + tuple(sorted(set(self.types) - set(PUSH_ORDER))):
            st = self.types.get(t)
            if st is None:
                continue
            cds, eds = self.types.get(CLUSTER), self.types.get(ENDPOINT)
            since = self.warming_since(
                [x.sent_at for x in (cds, eds) if x is not None and x.sent_at is not None],
                cds is not None and cds.names is None,
                eds.names if eds is not None else None,
                res,
                now,
            )
            if self.gated(t, since, now):
                continue
            chosen, h = res.select(t, st.names)
            if t == CLUSTER:
                chosen, h = self._keep_routed(chosen, h, res)
            # A NACKed selection has sent_hash == its hash: nothing goes out until it changes.
            if not st.must_respond and h == st.sent_hash:
                continue
            if t == CLUSTER:
                self._clusters = {p.name: p for p in chosen}
                eds = self.types.get(ENDPOINT)
                if eds is not None:
                    # a changed cluster warms again and waits for its endpoints (for Envoy's
                    # 15 s initial fetch timeout if none come): send them again after it
                    eds.must_respond = True
            nonce = _nonce()
            st.must_respond, st.sent_nonce, st.sent_hash = False, nonce, h
            st.sent_version, st.sent_at = res.version, now
            self.host.pushes += 1
            yield ds.DiscoveryResponse(
                version_info=res.version,
                type_url=t,
                nonce=nonce,
                resources=[p.packed for p in chosen],
            )

    def synced(self, res: NodeResources) -> bool:
        # acked_hash alone is not enough: after a NACK it still equals the last good content
        # while a resend of that content may not have been answered yet.
        return all(
            st.sent_at is None
            and not st.must_respond
            and res.select(t, st.names)[1] == st.sent_hash == st.acked_hash
            for t, st in self.types.items()
        )


@dataclass
class DeltaType:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client holds: name -> version
    absent: set[str] = field(default_factory=set)  # newly subscribed, to report if missing
    must_respond: bool = True
    outstanding: dict[str, tuple[str, float]] = field(default_factory=dict)  # nonce -> ver, at
    acked: bool = False


class DeltaStream(BaseStream):
    """DeltaAggregatedResources: only changed resources travel, removals are named."""

    kind = "delta"

    def __init__(self, host: StreamHost, request_iterator: AsyncIterator[Any]) -> None:
        super().__init__(host, request_iterator)
        self.types: dict[str, DeltaType] = {}

    def handle(self, req: ds.DeltaDiscoveryRequest) -> None:
        t = req.type_url
        if not t:
            return
        st = self.types.get(t)
        if st is None:
            st = self.types[t] = DeltaType(
                wildcard=t in WILDCARD_TYPES and not req.resource_names_subscribe,
                known=dict(req.initial_resource_versions),
            )
        # Subscription changes are deltas: apply them even from a request with a stale nonce.
        for n in req.resource_names_subscribe:
            if n == "*":
                st.wildcard = True
            elif n not in st.names:
                st.names.add(n)
                st.absent.add(n)
        for n in req.resource_names_unsubscribe:
            if n == "*":
                st.wildcard = False
            else:
                st.names.discard(n)
                st.absent.discard(n)
                st.known.pop(n, None)
        if not st.wildcard:
            for n in [n for n in st.known if n not in st.names]:
                del st.known[n]
        sent = st.outstanding.pop(req.response_nonce, None) if req.response_nonce else None
        if sent is None:
            return
        assert self.node_id is not None
        if req.HasField("error_detail"):
            # `known` already holds the rejected versions: they are not resent until they change.
            st.acked = False
            self.host.record_nack(self.node_id, t, sent[0], req.error_detail.message)
        else:
            st.acked = True
            self.host.record_ack(self.node_id, t, sent[0])

    def _diff(
        self,
        st: DeltaType,
        res: NodeResources,
        t: str,
    ) -> tuple[list[Prepared], list[str]]:
        cur = res.by_type.get(t, {})
        wanted = set(cur) if st.wildcard else st.names
        send = [cur[n] for n in sorted(wanted) if n in cur and st.known.get(n) != cur[n].version]
        gone = {n for n in st.known if n not in cur}
        if t == CLUSTER and gone and not self._routes_settled(res):
            gone = set()  # break after make: removed once the routes no longer name them
        removed = sorted(gone | {n for n in st.absent if n not in cur})
        return send, removed

    def _routes_settled(self, res: NodeResources) -> bool:
        for t in (LISTENER, ROUTE):
            st = self.types.get(t)
            if st is not None and (st.outstanding or any(self._diff(st, res, t))):
                return False
        return True

    def compute(self, res: NodeResources, now: float) -> Iterable[ds.DeltaDiscoveryResponse]:
        for t in PUSH_ORDER + tuple(sorted(set(self.types) - set(PUSH_ORDER))):
            st = self.types.get(t)
            if st is None:
                continue
            cds, eds = self.types.get(CLUSTER), self.types.get(ENDPOINT)
            since = self.warming_since(
                [a for x in (cds, eds) if x is not None for _, a in x.outstanding.values()],
                cds is not None and cds.wildcard,
                eds.names if eds is not None else None,
                res,
                now,
            )
            if self.gated(t, since, now):
                continue
            send, removed = self._diff(st, res, t)
            st.absent.clear()
            if not (send or removed or st.must_respond):
                continue
            st.must_respond = False
            for p in send:
                st.known[p.name] = p.version
            eds = self.types.get(ENDPOINT)
            if t == CLUSTER and eds is not None:
                for p in send:  # a changed cluster warms again: resend its endpoints after it
                    eds.known.pop(p.name, None)
            for n in removed:
                st.known.pop(n, None)
            nonce = _nonce()
            st.outstanding[nonce] = (res.version, now)
            self.host.pushes += 1
            yield ds.DeltaDiscoveryResponse(
                system_version_info=res.version,
                type_url=t,
                nonce=nonce,
                removed_resources=removed,
                resources=[
                    ds.Resource(name=p.name, version=p.version, resource=p.packed) for p in send
                ],
            )

    def synced(self, res: NodeResources) -> bool:
        for t, st in self.types.items():
            if st.outstanding or st.must_respond or not st.acked:
                return False
            send, removed = self._diff(st, res, t)
            if send or removed:
                return False
        return True
