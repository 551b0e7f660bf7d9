"""Proves the namespace harness itself, without meshd, so multi-host failures can be trusted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import OWNER_DIR, Host, Network, cleanup_stale

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces, veths and iptables need root"
)

PORT = 7007
ECHO_SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
def serve(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
# Connect and answer each get ~1 s, so a cut link or a paused peer shows up as a quick failure.
ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
    c.sendall(b"ping"); assert c.recv(4) == b"ping"
"""

Factory = Callable[..., Network]


def echo_ok(src: Host | None, dst: str) -> bool:
    """src=None probes from the test process itself (root namespace, via the bridge)."""
    cmd = [sys.executable, "-c", ECHO_CLIENT, dst, str(PORT)]
    if src is None:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    return src.run(*cmd, timeout=10).returncode == 0


def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def start_echo(host: Host, tmp_path: Path) -> subprocess.Popen[bytes]:
    proc = host.popen(
        [sys.executable, "-u", "-c", ECHO_SERVER, str(PORT)],
        str(tmp_path / f"echo-{host.name}.log"),
    )
    assert eventually(lambda: echo_ok(host, "127.0.0.1")), "echo server did not come up"
    return proc


def test_names_addresses_and_isolation(network_factory: Factory) -> None:
    net = network_factory(3)
    assert [h.addr.rsplit(".", 1)[1] for h in net.hosts] == ["10", "11", "12"]
    assert all(len(h.veth) <= 15 for h in net.hosts) and len(net.bridge) <= 15
    routes = net.hosts[0].run("ip", "-4", "route", "show", check=True).stdout
    assert "default" not in routes, "namespaces must never get a way out"


def test_reachability_partition_heal(network_factory: Factory, tmp_path: Path) -> None:
    net = network_factory(3)
    a, b, c = net.hosts
    start_echo(a, tmp_path)
    start_echo(c, tmp_path)
    assert echo_ok(b, a.addr) and echo_ok(c, a.addr) and echo_ok(None, a.addr)

    net.partition([a], [b, c])
    assert not echo_ok(b, a.addr)
    assert not echo_ok(c, a.addr)
    assert echo_ok(b, c.addr), "hosts on the same side must still talk"

    net.heal()
    assert eventually(lambda: echo_ok(b, a.addr)) and echo_ok(c, a.addr)
    assert a.run("iptables", "-w", "-S", check=True).stdout.count("DROP") == 0


def test_link_down_cuts_host(network_factory: Factory, tmp_path: Path) -> None:
    net = network_factory(2)
    a, b = net.hosts
    start_echo(a, tmp_path)
    a.link_down()
    assert not echo_ok(b, a.addr)
    assert echo_ok(a, "127.0.0.1"), "a cut link must not look like a dead process"
    a.link_up()
    assert eventually(lambda: echo_ok(b, a.addr))


def test_pause_and_resume(network_factory: Factory, tmp_path: Path) -> None:
    net = network_factory(2)
    a, b = net.hosts
    server = start_echo(a, tmp_path)
    a.pause(server)
    assert not echo_ok(b, a.addr)
    a.resume(server)
    assert eventually(lambda: echo_ok(b, a.addr))
    a.kill(server)
    assert server.wait(5) is not None


def test_close_leaves_nothing(network_factory: Factory, tmp_path: Path) -> None:
    net = network_factory(3)
    procs = [start_echo(h, tmp_path) for h in net.hosts]
    names = [h.ns for h in net.hosts]
    links = [h.veth for h in net.hosts] + [net.bridge]
    net.close()
    net.close()  # idempotent; the fixture closes it a third time
    assert all(p.poll() is not None for p in procs)
    ns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    link_list = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [n for n in names if n in ns_list]
    assert not [n for n in links if f" {n}:" in link_list or f" {n}@" in link_list]


def test_cleanup_stale_spares_live_networks(network_factory: Factory, tmp_path: Path) -> None:
    dead, live = network_factory(1, prefix="mhs"), network_factory(1, prefix="mhs")
    orphan = start_echo(dead.hosts[0], tmp_path)
    # Pretend the owning test run died: a start time that can never match.
    with open(os.path.join(OWNER_DIR, dead.suffix), "w") as f:
        f.write("1 never\n")
    cleanup_stale("mhs")
    ns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert dead.hosts[0].ns not in ns_list and live.hosts[0].ns in ns_list
    assert orphan.wait(5) is not None
    assert subprocess.run(["ip", "link", "show", dead.bridge], capture_output=True).returncode
    assert not subprocess.run(["ip", "link", "show", live.bridge]).returncode
    start_echo(live.hosts[0], tmp_path)
    assert echo_ok(None, live.hosts[0].addr), "the surviving network must still work"
