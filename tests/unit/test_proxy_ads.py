"""ADSServer protocol behaviour, driven by an in-process gRPC client playing Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

import grpc
import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as ds
from google.rpc import status_pb2

from meshd.intentions import RBACPlan
from meshd.proxy.ads import ADSServer
from meshd.proxy.ads_streams import unpack_name
from meshd.proxy.common import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream

NODE = "web-sidecar-proxy"
API_CLUSTER = "api.default.dc1.internal.td.consul"


def snap(version: int = 1, **kw: Any) -> ProxySnapshot:
    base: dict[str, Any] = dict(
        proxy_id=NODE,
        service="web",
        trust_domain="td.consul",
        datacenter="dc1",
        public_listener_address="127.0.0.1",
        public_listener_port=21000,
        local_app_port=8080,
        upstreams=[Upstream("api", 9191, endpoints=[Endpoint("10.0.0.1", 21000)])],
        rbac=RBACPlan("DENY", []),
        leaf_cert_pem="CERT",
        leaf_key_pem="KEY",
        roots_pem=["ROOT"],
        version=version,
    )
    base.update(kw)
    return ProxySnapshot(**base)


class Client:
    """One xDS stream; requests and responses are explicit so tests control timing."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool = False, node: str = NODE):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.delta = delta
        self.node = node
        self.call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self.first = True
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        # One reader for the stream's life: cancelling a pending read would cancel the RPC.
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self.call.read()
            if msg is grpc.aio.EOF:
                return
            self.responses.put_nowait(msg)

    async def send(self, **kw: Any) -> None:
        cls = ds.DeltaDiscoveryRequest if self.delta else ds.DiscoveryRequest
        req = cls(**kw)
        if self.first:
            req.node.id = self.node
            self.first = False
        await self.call.write(req)

    async def recv(self, timeout: float = 2.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def silent(self, t: float = 0.2) -> None:
        await asyncio.sleep(t)
        if not self.responses.empty():
            got = self.responses.get_nowait()
            pytest.fail(f"unexpected response {got.type_url} {got.nonce}")

    def close(self) -> None:
        self._reader.cancel()
        self.call.cancel()

    async def ack(
        self, resp: Any, names: list[str] | None = None, *, error: str | None = None
    ) -> None:
        kw: dict[str, Any] = {"type_url": resp.type_url, "response_nonce": resp.nonce}
        if error is not None:
            kw["error_detail"] = status_pb2.Status(code=3, message=error)
        if not self.delta:
            kw["version_info"] = "" if error is not None else resp.version_info
            kw["resource_names"] = names or []
        await self.send(**kw)


def names(resp: Any) -> list[str]:
    if isinstance(resp, ds.DeltaDiscoveryResponse):
        return [r.name for r in resp.resources]
    return [unpack_name(a) for a in resp.resources]


@pytest.fixture
async def ads() -> Any:
    acks: list[tuple[str, str, str]] = []
    server = ADSServer("127.0.0.1", 0, on_ack=lambda *a: acks.append(a), cds_gate_s=0.5)
    server.acks = acks  # type: ignore[attr-defined]
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    server.channel = channel  # type: ignore[attr-defined]
    yield server
    await channel.close()
    await server.stop(0)


async def test_holds_until_snapshot_then_acks(ads: Any) -> None:
    c = Client(ads.channel)
    await c.send(type_url=CLUSTER)
    await c.silent()
    ads.set_snapshot(NODE, snap())
    r = await c.recv()
    assert r.type_url == CLUSTER and r.version_info == "1" and len(r.resources) == 2
    await c.ack(r)
    await ads.wait_synced(NODE, 2)
    assert ads.stats(NODE)["acked"] == {CLUSTER: "1"}
    assert ads.acks == [(NODE, CLUSTER, "1")]
    ads.set_snapshot(NODE, snap())  # same content: nothing to push
    await c.silent()
    c.close()


async def test_push_order_and_cds_gate(ads: Any) -> None:
    c = Client(ads.channel)
    for t, n in (
        (LISTENER, []),
        (CLUSTER, []),
        (ENDPOINT, [API_CLUSTER]),
        (SECRET, ["leaf", "roots"]),
    ):
        await c.send(type_url=t, resource_names=n)
    await asyncio.sleep(0.05)
    ads.set_snapshot(NODE, snap())
    got = [await c.recv() for _ in range(3)]
    assert [r.type_url for r in got] == [SECRET, CLUSTER, ENDPOINT]
    await c.silent(0.2)  # listeners wait for the CDS ACK ...
    await c.ack(got[1])
    lds = await c.recv()
    assert lds.type_url == LISTENER and names(lds) == [
        "api:127.0.0.1:9191",
        "public_listener:127.0.0.1:21000",
    ]
    for r in (got[0], got[2], lds):
        await c.ack(
            r,
            ["leaf", "roots"]
            if r.type_url == SECRET
            else [API_CLUSTER]
            if r.type_url == ENDPOINT
            else [],
        )
    await ads.wait_synced(NODE, 2)

    # ... but not forever: without an ACK they follow after cds_gate_s
    ads.set_snapshot(NODE, snap(2, upstreams=[Upstream("db", 9292)]))
    cds = await c.recv()
    assert cds.type_url == CLUSTER
    eds = await c.recv()
    assert eds.type_url == ENDPOINT and len(eds.resources) == 0  # api is gone, db not asked
    lds = await c.recv(timeout=2)
    assert lds.type_url == LISTENER
    c.close()


async def test_nack_is_logged_and_not_resent(ads: Any, caplog: pytest.LogCaptureFixture) -> None:
    c = Client(ads.channel)
    ads.set_snapshot(NODE, snap())
    await c.send(type_url=CLUSTER)
    await c.ack(await c.recv())
    await ads.wait_synced(NODE, 2)  # else the ACK may arrive after v2 went out, i.e. stale
    ads.set_snapshot(NODE, snap(2, local_app_port=9999))
    r2 = await c.recv()
    with caplog.at_level(logging.WARNING, logger="meshd.proxy.ads"):
        await c.ack(r2, error="duplicate cluster\nlocal_app")
        await asyncio.sleep(0.1)
    assert "Envoy rejected Cluster: duplicate cluster local_app" in caplog.text
    st = ads.stats(NODE)
    assert st["acked"][CLUSTER] == "1" and st["nacks"][-1]["version"] == "2"
    assert not st["synced"]
    # the agent's metrics: two responses went out, one accepted, one rejected
    assert (ads.pushes, ads.acks_total, ads.nacks_total) == (2, 1, 1)
    ads.set_snapshot(NODE, snap(3, local_app_port=9999))  # same content, new version: no resend
    await c.silent()
    ads.set_snapshot(NODE, snap(4, local_app_port=9998))
    r4 = await c.recv()
    assert r4.version_info == "4"
    await c.ack(r4)
    await ads.wait_synced(NODE, 2)
    c.close()


async def test_leaf_rotation_pushes_only_secrets(ads: Any) -> None:
    c = Client(ads.channel)
    ads.set_snapshot(NODE, snap())
    await c.send(type_url=CLUSTER)
    await c.ack(await c.recv())
    await c.send(type_url=SECRET, resource_names=["leaf", "roots"])
    await c.ack(await c.recv(), ["leaf", "roots"])
    await c.send(type_url=LISTENER)
    await c.ack(await c.recv())
    ads.set_snapshot(NODE, snap(2, leaf_cert_pem="CERT2"))
    r = await c.recv()
    assert r.type_url == SECRET and r.version_info == "2"
    await c.silent()
    c.close()


async def test_stale_nonce_is_ignored(ads: Any) -> None:
    c = Client(ads.channel)
    ads.set_snapshot(NODE, snap())
    await c.send(type_url=CLUSTER)
    r1 = await c.recv()
    ads.set_snapshot(NODE, snap(2, local_app_port=1))
    r2 = await c.recv()
    await c.ack(r1)  # answers a response that has been superseded
    await asyncio.sleep(0.1)
    assert CLUSTER not in ads.stats(NODE)["acked"]
    await c.ack(r2)
    await ads.wait_synced(NODE, 2)
    assert ads.stats(NODE)["acked"][CLUSTER] == "2"
    c.close()


async def test_default_provider_and_unknown_names(ads: Any) -> None:
    listeners = {"api": listener_pb2.Listener(name="api")}
    ads.set_default_provider(
        lambda node: {LISTENER: list(listeners.values())} if node.startswith("grpc-") else None
    )
    c = Client(ads.channel, node="grpc-client-7")
    await c.send(type_url=LISTENER, resource_names=["api", "nope"])
    r = await c.recv()
    assert names(r) == ["api"]
    await c.ack(r, ["api", "nope"])
    await c.send(
        type_url=LISTENER,
        resource_names=["nope"],
        response_nonce=r.nonce,
        version_info=r.version_info,
    )
    r = await c.recv()
    assert list(r.resources) == []  # unknown: absent, not an error
    await c.ack(r, ["nope"])
    listeners["nope"] = listener_pb2.Listener(name="nope")
    ads.invalidate()
    assert names(await c.recv()) == ["nope"]
    other = Client(ads.channel, node="someone-else")  # no snapshot, provider says None: held
    await other.send(type_url=LISTENER)
    await other.silent()
    c.close()
    other.close()


async def test_every_stream_of_a_node_wakes(ads: Any) -> None:
    clients = [Client(ads.channel) for _ in range(3)]
    for c in clients:
        await c.send(type_url=CLUSTER)
    await asyncio.sleep(0.05)
    ads.set_snapshot(NODE, snap())
    for c in clients:
        assert (await c.recv()).version_info == "1"
    assert ads.stats(NODE)["streams"] == 3
    for c in clients:
        c.close()


async def test_missing_node_id_is_rejected(ads: Any) -> None:
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ads.channel)
    call = stub.StreamAggregatedResources()
    await call.write(ds.DiscoveryRequest(type_url=CLUSTER))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(call.read(), 2)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_set_snapshot_from_another_thread(ads: Any) -> None:
    c = Client(ads.channel)
    await c.send(type_url=CLUSTER)
    await asyncio.sleep(0.05)
    await asyncio.to_thread(ads.set_snapshot, NODE, snap())
    assert (await c.recv()).version_info == "1"
    c.close()


