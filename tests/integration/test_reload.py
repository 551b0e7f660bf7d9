"""Live reload through real agents: SIGHUP and `meshd reload` apply config-file changes without a
restart (same PID), leave API-registered services alone, refuse a bad config with its reason and
change nothing, and rotate TLS certificates for new connections."""

from __future__ import annotations

import json
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
from cryptography import x509
from helpers import MeshdProcess, dev_agent, free_port, run_meshd, wait_for

from meshd.tlsgen import create_ca, create_cert


def write(path: Path, content: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content if isinstance(content, str) else json.dumps(content))
    tmp.rename(path)  # as a config-management tool does: readers never see half a file


def services(agent: MeshdProcess) -> dict[str, Any]:
    return agent.get("/v1/agent/services").json()


def reload_cli(agent: MeshdProcess) -> Any:
    return run_meshd("reload", http_addr=agent.http)


WEB = {"name": "web", "port": 80, "check": {"ttl": "30s"}}
DB = {"name": "db", "port": 5432}


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    d = tmp_path / "meshd.d"
    d.mkdir()
    write(d / "web.json", {"service": WEB})
    write(d / "db.json", {"service": DB})
    write(d / "agent.json", {"log_level": "info"})
    return d


@pytest.fixture
def agent(conf: Path) -> Iterator[MeshdProcess]:
    a = dev_agent("-config-dir", str(conf)).start()
    yield a
    a.stop()


def test_sighup_applies_definitions_without_restart(agent: MeshdProcess, conf: Path) -> None:
    assert agent.proc is not None
    pid = agent.proc.pid
    api = {"Name": "from-api", "Port": 9000}
    assert agent.put("/v1/agent/service/register", api).status == 200
    assert set(services(agent)) == {"web", "db", "from-api"}

    write(conf / "web.json", {"service": {**WEB, "port": 8080, "tags": ["v2"]}})
    (conf / "db.json").unlink()
    write(conf / "cache.json", {"service": {"name": "cache", "port": 6379}})
    agent.proc.send_signal(signal.SIGHUP)

    now = wait_for(lambda: (s := services(agent)) and "cache" in s and s)
    assert set(now) == {"web", "cache", "from-api"}  # db removed, the API's service kept
    assert (now["web"]["Port"], now["web"]["Tags"]) == (8080, ["v2"])
    assert "service:web" in agent.get("/v1/agent/checks").json()
    catalog = agent.get("/v1/catalog/service/web").json()
    assert [s["ServicePort"] for s in catalog] == [8080]
    assert agent.get("/v1/catalog/service/db").json() == []
    assert agent.proc.pid == pid and agent.proc.poll() is None


def test_reload_restores_a_file_service_removed_over_the_api(agent: MeshdProcess) -> None:
    assert agent.put("/v1/agent/service/deregister/db").status == 200
    assert "db" not in services(agent)
    assert agent.put("/v1/agent/reload").status == 200
    assert services(agent)["db"]["Port"] == 5432  # the config files are the truth, as in Consul


def test_removing_a_definition_already_gone(agent: MeshdProcess, conf: Path) -> None:
    assert agent.put("/v1/agent/service/deregister/db").status == 200
    (conf / "db.json").unlink()
    r = agent.put("/v1/agent/reload")
    assert r.status == 200, r.body
    assert set(services(agent)) == {"web"}


