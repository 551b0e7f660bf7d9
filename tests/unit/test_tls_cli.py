"""`meshd tls ca|cert create`: Consul's file names, modes, SANs, and certificates that the agent's
own `tls` block (meshd.tls.tls_contexts) accepts or refuses as Consul would."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from cryptography import x509

from meshd.cli.main import cli
from meshd.config import TLSConfig
from meshd.tls import server_hostname, tls_contexts

SERVER_NAME = "server.dc1.consul"


def meshd(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["tls", *args])
    return r.exit_code, r.output


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    assert meshd("ca", "create")[0] == 0
    return tmp_path


def sans(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(i) for i in ext.get_values_for_type(x509.IPAddress)
    ]


def test_file_names_modes_and_indexes(pki: Path) -> None:
    code, out = meshd("cert", "create", "-server")
    assert code == 0 and "WARNING: Server Certificates" in out
    assert "==> Saved dc1-server-consul-0.pem" in out
    assert meshd("cert", "create", "-server")[0] == 0  # next index, nothing overwritten
    assert meshd("cert", "create", "-client", "-dc", "east")[0] == 0
    names = sorted(os.listdir(pki))
    assert names == [
        "consul-agent-ca-key.pem",
        "consul-agent-ca.pem",
        "dc1-server-consul-0-key.pem",
        "dc1-server-consul-0.pem",
        "dc1-server-consul-1-key.pem",
        "dc1-server-consul-1.pem",
        "east-client-consul-0-key.pem",
        "east-client-consul-0.pem",
    ]
    for name in names:
        mode = stat.S_IMODE(os.stat(pki / name).st_mode)
        if name.endswith("-key.pem"):
            assert mode == 0o600, name
        else:
            assert mode & 0o022 == 0, name  # certificates: public, but writable by no one else


def test_sans(pki: Path) -> None:
    meshd(
        "cert",
        "create",
        "-server",
        "-additional-dnsname",
        "meshd-1.example.org",
        "-additional-ipaddress",
        "10.1.2.3",
    )
    assert sans(pki / "dc1-server-consul-0.pem") == (
        [SERVER_NAME, "localhost", "meshd-1.example.org"],
        ["127.0.0.1", "10.1.2.3"],
    )
    assert meshd("cert", "create", "-client")[0] == 0
    assert sans(pki / "dc1-client-consul-0.pem") == (
        ["client.dc1.consul", "localhost"],
        ["127.0.0.1"],
    )


def test_other_domain_uses_its_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert meshd("ca", "create", "-domain", "mesh")[0] == 0
    assert (tmp_path / "mesh-agent-ca.pem").exists()
    code, _ = meshd("cert", "create", "-server", "-domain", "mesh")
    assert code == 0
    assert sans(tmp_path / "dc1-server-mesh-0.pem")[0][0] == "server.dc1.mesh"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_the_chain(pki: Path) -> None:
    meshd("cert", "create", "-server")
    meshd("cert", "create", "-client")
    r = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            "consul-agent-ca.pem",
            "-purpose",
            "sslserver",
            "dc1-server-consul-0.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and r.stdout.strip() == "dc1-server-consul-0.pem: OK", r.stderr
    r = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            "consul-agent-ca.pem",
            "-purpose",
            "sslclient",
            "dc1-client-consul-0.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["openssl", "x509", "-in", "dc1-server-consul-0.pem", "-noout", "-checkhost", SERVER_NAME],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "does match" in r.stdout


def test_refusals_change_nothing(pki: Path) -> None:
    before = sorted(os.listdir(pki))
    code, out = meshd("ca", "create")
    assert code == 1 and "consul-agent-ca.pem already exists" in out
    code, out = meshd("cert", "create")
    assert code == 1 and "exactly one of -server, -client or -cli" in out
    code, out = meshd("cert", "create", "-server", "-client")
    assert code == 1
    code, out = meshd("cert", "create", "-server", "-additional-ipaddress", "not-an-ip")
    assert code == 1 and "not-an-ip" in out
    code, out = meshd("cert", "create", "-client", "-ca", "missing.pem")
    assert code == 1 and "missing.pem" in out
    other = pki / "other"
    other.mkdir()
    os.chdir(other)
    meshd("ca", "create")
    os.chdir(pki)
    code, out = meshd("cert", "create", "-client", "-key", "other/consul-agent-ca-key.pem")
    assert code == 1 and "does not belong to the CA certificate" in out
    assert sorted(set(os.listdir(pki)) - {"other"}) == before


# --- the certificates work with the agent's `tls` block ---------------------------------------


def contexts(pki: Path, cert: str, **verify: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cfg = SimpleNamespace(
        tls=TLSConfig(
            ca_file=str(pki / "consul-agent-ca.pem"),
            cert_file=str(pki / f"{cert}.pem"),
            key_file=str(pki / f"{cert}-key.pem"),
            **verify,
        ),
        datacenter="dc1",
        domain="consul.",
    )
    server, client = tls_contexts(cfg)
    assert server is not None and client is not None
    assert server_hostname(cfg) == SERVER_NAME
    return server, client


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Exception | None:
    """One TLS handshake over a socket pair; the client's failure if any, else the server's."""
    a, b = socket.socketpair()
    errors: dict[str, Exception] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors["server"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=SERVER_NAME) as c:
            c.sendall(b"x")
            c.recv(1)  # a refused client certificate shows up here, after the handshake
    except (ssl.SSLError, OSError) as e:
        errors["client"] = e
    t.join(10)
    return errors.get("client") or errors.get("server")


VERIFY_ALL = {"verify_incoming": True, "verify_outgoing": True, "verify_server_hostname": True}


def test_server_and_client_certs_pass_full_verification(pki: Path) -> None:
    meshd("cert", "create", "-server")
    meshd("cert", "create", "-client")
    server_ctx, _ = contexts(pki, "dc1-server-consul-0", **VERIFY_ALL)
    _, client_ctx = contexts(pki, "dc1-client-consul-0", **VERIFY_ALL)
    assert handshake(server_ctx, client_ctx) is None


def test_client_cert_cannot_pose_as_server(pki: Path) -> None:
    meshd("cert", "create", "-client")
    meshd("cert", "create", "-client")
    posing_server, _ = contexts(pki, "dc1-client-consul-0", **VERIFY_ALL)
    _, client_ctx = contexts(pki, "dc1-client-consul-1", **VERIFY_ALL)
    err = handshake(posing_server, client_ctx)
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(err) or "hostname" in str(err).lower()


def test_cert_from_another_ca_is_refused(pki: Path) -> None:
    meshd("cert", "create", "-server")
    other = pki / "other"
    other.mkdir()
    os.chdir(other)
    meshd("ca", "create")
    meshd("cert", "create", "-client")
    os.chdir(pki)
    server_ctx, _ = contexts(pki, "dc1-server-consul-0", **VERIFY_ALL)
    _, stranger = contexts(other, "dc1-client-consul-0", **VERIFY_ALL)
    assert handshake(server_ctx, stranger) is not None
