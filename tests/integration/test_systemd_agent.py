"""The agent under a service manager: sd_notify, signals, pid file and journald-fit logging,
through real `meshd agent` processes (issue 11, test 5)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    MeshdProcess,
    Response,
    client_agent,
    dev_agent,
    free_port,
    server_agent,
    server_cluster,
    start_all,
    wait_for,
)

RECV_BOUND = 30.0  # a bound on a hung agent, not a performance assertion


class NotifyListener:
    """What systemd does for Type=notify: a datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(RECV_BOUND)
        self.seen: list[dict[str, str]] = []

    def next_with(self, key: str) -> dict[str, str]:
        """Messages in arrival order until one carries `key`; all of them are kept in `seen`."""
        deadline = time.monotonic() + RECV_BOUND
        while time.monotonic() < deadline:
            data = self.sock.recv(4096).decode()
            msg = dict(line.split("=", 1) for line in data.splitlines())
            self.seen.append(msg)
            if key in msg:
                return msg
        raise AssertionError(f"no {key} within {RECV_BOUND}s; seen: {self.seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    yield listener
    listener.close()


def keys(messages: list[dict[str, str]]) -> list[str]:
    """The protocol's events in order, without STATUS/WATCHDOG chatter."""
    events = ("READY", "RELOADING", "STOPPING")
    return [k for m in messages for k in m if k in events]


def test_ready_reload_stopping_in_order(notify: NotifyListener, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.json").write_text(json.dumps({"service": {"name": "web", "port": 80}}))
    agent = dev_agent("-config-dir", str(conf), env={"NOTIFY_SOCKET": notify.address})
    agent.start()
    try:
        ready = notify.next_with("READY")
        assert ready["READY"] == "1" and "Running" in ready["STATUS"]
        # READY means the HTTP API answers and the cluster has a leader
        assert agent.get("/v1/status/leader").json()
        assert any("STATUS" in m and "READY" not in m for m in notify.seen)  # a status first
        (conf / "web.json").write_text(json.dumps({"service": {"name": "web", "port": 81}}))
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        reloading = notify.next_with("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        notify.next_with("READY")
        assert agent.get("/v1/agent/service/web").json()["Port"] == 81
        agent.proc.send_signal(signal.SIGTERM)
        notify.next_with("STOPPING")
        assert agent.proc.wait(RECV_BOUND) == 0
    finally:
        agent.stop()
    assert keys(notify.seen) == ["READY", "RELOADING", "READY", "STOPPING"]


def test_abstract_socket_and_watchdog() -> None:
    name = f"@meshd-test-{os.getpid()}-{free_port()}"
    notify = NotifyListener(name)
    agent = dev_agent(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"})
    try:
        agent.start()
        notify.next_with("READY")
        assert notify.next_with("WATCHDOG")["WATCHDOG"] == "1"
        notify.next_with("WATCHDOG")  # it keeps pinging while running
    finally:
        agent.stop()
        notify.close()


def test_watchdog_for_another_pid_is_ignored(notify: NotifyListener) -> None:
    """WATCHDOG_PID names the process systemd watches; a child of it must stay quiet."""
    agent = dev_agent(
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    )
    try:
        agent.start()
        notify.next_with("READY")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        notify.next_with("STOPPING")
    finally:
        agent.stop()
    assert not any("WATCHDOG" in m for m in notify.seen)


def test_pid_file_written_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "meshd.pid"
    pid_file.parent.mkdir()
    agent = dev_agent("-pid-file", str(pid_file)).start()
    try:
        assert agent.proc is not None
        assert pid_file.read_text().strip() == str(agent.proc.pid)
    finally:
        agent.stop()
    assert not pid_file.exists()


def test_unwritable_pid_file_refuses_to_start(tmp_path: Path) -> None:
    agent = dev_agent("-pid-file", str(tmp_path / "missing-dir" / "meshd.pid"))
    with pytest.raises(RuntimeError, match="cannot write pid_file"):
        agent.start(timeout=20)


# --- logging --------------------------------------------------------------------------------


def test_journald_stream_drops_timestamps_and_sets_priority() -> None:
    agent = dev_agent()
    st = os.stat(agent.log_path)  # the agent's stderr is this file: make it "the journal"
    agent.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    agent.start()
    agent.stop()
    lines = [ln for ln in agent.read_log().splitlines() if "meshd.agent:" in ln]
    assert lines and all(ln.startswith("<6>[INFO] meshd.agent: ") for ln in lines), lines


def test_journal_stream_of_another_file_keeps_timestamps() -> None:
    """JOURNAL_STREAM inherited by a process whose stderr was redirected elsewhere."""
    agent = dev_agent(env={"JOURNAL_STREAM": "1:1"}).start()
    agent.stop()
    lines = [ln for ln in agent.read_log().splitlines() if "meshd.agent:" in ln]
    assert lines and all(ln[:4].isdigit() and " [INFO] " in ln for ln in lines), lines


def test_log_json_and_log_file(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    agent = dev_agent("-log-json", "-log-file", f"{log_dir}/").start()
    agent.stop()
    records = [json.loads(ln) for ln in (log_dir / "meshd.log").read_text().splitlines()]
    assert records
    assert {"@timestamp", "@level", "@module", "@message"} <= set(records[0])
    assert any(r["@module"] == "meshd.agent" and r["@level"] == "info" for r in records)
    console = [ln for ln in agent.read_log().splitlines() if ln.startswith("{")]
    assert console and all(json.loads(ln)["@message"] for ln in console)


def test_no_secrets_in_logs(tmp_path: Path) -> None:
    key = "c2VjcmV0LWtleS1mb3ItdGhlLWNsdXN0ZXIhISEhISE="  # 32 bytes
    token = "3f1c1a77-4b0e-4a4e-9a1c-5f2b8d5e9c11"
    conf = tmp_path / "agent.json"
    conf.write_text(
        json.dumps(
            {
                "encrypt": key,
                "log_level": "trace",
                "service": {"name": "secretive", "port": 1, "token": token},
            }
        )
    )
    log_file = tmp_path / "meshd.log"
    agent = dev_agent("-config-file", str(conf), "-log-file", str(log_file)).start()
    try:
        assert agent.get("/v1/agent/service/secretive").status == 200
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)  # a reload logs what changed: still no secrets
        wait_for(lambda: "reload:" in log_file.read_text())
    finally:
        agent.stop()
    for text in (agent.read_log(), log_file.read_text()):
        assert "DEBUG" in text or "debug" in text  # the most verbose level was on
        assert key not in text and token not in text


# --- leave on SIGTERM / SIGINT ------------------------------------------------------------------


def _server(tmp: str) -> MeshdProcess:
    return server_agent(tmp)


def _client(server: MeshdProcess, name: str, *extra: str) -> MeshdProcess:
    return client_agent(server, name, *extra)


def _status(server: MeshdProcess, node: str) -> int:
    members = server.get("/v1/agent/members").json()
    return next(m["Status"] for m in members if m["Name"] == node)


LEFT = 3


@pytest.fixture(scope="module")
def server() -> Iterator[MeshdProcess]:
    with tempfile.TemporaryDirectory() as tmp:
        s = _server(tmp).start()
        yield s
        s.stop()


def test_client_leaves_on_sigterm(server: MeshdProcess) -> None:
    client = _client(server, "c-term").start()
    assert _status(server, "c-term") == 1
    client.stop()  # SIGTERM
    assert _status(server, "c-term") == LEFT


def test_client_leaves_on_sigint_unless_skipped(server: MeshdProcess, tmp_path: Path) -> None:
    client = _client(server, "c-int").start()
    assert client.proc is not None
    client.proc.send_signal(signal.SIGINT)
    assert client.proc.wait(RECV_BOUND) == 0
    assert _status(server, "c-int") == LEFT

    conf = tmp_path / "skip.json"
    conf.write_text(json.dumps({"skip_leave_on_interrupt": True}))
    stays = _client(server, "c-stay", "-config-file", str(conf)).start()
    assert stays.proc is not None
    stays.proc.send_signal(signal.SIGINT)
    assert stays.proc.wait(RECV_BOUND) == 0
    assert _status(server, "c-stay") != LEFT
    assert "leaving the cluster" not in stays.read_log()


def test_client_stays_on_sigterm_without_leave_on_terminate(
    server: MeshdProcess, tmp_path: Path
) -> None:
    conf = tmp_path / "stay.json"
    conf.write_text(json.dumps({"leave_on_terminate": False}))
    client = _client(server, "c-noleave", "-config-file", str(conf)).start()
    client.stop()
    assert _status(server, "c-noleave") != LEFT


def test_server_does_not_leave_on_sigterm_by_default() -> None:
    agent = dev_agent().start()
    agent.stop()
    assert "shutting down" in agent.read_log()
    assert "leaving the cluster" not in agent.read_log()


# --- stopping a server that client agents use -------------------------------------------------


def _blocking_get(agent: MeshdProcess, key: str) -> list[Response]:
    """A user's blocking query on `key` through `agent`, left waiting in a thread; its answer
    is appended to the list returned."""
    index = int(agent.get(f"/v1/kv/{key}").headers["X-Consul-Index"])
    answers: list[Response] = []

    def get() -> None:
        with contextlib.suppress(OSError):
            answers.append(agent.get(f"/v1/kv/{key}?index={index}&wait=120s", timeout=130))

    threading.Thread(target=get, daemon=True).start()
    return answers


def test_server_with_a_connected_client_exits_on_sigterm(tmp_path: Path) -> None:
    """Client agents keep blocking queries open on their server; systemd's stop (SIGTERM, then
    SIGKILL after TimeoutStopSec) must not have to kill the server because of them."""
    server = server_agent(str(tmp_path)).start()
    client = client_agent(server, "c-watching").start()
    try:
        assert client.put("/v1/kv/watched", b"v0").json() is True
        _blocking_get(client, "watched")
        _blocking_get(server, "watched")
        time.sleep(0.5)  # both long polls reach the server
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=15) == 0
        assert "shutting down" in server.read_log()
    finally:
        client.stop()
        server.stop()


def test_follower_stops_and_the_clients_blocking_query_moves_on() -> None:
    """A follower forwards a client's blocking query to the leader; on SIGTERM it exits
    without waiting for it, and the client agent's query goes on against another server."""
    key = base64.b64encode(os.urandom(32)).decode()
    with tempfile.TemporaryDirectory() as tmp:
        servers = server_cluster(tmp, config={"encrypt": key})
        client: MeshdProcess | None = None
        try:
            start_all(servers)
            first = servers[0]  # the client's server: it joins through this one
            if first.get("/v1/status/leader").json().endswith(f":{first.rpc_port}"):  # type: ignore[attr-defined]
                assert first.put("/v1/operator/raft/transfer-leader").status == 200
            client = client_agent(first, "c-moving", f"-encrypt={key}").start()
            assert client.put("/v1/kv/moving", b"v0").json() is True
            answers = _blocking_get(client, "moving")
            time.sleep(0.5)
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=15) == 0
            assert answers == []  # still waiting, now on another server
            assert servers[1].put("/v1/kv/moving", b"v1").json() is True
            assert wait_for(lambda: answers, 15)
            assert answers[0].status == 200 and answers[0].json()[0]["Value"] == "djE="
        finally:
            for p in [*([client] if client else []), *servers]:
                p.stop()
