"""A small mesh for the telemetry tests: web -> api (HTTP) and web -> db (TCP) over real Envoys.

api's answer can be switched to 503 so a test can watch the success rate fall. Also run as a
script to (re)capture the Envoy admin fixtures under tests/fixtures/envoy/.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from helpers import BackgroundHTTP, MeshdProcess, dev_agent, free_ports, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "envoy"
#: what the agent's collector reads (meshd.telemetry.STATS_PATH; kept literal: tests import it)
#: requests per second of the background traffic web -> api
RATE = 20.0
STATS_PATH = "/stats?format=json&histogram_buckets=cumulative"


class TelemetryMesh:
    def __init__(self, agent: MeshdProcess) -> None:
        self.agent = agent
        self.apps = BackgroundHTTP()
        self.envoys: list[subprocess.Popen[bytes]] = []
        self.admin: dict[str, int] = {}
        self.by_id: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        #: api answers with this status (200 normally; a test sets 503)
        self.api_status = 200
        #: the headers of the last request each app received (trace propagation tests)
        self.last_headers: dict[str, dict[str, str]] = {}

    def _app(self, name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            status = self.api_status if name == "api" else 200
            self.last_headers[name] = dict(request.headers)
            return web.json_response({"name": name}, status=status)

        return handler

    def sidecar(self, service_id: str) -> None:
        port = self.ports[f"admin-{service_id}"]
        self.admin[service_id] = port
        with open(f"{self.agent.log_path}.envoy-{service_id}", "ab") as log:
            self.by_id[service_id] = subprocess.Popen(
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
            self.envoys.append(self.by_id[service_id])

    def restart_sidecar(self, service_id: str) -> None:
        """Stop that Envoy and start a new one on the same admin port: its counters restart."""
        old = self.by_id[service_id]
        _stop(old)
        self.envoys.remove(old)
        self.sidecar(service_id)

    def admin_get(self, service_id: str, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin[service_id]}{path}"
        with urllib.request.urlopen(url, timeout=3) as r:
            return str(r.read().decode())

    def call(self, upstream: str, path: str = "/") -> int:
        """One request from web's app through its sidecar; the status (0: no answer)."""
        try:
            url = f"http://127.0.0.1:{self.ports[upstream]}{path}"
            with urllib.request.urlopen(url, timeout=3) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0

    def close(self) -> None:
        for p in self.envoys:
            _stop(p)
        self.apps.close()


def _stop(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


class Traffic:
    """web -> api at RATE requests/s on an absolute schedule, and a db connection per 4."""

    def __init__(self, mesh: TelemetryMesh) -> None:
        self.mesh = mesh
        self.stop = threading.Event()
        self.sent = 0
        self.late = 0  # ticks the sender could not keep (the machine too busy for the rate)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.mesh.call("up-api")
            if self.sent % 4 == 0:
                self.mesh.call("up-db")
            self.sent += 1
            delay = start + self.sent / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.late += 1


def start_mesh(
    *agent_args: str, env: dict[str, str] | None = None, agent: MeshdProcess | None = None
) -> TelemetryMesh:
    """The services and sidecars on `agent` (default: a new `-dev` agent)."""
    agent = agent or dev_agent(*agent_args, env=env).start()
    m = TelemetryMesh(agent)
    names = ("api", "db", "web", "up-api", "up-db", "pub-api", "pub-db", "pub-web")
    names += (*(f"admin-{s}" for s in ("api", "db", "web")), "prom-web")
    m.ports = dict(zip(names, free_ports(len(names)), strict=True))
    p = m.ports
    assert agent.put(
        "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
    ).json()
    for svc in ("api", "db"):
        m.apps.serve(p[svc], m._app(svc))
        r = agent.put(
            "/v1/agent/service/register",
            {
                "Name": svc,
                "ID": svc,
                "Port": p[svc],
                "Connect": {"SidecarService": {"Port": p[f"pub-{svc}"]}},
            },
        )
        assert r.status == 200, r.body
    m.apps.serve(p["web"], m._app("web"))
    ups = [
        {"DestinationName": "api", "LocalBindPort": p["up-api"]},
        {"DestinationName": "db", "LocalBindPort": p["up-db"]},
    ]
    r = agent.put(
        "/v1/agent/service/register",
        {
            "Name": "web",
            "ID": "web",
            "Port": p["web"],
            "Connect": {
                "SidecarService": {
                    "Port": p["pub-web"],
                    "Proxy": {
                        "Upstreams": ups,
                        "Config": {"envoy_prometheus_bind_addr": f"127.0.0.1:{p['prom-web']}"},
                    },
                }
            },
        },
    )
    assert r.status == 200, r.body
    for sid in ("api", "db", "web"):
        m.sidecar(sid)
    wait_for(lambda: m.call("up-api") == 200 and m.call("up-db") == 200, 30)
    return m


def capture() -> None:
    """Traffic of each kind, then each sidecar's stats as Envoy's admin endpoint gives them."""
    m = start_mesh()
    try:
        FIXTURES.mkdir(parents=True, exist_ok=True)

        def snap(tag: str) -> None:
            time.sleep(5.5)  # Envoy publishes histograms at its stats flush (every 5 s)
            for sid in ("api", "db", "web"):
                body = json.loads(m.admin_get(sid, STATS_PATH))
                (FIXTURES / f"{sid}-{tag}.json").write_text(json.dumps(body, indent=0))

        for _ in range(20):
            m.call("up-api")
            m.call("up-db")
        snap("t0")
        m.api_status = 503
        for _ in range(10):
            m.call("up-api", "/x")
        m.api_status = 200
        for _ in range(30):
            m.call("up-api", "/y")
            m.call("up-db")
        snap("t1")
        # a deny intention: the api sidecar refuses web (RBAC), web sees 403s
        m.agent.put("/v1/connect/intentions/exact?source=web&destination=api", {"Action": "deny"})
        wait_for(lambda: m.call("up-api") == 403, 30)
        for _ in range(5):
            m.call("up-api")
        snap("t2")
    finally:
        m.close()
        m.agent.stop()


if __name__ == "__main__":
    capture()
