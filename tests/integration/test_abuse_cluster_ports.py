"""Unauthenticated peers on a server's own ports cannot make it buffer what they announce."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import MeshdProcess, dev_agent, free_port


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshdProcess, int, int]]:
    tmp = tmp_path_factory.mktemp("srv")
    raft_port, rpc_port = free_port(), free_port()
    conf = Path(tmp) / "ports.json"
    conf.write_text(json.dumps({"ports": {"raft": raft_port, "server": rpc_port}}))
    a = dev_agent()
    a.args = [
        "-server",
        "-bootstrap-expect=1",
        f"-data-dir={tmp}/data",
        "-node=target",
        f"-config-file={conf}",
        f"-encrypt={base64.b64encode(os.urandom(32)).decode()}",
    ]
    a.start()
    yield a, raft_port, rpc_port
    a.stop()


def _flood(port: int, prefix: bytes, total: int) -> None:
    """Announce a frame, then send `total` bytes of it; the server may hang up at any point."""
    chunk = os.urandom(1 << 16)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(prefix)
            sent = 0
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return


@pytest.mark.timeout(120)
def test_a_huge_raft_length_prefix_is_dropped_before_it_is_buffered(
    server: tuple[MeshdProcess, int, int],
) -> None:
    agent, raft_port, _ = server
    assert agent.proc is not None
    before = _rss_kib(agent.proc.pid)
    for _ in range(3):
        _flood(raft_port, struct.pack("i", 2**31 - 1), 48 << 20)
    time.sleep(1)  # let the Raft thread drain whatever the kernel had queued
    assert _rss_kib(agent.proc.pid) - before < 20 * 1024
    assert agent.put("/v1/kv/raft-after-flood", b"ok").status == 200
    assert agent.get("/v1/status/leader").json()
    assert "unauthenticated frame" in agent.read_log()


def _rpc_reply(port: int, head: bytes) -> bytes:
    """Send only a request head announcing a 2 GiB body: the answer must come without it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        return s.recv(4096)


PLAUSIBLE = b"plausible"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (b"", b"403"),  # no header: nothing is read
        (PLAUSIBLE, b"413"),  # plausible header: length checked
    ],
)
def test_an_rpc_body_is_refused_before_it_is_read(
    server: tuple[MeshdProcess, int, int], auth: bytes, status: bytes
) -> None:
    agent, _, rpc_port = server
    if auth == PLAUSIBLE:  # fresh when sent: the suite may reach this test minutes after collection
        auth = f"{int(time.time())}:{'0' * 32}:{'0' * 64}".encode()
    head = (
        b"POST /rpc/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
        b"Content-Length: 2147483648\r\n"
        + (b"X-Meshd-Auth: " + auth + b"\r\n" if auth else b"")
        + b"\r\n"
    )
    reply = _rpc_reply(rpc_port, head)
    assert reply.split(b"\r\n", 1)[0].split(b" ")[1] == status
    assert agent.put("/v1/kv/rpc-after-flood", b"ok").status == 200
