"""Connection-level abuse of the HTTP API against a real agent: slowloris, huge snapshots, junk.

The agent here runs with a short header-read timeout and a small snapshot limit (config file),
so the tests show the limits acting without waiting for the defaults.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
from helpers import MeshdProcess, dev_agent, wait_for

SNAPSHOT_LIMIT = 8 << 20


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    conf = tmp_path_factory.mktemp("conf") / "limits.json"
    limits = {"http_read_header_timeout": "2s", "http_max_snapshot_bytes": SNAPSHOT_LIMIT}
    conf.write_text(json.dumps({"limits": limits}))
    agent = dev_agent(f"-config-file={conf}").start()
    yield agent
    agent.stop()


def _raw(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _closed_by_peer(sock: socket.socket) -> bool:
    """The server ended the connection (after any reply it sent), within the socket timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.timeout(120)
def test_idle_connections_from_one_client_do_not_lock_out_others(limited: MeshdProcess) -> None:
    """300 half-open sockets from 127.0.0.1: over the per-client cap (200) the rest get a 429;
    a client on 127.0.0.2 is served meanwhile, and the idle ones are closed after the timeout."""
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", limited.http_port), timeout=10)
            s.sendall(b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n")  # never finishes headers
            idle.append(s)

        def refused() -> bool:
            reply = _raw(limited.http_port, b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
            return reply.startswith(b"HTTP/1.1 429")

        assert wait_for(refused, timeout=30)  # once the server has accepted the first 200
        reply = _raw(
            limited.http_port,
            b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            source="127.0.0.2",
        )
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        for s in idle:
            s.settimeout(15)
        assert wait_for(lambda: all(_closed_by_peer(s) for s in idle), timeout=30)
        served = _raw(limited.http_port, b"GET /v1/status/leader HTTP/1.0\r\n\r\n")
        assert served.startswith(b"HTTP/1.0 200")
    finally:
        for s in idle:
            s.close()


def test_http09_request_lines_are_refused(limited: MeshdProcess) -> None:
    for line in (b"GET /v1/agent/self\r\n\r\n", b"GET /v1/agent/self HTTP/0.9\r\n\r\n"):
        reply = _raw(limited.http_port, line)
        assert b" 200 " not in reply.split(b"\r\n", 1)[0]
        assert b"NodeName" not in reply


def test_malformed_requests_get_400_and_no_traceback_in_the_log(limited: MeshdProcess) -> None:
    for junk in (b"\x16\x03\x01\x00\xa5junk\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
        assert _raw(limited.http_port, junk).startswith(b"HTTP/1.")
    assert limited.get("/v1/status/leader").status == 200
    assert "Traceback" not in limited.read_log()


@pytest.mark.timeout(120)
def test_a_snapshot_over_the_limit_is_413_and_is_never_held_in_memory(
    limited: MeshdProcess,
) -> None:
    assert limited.proc is not None
    before = _rss_kib(limited.proc.pid)
    body = b"\x87" + os.urandom(1 << 20) * (5 * SNAPSHOT_LIMIT >> 20)  # looks like a map, 40 MiB
    r = limited.put("/v1/snapshot", body, timeout=60)
    assert r.status == 413
    assert b"http_max_snapshot_bytes" in r.body
    assert _rss_kib(limited.proc.pid) - before < 20 * 1024
    assert limited.put("/v1/kv/after-snapshot", b"ok").status == 200


def test_a_body_that_is_not_a_snapshot_is_refused_at_once(limited: MeshdProcess) -> None:
    r = limited.put("/v1/snapshot", b"junk" * 1000)
    assert r.status == 400
    assert b"not a meshd snapshot" in r.body


def test_a_real_snapshot_still_restores(limited: MeshdProcess) -> None:
    assert limited.put("/v1/kv/snap-key", b"before").status == 200
    snap = limited.get("/v1/snapshot").body
    assert limited.put("/v1/kv/snap-key", b"after").status == 200
    assert limited.put("/v1/snapshot", snap).status == 200
    assert wait_for(lambda: limited.get("/v1/kv/snap-key?raw").body == b"before")
