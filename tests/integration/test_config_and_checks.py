"""An agent configured from files: services and checks of every kind, run by a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from helpers import BackgroundHTTP, MeshdProcess, dev_agent, free_port, wait_for

from meshd.testing import free_ports


@pytest.fixture(scope="module")
def probes():
    """A TCP listener, a UDP responder and a gRPC health server on loopback."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))

    def udp_echo():
        while True:
            try:
                data, addr = udp.recvfrom(512)
                udp.sendto(data, addr)
            except OSError:
                return

    threading.Thread(target=udp_echo, daemon=True).start()
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    hs = health.HealthServicer()
    hs.set("api", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    gport = server.add_insecure_port("127.0.0.1:0")
    server.start()
    closed_udp = free_port()
    yield {
        "tcp": tcp.getsockname()[1],
        "udp": udp.getsockname()[1],
        "grpc": gport,
        "grpc_health": hs,
        "closed_udp": closed_udp,
    }
    server.stop(0)
    tcp.close()
    udp.close()


@pytest.fixture(scope="module")
def configured(tmp_path_factory, probes):
    d = tmp_path_factory.mktemp("conf")
    (d / "a.json").write_text(
        json.dumps(
            {
                "enable_script_checks": True,
                "node_meta": {"rack": "r7"},
                "services": [
                    {
                        "name": "tcpsvc",
                        "port": probes["tcp"],
                        "check": {"tcp": f"127.0.0.1:{probes['tcp']}", "interval": "200ms"},
                    },
                    {
                        "name": "udpsvc",
                        "port": probes["udp"],
                        "check": {
                            "udp": f"127.0.0.1:{probes['udp']}",
                            "interval": "200ms",
                            "timeout": "300ms",
                        },
                    },
                    {
                        "name": "grpcsvc",
                        "port": probes["grpc"],
                        "check": {"grpc": f"127.0.0.1:{probes['grpc']}/api", "interval": "200ms"},
                    },
                ],
            }
        )
    )
    (d / "b.hcl").write_text(
        'service {\n  name = "scriptsvc"\n  port = 1\n  check {\n'
        '    args = ["sh", "-c", "exit 1"]\n    interval = "200ms"\n  }\n}\n'
        'service {\n  name = "aliassvc"\n  port = 2\n  check {\n'
        '    alias_service = "tcpsvc"\n  }\n}\n'
    )
    a = dev_agent(f"-config-dir={d}").start()
    yield a
    a.stop()


def status(agent: MeshdProcess, service: str) -> str:
    rows = agent.get(f"/v1/health/checks/{service}").json()
    return rows[0]["Status"] if rows else ""


def test_services_from_config_files_registered(configured):
    names = configured.get("/v1/catalog/services").json()
    for n in ("tcpsvc", "udpsvc", "grpcsvc", "scriptsvc", "aliassvc"):
        assert n in names
    node = configured.get("/v1/agent/self").json()["Config"]["NodeName"]
    assert configured.get(f"/v1/catalog/node/{node}").json()["Node"]["Meta"]["rack"] == "r7"


def test_tcp_udp_grpc_checks_pass(configured):
    for svc in ("tcpsvc", "udpsvc", "grpcsvc"):
        wait_for(lambda s=svc: status(configured, s) == "passing", 10)


def test_script_check_exit_1_is_warning(configured):
    wait_for(lambda: status(configured, "scriptsvc") == "warning", 10)


def test_alias_follows_its_target(configured):
    wait_for(lambda: status(configured, "aliassvc") == "passing", 10)


def test_grpc_not_serving_goes_critical(configured, probes):
    probes["grpc_health"].set("api", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        wait_for(lambda: status(configured, "grpcsvc") == "critical", 10)
    finally:
        probes["grpc_health"].set("api", health_pb2.HealthCheckResponse.SERVING)
    wait_for(lambda: status(configured, "grpcsvc") == "passing", 10)


def test_udp_port_unreachable_is_critical(configured, probes):
    r = configured.put(
        "/v1/agent/check/register",
        {
            "Name": "udp-closed",
            "UDP": f"127.0.0.1:{probes['closed_udp']}",
            "Interval": "200ms",
            "Timeout": "300ms",
        },
    )
    assert r.status == 200
    wait_for(
        lambda: configured.get("/v1/agent/checks").json()["udp-closed"]["Status"] == "critical", 10
    )


def test_script_checks_refused_without_enable(agent):
    r = agent.put("/v1/agent/check/register", {"Name": "s", "Args": ["true"], "Interval": "1s"})
    assert r.status == 400 and b"enable_script_checks" in r.body


def test_deregister_critical_service_after(agent):
    r = agent.put(
        "/v1/agent/service/register",
        {"Name": "zombie", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s"}},
    )
    assert r.status == 200
    assert agent.get("/v1/catalog/service/zombie").json()
    wait_for(lambda: agent.get("/v1/catalog/service/zombie").json() == [], 10)
    assert agent.get("/v1/agent/service/zombie").status == 404


def test_unknown_config_key_fails_start(tmp_path):
    (tmp_path / "bad.json").write_text('{"ports": {"htp": 1}}')
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "agent", "-dev", f"-config-file={tmp_path / 'bad.json'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "ports.htp" in r.stderr


def test_bad_flag_value_fails_start():
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "agent", "-dev", "-http-port=99999"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and "http" in r.stderr.lower()


def test_single_server_persists_across_restart(tmp_path):
    server_port, raft_port = free_ports(2)  # not Consul's defaults: other agents may hold them
    ports = tmp_path / "ports.json"
    ports.write_text(json.dumps({"ports": {"raft": raft_port}}))
    data = tmp_path / "data"
    args = [
        "-server",
        "-bootstrap-expect=1",
        f"-data-dir={data}",
        "-node=solo",
        f"-server-port={server_port}",
        f"-config-file={ports}",
    ]
    a = dev_agent()
    a.args = args
    a.start()
    try:
        assert a.put("/v1/kv/persist/me", b"still here").json() is True
        a.put("/v1/agent/service/register", {"Name": "durable", "Port": 5})
    finally:
        a.proc.kill()  # no graceful shutdown: the journal must already hold the writes
        a.proc.wait()
    time.sleep(0.5)
    a.start()
    try:
        assert a.get("/v1/kv/persist/me?raw").body == b"still here"
        assert a.get("/v1/catalog/service/durable").json()
    finally:
        a.stop()


def test_http_check_statuses(agent):
    from aiohttp import web

    codes = {"code": 200}
    port = free_port()

    async def handler(request):
        return web.Response(status=codes["code"], text="x")

    servers = BackgroundHTTP()
    servers.serve(port, handler)
    agent.put(
        "/v1/agent/service/register",
        {"Name": "httpstat", "Check": {"HTTP": f"http://127.0.0.1:{port}/", "Interval": "200ms"}},
    )
    wait_for(lambda: status(agent, "httpstat") == "passing", 10)
    codes["code"] = 429
    wait_for(lambda: status(agent, "httpstat") == "warning", 10)
    codes["code"] = 500
    wait_for(lambda: status(agent, "httpstat") == "critical", 10)
    servers.close()
