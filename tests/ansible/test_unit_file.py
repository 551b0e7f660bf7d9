"""The shipped systemd unit: systemd accepts it, scores it "OK" or better, and meshd still works
under the restrictions it imposes (system call filter, address families, W^X memory)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
from helpers import free_port, http_request, wait_for

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "dist" / "systemd" / "meshd.service"
SANDBOX = Path(__file__).with_name("unit_sandbox.py")
DEBIAN_PYTHON = "/usr/bin/python3"  # has python3-seccomp (scripts/test installs it)


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` also checks that ExecStart exists, so give it the unit's
    /opt/meshd/venv/bin/meshd (this checkout's meshd) in a private mount namespace, leaving the
    machine's own /opt alone."""
    meshd = Path(sys.executable).with_name("meshd")
    script = (
        "mount --make-rprivate / && mount -t tmpfs meshd-opt /opt && "
        f"mkdir -p /opt/meshd/venv/bin && ln -s {meshd} /opt/meshd/venv/bin/meshd && "
        f'exec systemd-analyze verify "{unit}"'
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )


def render_role_unit(dest: Path, **extra_vars: object) -> str:
    """The role's template rendered by Ansible itself, with the role's defaults."""
    role = REPO / "ansible" / "roles" / "meshd"
    cmd = ["ansible", "localhost", "-i", "localhost,", "-c", "local"]
    cmd += ["-e", f"ansible_python_interpreter={sys.executable}"]
    cmd += ["-e", f"@{role / 'defaults' / 'main.yml'}", "-e", json.dumps(extra_vars)]
    cmd += ["-m", "ansible.builtin.template"]
    cmd += ["-a", f"src={role / 'templates' / 'meshd.service.j2'} dest={dest}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return dest.read_text()


def test_shipped_unit_verifies() -> None:
    r = verify(UNIT)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_role_renders_the_shipped_unit(tmp_path: Path) -> None:
    assert render_role_unit(tmp_path / "meshd.service") == UNIT.read_text()


def test_role_unit_for_dns_on_port_53(tmp_path: Path) -> None:
    """Port 53 needs CAP_NET_BIND_SERVICE (and no user namespace); other ports get no capability."""
    unit = tmp_path / "meshd.service"
    text = render_role_unit(unit, meshd_ports={"dns": 53, "http": 8500})
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text.splitlines()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text.splitlines()
    assert "PrivateUsers=yes" not in text
    assert "CapabilityBoundingSet=" in UNIT.read_text().splitlines()
    r = verify(unit)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: a unit with a misspelt setting must not pass."""
    broken = tmp_path / "meshd.service"
    broken.write_text(UNIT.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    r = verify(broken)
    assert "ProtectHom" in r.stdout + r.stderr


def test_exposure_is_ok_or_better() -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for meshd.service: ([\d.]+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert m.group(2) in ("SAFE", "OK"), m.group(0)


def sandboxed_agent(unit: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, dns_port = free_port(), free_port()
    cmd = [DEBIAN_PYTHON, str(SANDBOX), str(unit), "--", sys.executable, "-m", "meshd"]
    cmd += ["agent", "-dev", f"-http-port={http}", f"-dns-port={dns_port}", "-grpc-port=-1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return proc, http, dns_port


def leader_or_exit(proc: subprocess.Popen[bytes], http: int) -> str:
    """The agent's leader, or "exited" once it died: the caller waits for either."""
    if proc.poll() is not None:
        return "exited"
    try:
        r = http_request(f"http://127.0.0.1:{http}/v1/status/leader", timeout=2)
    except OSError:
        return ""
    return "leader" if r.status == 200 and r.json() else ""


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(90)
def test_meshd_serves_under_the_unit_restrictions(tmp_path: Path) -> None:
    proc, http, dns_port = sandboxed_agent(UNIT, tmp_path / "agent.log")
    try:
        state = wait_for(lambda: leader_or_exit(proc, http), timeout=40, interval=0.2)
        assert state == "leader", (tmp_path / "agent.log").read_text()
        r = http_request(
            f"http://127.0.0.1:{http}/v1/agent/service/register",
            "PUT",
            {"Name": "web", "Port": 8080, "Address": "127.0.0.9"},
        )
        assert r.status == 200
        res = dns.resolver.Resolver(configure=False)
        res.nameservers, res.port = ["127.0.0.1"], dns_port
        answers = wait_for(lambda: _resolve(res, "web.service.consul"), timeout=10)
        assert answers == ["127.0.0.9"]
    finally:
        stop(proc)


def _resolve(res: dns.resolver.Resolver, name: str) -> list[str]:
    try:
        return [a.to_text() for a in res.resolve(name, "A", lifetime=2)]
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.exception.Timeout):
        return []


@pytest.mark.timeout(90)
def test_the_sandbox_bites(tmp_path: Path) -> None:
    """Guards the test above: with only AF_UNIX sockets allowed, meshd cannot serve at all."""
    unit = tmp_path / "meshd.service"
    unit.write_text(
        UNIT.read_text().replace(
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "RestrictAddressFamilies=AF_UNIX",
        )
    )
    proc, http, _ = sandboxed_agent(unit, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            assert leader_or_exit(proc, http) != "leader"
            time.sleep(0.2)
        assert proc.poll() not in (None, 0), (tmp_path / "agent.log").read_text()
    finally:
        stop(proc)