async def test_delta(ads: Any, caplog: pytest.LogCaptureFixture) -> None:
    two = snap(
        upstreams=[
            Upstream("api", 9191, endpoints=[Endpoint("10.0.0.1", 1)]),
            Upstream("db", 9292, endpoints=[Endpoint("10.0.0.2", 2)]),
        ]
    )
    ads.set_snapshot(NODE, two)
    c = Client(ads.channel, delta=True)
    await c.send(type_url=CLUSTER)  # no names: wildcard
    r = await c.recv()
    assert sorted(x.name for x in r.resources) == sorted(
        [API_CLUSTER, "db.default.dc1.internal.td.consul", "local_app"]
    )
    assert all(x.version for x in r.resources) and r.system_version_info == "1"
    await c.ack(r)
    await c.send(type_url=ENDPOINT, resource_names_subscribe=[API_CLUSTER, "ghost"])
    r = await c.recv()
    assert [x.name for x in r.resources] == [API_CLUSTER] and list(r.removed_resources) == ["ghost"]
    await c.ack(r)
    await ads.wait_synced(NODE, 2)
    assert ads.stats(NODE)["kinds"] == ["delta"]

    # only what changed travels; what disappeared is named
    ads.set_snapshot(NODE, replace(two, version=2, upstreams=[two.upstreams[0]]))
    r = await c.recv()
    assert r.type_url == CLUSTER and list(r.resources) == []
    assert list(r.removed_resources) == ["db.default.dc1.internal.td.consul"]
    await c.ack(r)
    await c.silent()  # api's endpoints did not change

    ads.set_snapshot(
        NODE,
        replace(
            two,
            version=3,
            upstreams=[replace(two.upstreams[0], endpoints=[Endpoint("10.0.0.9", 1)])],
        ),
    )
    r = await c.recv()
    assert r.type_url == ENDPOINT and [x.name for x in r.resources] == [API_CLUSTER]
    with caplog.at_level(logging.WARNING, logger="meshd.proxy.ads"):
        await c.ack(r, error="bad endpoint")
        await asyncio.sleep(0.1)
    assert "Envoy rejected ClusterLoadAssignment: bad endpoint" in caplog.text
    assert ads.stats(NODE)["nacks"][-1]["version"] == "3"
    await c.silent()  # rejected, unchanged: not resent
    await c.send(type_url=ENDPOINT, resource_names_unsubscribe=[API_CLUSTER])
    await c.silent()
    c.close()


