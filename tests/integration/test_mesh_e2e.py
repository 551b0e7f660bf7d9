"""The mesh end to end: a dev agent, real Envoy sidecars, mTLS, intentions, health, renewal."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from aiohttp import web
from helpers import BackgroundHTTP, MeshdProcess, dev_agent, free_ports, wait_for

from meshd.spiffe import spiffe_service_id


def api_app(name: str) -> Any:
    """A stand-in service that answers with its name, the path and the XFCC header it got."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": name,
                "path": request.path,
                "xfcc": request.headers.get("x-forwarded-client-cert", ""),
            }
        )

    return handler


class Mesh:
    def __init__(self, agent: MeshdProcess) -> None:
        self.agent = agent
        self.envoys: list[subprocess.Popen[bytes]] = []
        self.admin: dict[str, int] = {}

    def sidecar(self, service_id: str, port: int) -> None:
        self.admin[service_id] = port
        with open(f"{self.agent.log_path}.envoy-{service_id}", "wb") as log:
            self.envoys.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "meshd",
                        "connect",
                        "envoy",
                        f"-sidecar-for={service_id}",
                        f"-admin-bind=127.0.0.1:{port}",
                        f"-grpc-addr=127.0.0.1:{self.agent.grpc_port}",
                    ],
                    env={**os.environ, "MESHD_HTTP_ADDR": self.agent.http},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def admin_get(self, service_id: str, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin[service_id]}{path}"
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()

    def close(self) -> None:
        for p in self.envoys:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def get(port: int, path: str = "/", timeout: float = 3.0) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


@pytest.fixture(scope="module")
def mesh():
    agent = dev_agent().start()
    apps = BackgroundHTTP()
    m = Mesh(agent)
    sidecars = ("api-1", "api-2", "web")
    # every port the apps and Envoys will bind, picked together so no two are the same
    names = ("api1", "api2", "web", "up", "pub1", "pub2", "pubw", *(f"admin-{s}" for s in sidecars))
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    # api speaks HTTP: its sidecar runs an HTTP filter chain (XFCC header, L7 intentions)
    assert (
        agent.put(
            "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
        ).json()
        is True
    )
    apps.serve(ports["api1"], api_app("api-1"))
    apps.serve(ports["api2"], api_app("api-2"))
    apps.serve(ports["web"], api_app("web"))
    for i in (1, 2):
        r = agent.put(
            "/v1/agent/service/register",
            {
                "Name": "api",
                "ID": f"api-{i}",
                "Port": ports[f"api{i}"],
                "Check": {"CheckID": f"api-{i}-ttl", "TTL": "10m", "Status": "passing"},
                "Connect": {"SidecarService": {"Port": ports[f"pub{i}"]}},
            },
        )
        assert r.status == 200, r.body
    r = agent.put(
        "/v1/agent/service/register",
        {
            "Name": "web",
            "ID": "web",
            "Port": ports["web"],
            "Connect": {
                "SidecarService": {
                    "Port": ports["pubw"],
                    "Proxy": {
                        "Upstreams": [{"DestinationName": "api", "LocalBindPort": ports["up"]}]
                    },
                }
            },
        },
    )
    assert r.status == 200, r.body
    for sid in sidecars:
        m.sidecar(sid, ports[f"admin-{sid}"])
    m.ports = ports
    wait_for(lambda: get(ports["up"])[0] == 200, 30)
    # both api sidecars pass their listening checks and are in web's endpoints
    wait_for(lambda: {get(ports["up"])[1]["name"] for _ in range(10)} == {"api-1", "api-2"}, 30)
    yield m
    m.close()
    apps.close()
    agent.stop()


def spiffe(agent: MeshdProcess, service: str) -> str:
    td = agent.get("/v1/connect/ca/roots").json()["TrustDomain"]
    return spiffe_service_id(td, "dc1", service)


