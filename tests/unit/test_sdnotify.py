"""The sd_notify protocol as systemd receives it: datagrams on a unix socket."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from meshd.agent.sdnotify import Notifier


def listener(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + address[1:] if address.startswith("@") else address)
    s.settimeout(5)
    return s


def lines(s: socket.socket) -> list[str]:
    return s.recv(4096).decode().splitlines()


def test_from_env_reads_and_unsets(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "3000000", "OTHER": "x"}
    n = Notifier.from_env(env)
    assert n.enabled and n.watchdog_usec == 3_000_000
    assert env == {"OTHER": "x"}  # children (script checks, Envoy) must not inherit them


@pytest.mark.parametrize(
    ("env", "watchdog"),
    [
        ({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "100", "WATCHDOG_PID": str(os.getpid())}, 100),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_env(env: dict[str, str], watchdog: int | None) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", **env}).watchdog_usec == watchdog


def test_no_socket_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    n.ready("x")
    n.stopping()
    n.close()
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_messages_on_a_path_and_an_abstract_socket(tmp_path: Path) -> None:
    for address in (str(tmp_path / "notify"), f"@meshd-unit-{os.getpid()}"):
        s = listener(address)
        n = Notifier(address)
        n.ready("Running")
        n.reloading()
        n.stopping()
        assert lines(s) == ["READY=1", "STATUS=Running"]
        reloading = lines(s)
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert int(reloading[1].split("=")[1]) > 0
        assert lines(s) == ["STOPPING=1", "STATUS=Shutting down"]
        n.close()
        s.close()


async def test_state_changes_survive_a_full_queue(tmp_path: Path) -> None:
    """A receiver that reads late: pings are dropped, READY and STOPPING arrive, in order."""
    address = str(tmp_path / "notify")
    s = listener(address)
    n = Notifier(address)
    for _ in range(200):  # far more than the kernel queues for an unread datagram socket
        n.send("WATCHDOG=1")
    n.ready("Running")
    n.stopping()
    got: list[str] = []
    s.setblocking(False)
    deadline = asyncio.get_running_loop().time() + 10  # a bound on a bug, not a timing check
    while "STOPPING=1" not in got and asyncio.get_running_loop().time() < deadline:
        try:
            got.extend(s.recv(4096).decode().splitlines())
        except BlockingIOError:
            await asyncio.sleep(0.01)  # let the notifier's retry run on this loop
    n.close()
    s.close()
    events = [ln for ln in got if ln in ("READY=1", "STOPPING=1")]
    assert events == ["READY=1", "STOPPING=1"]