async def test_route_and_listener_names_for_http(ads: Any) -> None:
    s = snap(protocol="http", upstreams=[Upstream("api", 9191, protocol="http")])
    ads.set_snapshot(NODE, s)
    c = Client(ads.channel)
    await c.send(type_url=ROUTE, resource_names=["public_listener", API_CLUSTER])
    r = await c.recv()
    assert names(r) == [API_CLUSTER, "public_listener"]
    c.close()


async def play_envoy(c: Client, stop: Any, limit: int = 12) -> list[tuple[str, list[str]]]:
    """ACK everything as Envoy does: after a CDS response it asks endpoints for every EDS
    cluster it now holds, on the latest EDS nonce."""
    seen: list[tuple[str, list[str]]] = []
    clusters: list[str] = []
    last_eds: Any = None
    for _ in range(limit):
        r = await c.recv()
        seen.append((r.type_url, names(r)))
        if r.type_url == CLUSTER:
            await c.ack(r)
            new = [n for n in names(r) if n != "local_app"]
            if new != clusters:
                clusters = new
                if last_eds is None:
                    await c.send(type_url=ENDPOINT, resource_names=clusters)
                else:
                    await c.ack(last_eds, clusters)
        elif r.type_url == ENDPOINT:
            last_eds = r
            await c.ack(r, clusters)
        else:
            await c.ack(r)
        if stop(seen):
            return seen
    pytest.fail(f"no end in {seen}")