def test_meshd_reload_command(agent: MeshdProcess, conf: Path) -> None:
    write(
        conf / "checks.json",
        {"check": {"id": "disk", "name": "disk", "ttl": "1m"}, "log_level": "debug"},
    )
    r = reload_cli(agent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Configuration reload triggered"
    assert "disk" in agent.get("/v1/agent/checks").json()

    (conf / "checks.json").unlink()
    r = agent.put("/v1/agent/reload")
    assert r.status == 200
    assert {"checks", "log_level"} <= set(r.json()["Applied"])
    assert "disk" not in agent.get("/v1/agent/checks").json()


def test_bad_config_is_refused_and_changes_nothing(agent: MeshdProcess, conf: Path) -> None:
    before = services(agent)
    write(conf / "web.json", {"service": {**WEB, "port": 81}})
    write(conf / "broken.json", {"service": {"name": "bad", "check": {"http": "http://x/"}}})
    r = reload_cli(agent)
    assert r.returncode == 1
    assert "broken.json" in r.stderr and "Interval is required" in r.stderr
    assert services(agent) == before  # not even the valid change to web.json

    write(conf / "broken.json", "{not json")
    r = agent.put("/v1/agent/reload")
    assert r.status == 500 and b"broken.json: invalid JSON" in r.body
    assert services(agent) == before

    (conf / "broken.json").unlink()
    assert agent.put("/v1/agent/reload").status == 200
    assert services(agent)["web"]["Port"] == 81


def test_fixed_keys_are_reported_and_ignored(agent: MeshdProcess, conf: Path) -> None:
    write(conf / "agent.json", {"datacenter": "elsewhere", "node_name": "renamed"})
    r = agent.put("/v1/agent/reload")
    assert r.status == 200
    assert set(r.json()["Ignored"]) == {"datacenter", "node_name"}
    cfg = agent.get("/v1/agent/self").json()["Config"]
    assert cfg["Datacenter"] == "dc1" and cfg["NodeName"] != "renamed"
    r = reload_cli(agent)
    assert r.returncode == 0 and "need a restart" in r.stderr and "datacenter" in r.stderr


def test_dns_settings_reload(agent: MeshdProcess, conf: Path) -> None:
    def ttl() -> int:
        q = dns.message.make_query("db.service.consul", "A")  # db has no check: passing
        answer = dns.query.udp(q, "127.0.0.1", port=agent.dns_port, timeout=5).answer
        return answer[0].ttl

    assert ttl() == 0
    write(conf / "agent.json", {"dns_config": {"service_ttl": {"*": "45s"}}})
    assert agent.put("/v1/agent/reload").status == 200
    assert ttl() == 45


# --- certificate rotation -------------------------------------------------------------------


def _pem_files(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> None:
    write(directory / f"{name}.pem", cert_pem.decode())
    write(directory / f"{name}-key.pem", key_pem.decode())


def _served_serial(port: int, pki: Path) -> int:
    """A new TLS connection to the server's RPC port, as a verified client agent."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client-key.pem"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="server.dc1.consul") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificate_rotation_without_restart(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = create_ca()
    write(pki / "ca.pem", ca.cert_pem.decode())
    issue = lambda kind: create_cert(ca.cert_pem, ca.key_pem, kind=kind)  # noqa: E731
    _pem_files(pki, "server", *vars(issue("server")).values())
    _pem_files(pki, "client", *vars(issue("client")).values())
    rpc = free_port()
    conf = tmp_path / "server.json"
    write(
        conf,
        {
            "server": True,
            "bootstrap": True,
            "data_dir": str(tmp_path / "data"),
            "ports": {"server": rpc, "raft": free_port()},
            "tls": {
                "defaults": {
                    "ca_file": str(pki / "ca.pem"),
                    "cert_file": str(pki / "server.pem"),
                    "key_file": str(pki / "server-key.pem"),
                    "verify_incoming": True,
                    "verify_outgoing": True,
                },
                "internal_rpc": {"verify_server_hostname": True},
            },
        },
    )
    server = dev_agent("-config-file", str(conf))
    server.args.remove("-dev")
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        first = _served_serial(rpc, pki)
        rotated = issue("server")
        _pem_files(pki, "server", rotated.cert_pem, rotated.key_pem)
        r = server.put("/v1/agent/reload")
        assert r.status == 200 and "tls" in r.json()["Applied"]
        second = _served_serial(rpc, pki)
        assert second != first
        assert second == x509.load_pem_x509_certificate(rotated.cert_pem).serial_number

        (pki / "server-key.pem").write_text("not a key")  # a broken rotation
        r = server.put("/v1/agent/reload")
        assert r.status == 500 and b"tls: cannot load" in r.body
        assert _served_serial(rpc, pki) == second  # still the last good certificate
        assert server.proc.pid == pid and server.proc.poll() is None
    finally:
        server.stop()