def test_web_reaches_api_over_mtls_with_web_identity(mesh):
    status, body = get(mesh.ports["up"], "/hello")
    assert status == 200 and body["name"].startswith("api-") and body["path"] == "/hello"
    assert f"URI={spiffe(mesh.agent, 'web')}" in body["xfcc"]
    seen = {get(mesh.ports["up"])[1]["name"] for _ in range(20)}
    assert seen == {"api-1", "api-2"}


def test_plaintext_to_public_listener_is_refused(mesh):
    status, _ = get(mesh.ports["pub1"], "/")
    assert status == 0
    with socket.create_connection(("127.0.0.1", mesh.ports["pub1"]), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(3)
        try:
            data = s.recv(100)
        except (ConnectionResetError, TimeoutError):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")


def test_deny_intention_blocks_and_delete_restores(mesh):
    a = mesh.agent
    r = a.put("/v1/connect/intentions/exact?source=web&destination=api", {"Action": "deny"})
    assert r.status == 200
    try:
        wait_for(lambda: get(mesh.ports["up"], timeout=1)[0] != 200, 30, interval=0.02)
        # and stays blocked
        assert all(get(mesh.ports["up"], timeout=1)[0] != 200 for _ in range(5))
    finally:
        a.request("DELETE", "/v1/connect/intentions/exact?source=web&destination=api")
    wait_for(lambda: get(mesh.ports["up"])[0] == 200, 30, interval=0.02)


def test_l7_intention_allows_get_public_only(mesh):
    a = mesh.agent
    assert (
        a.put(
            "/v1/config",
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [
                    # unmatched requests fall to the default policy (allow in -dev), as in
                    # Consul; the catch-all deny makes "allow GET /public, deny the rest" explicit
                    {
                        "Name": "web",
                        "Permissions": [
                            {
                                "Action": "allow",
                                "HTTP": {"PathPrefix": "/public", "Methods": ["GET"]},
                            },
                            {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
                        ],
                    }
                ],
            },
        ).json()
        is True
    )
    try:
        wait_for(lambda: get(mesh.ports["up"], "/private")[0] == 403, 10)
        assert get(mesh.ports["up"], "/public/x")[0] == 200
        req = urllib.request.Request(
            f"http://127.0.0.1:{mesh.ports['up']}/public", data=b"x", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=3)
        assert e.value.code == 403
    finally:
        a.request("DELETE", "/v1/config/service-intentions/api")
    wait_for(lambda: get(mesh.ports["up"], "/private")[0] == 200, 10)


def test_critical_instance_gets_no_traffic(mesh):
    a = mesh.agent
    a.put("/v1/agent/check/fail/api-2-ttl")
    try:
        wait_for(lambda: all(get(mesh.ports["up"])[1]["name"] == "api-1" for _ in range(10)), 15)
        assert {get(mesh.ports["up"])[1]["name"] for _ in range(20)} == {"api-1"}
    finally:
        a.put("/v1/agent/check/pass/api-2-ttl")
    wait_for(lambda: "api-2" in {get(mesh.ports["up"])[1]["name"] for _ in range(10)}, 15)


def test_leaf_renewal_under_traffic(mesh):
    a = mesh.agent
    r = a.put(
        "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {"LeafCertTTL": "15s"}}
    )
    assert r.status == 200
    first = a.get("/v1/agent/connect/ca/leaf/web").json()
    # force a re-issue with the short TTL, then keep traffic flowing across a renewal
    a.put(
        "/v1/connect/ca/configuration",
        {"Provider": "consul", "ForceRotateRoot": True, "Config": {"LeafCertTTL": "15s"}},
    )
    failures, total = 0, 0
    deadline = time.monotonic() + 30
    serials = {first["SerialNumber"]}
    while time.monotonic() < deadline:
        status, _ = get(mesh.ports["up"], timeout=2)
        total += 1
        failures += status != 200
        serials.add(a.get("/v1/agent/connect/ca/leaf/web").json()["SerialNumber"])
        if len(serials) >= 3:
            break
        time.sleep(0.05)
    assert len(serials) >= 3, "the leaf was not renewed"
    assert failures == 0, f"{failures} of {total} requests failed across renewals"