async def test_dropped_cluster_stays_until_routes_leave_it_and_endpoints_follow_cds(
    ads: Any,
) -> None:
    """Make before break: a chain change swaps clusters; Envoy must never hold a listener or
    route that names a cluster it lacks, and a changed cluster gets its endpoints again."""
    c = Client(ads.channel)
    ads.set_snapshot(NODE, snap())
    await c.send(type_url=CLUSTER)
    await c.send(type_url=LISTENER)
    await play_envoy(c, lambda seen: {t for t, _ in seen} >= {CLUSTER, ENDPOINT, LISTENER})
    await ads.wait_synced(NODE, 2)
    db = "db.default.dc1.internal.td.consul"
    ads.set_snapshot(NODE, snap(2, upstreams=[Upstream("db", 9292)]))
    seen = await play_envoy(c, lambda s: s[-1][0] == CLUSTER and API_CLUSTER not in s[-1][1])
    first_cds = next(n for t, n in seen if t == CLUSTER)
    assert set(first_cds) >= {API_CLUSTER, db}  # api kept while the listener still uses it
    lds_at = next(i for i, (t, _) in enumerate(seen) if t == LISTENER)
    eds_for_db = next(i for i, (t, n) in enumerate(seen) if t == ENDPOINT and db in n)
    assert eds_for_db < lds_at < len(seen) - 1  # db warmed before the listener, api removed last
    eds = await c.recv()  # endpoints again after the changed CDS
    assert eds.type_url == ENDPOINT and db in names(eds)
    await c.ack(eds, [db])
    with contextlib.suppress(TimeoutError):
        while True:  # the EDS subscription shrinks to db: one more answer
            r = await c.recv(timeout=0.3)
            await c.ack(r, [db])
    await ads.wait_synced(NODE, 2)
    c.close()


async def test_delta_keeps_a_dropped_cluster_until_the_listener_leaves_it(ads: Any) -> None:
    c = Client(ads.channel, delta=True)
    ads.set_snapshot(NODE, snap())
    await c.send(type_url=CLUSTER)
    await c.send(type_url=LISTENER)
    subscribed: set[str] = set()
    seen: list[tuple[str, list[str], list[str]]] = []

    async def step() -> None:
        r = await c.recv()
        seen.append((r.type_url, [x.name for x in r.resources], list(r.removed_resources)))
        await c.ack(r)
        if r.type_url == CLUSTER:  # Envoy asks endpoints of the EDS clusters it now holds
            new = {x.name for x in r.resources} - {"local_app"} - subscribed
            if new:
                subscribed.update(new)
                await c.send(type_url=ENDPOINT, resource_names_subscribe=sorted(new))

    while {t for t, _, _ in seen} != {CLUSTER, ENDPOINT, LISTENER}:
        await step()
    await ads.wait_synced(NODE, 2)
    seen.clear()
    db = "db.default.dc1.internal.td.consul"
    ads.set_snapshot(NODE, snap(2, upstreams=[Upstream("db", 9292)]))
    while not any(t == CLUSTER and API_CLUSTER in removed for t, _, removed in seen):
        await step()
        assert len(seen) < 10, seen
    first_cds = seen[0]
    assert first_cds[0] == CLUSTER and db in first_cds[1] and first_cds[2] == []
    order = [t for t, _, _ in seen]
    assert order.index(ENDPOINT) < order.index(LISTENER) < len(order) - 1, seen
    c.close()
