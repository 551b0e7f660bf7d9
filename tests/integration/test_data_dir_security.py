"""What a server leaves on disk is private, and a cluster never runs its Raft port without a key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from helpers import REPO, dev_agent


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def test_data_dir_and_everything_in_it_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"  # created by the agent
    a = dev_agent()
    a.args = ["-server", "-bootstrap-expect=1", f"-data-dir={data}", "-node=private"]
    a.start()
    try:
        assert a.put("/v1/kv/secret", b"value").status == 200
        assert a.put("/v1/agent/service/register", {"Name": "kept", "Port": 1}).status == 200
        assert a.get("/v1/connect/ca/roots").status == 200  # the CA key is in the journal
    finally:
        a.stop()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    modes = _modes(data)
    assert "node-id" in modes and any(p.startswith("raft") for p in modes)
    assert any(p.startswith("agent") for p in modes)  # the persisted service
    loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert loose == {}


def test_an_existing_world_readable_data_dir_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "open"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    a = dev_agent()
    a.args = ["-server", "-bootstrap-expect=1", f"-data-dir={data}", "-node=open"]
    a.start()
    try:
        assert a.get("/v1/status/leader").status == 200
    finally:
        a.stop()
    log = a.read_log()
    assert "has mode 0755" in log and "chmod 700" in log


def test_a_server_expecting_peers_refuses_to_start_without_a_key_even_on_loopback(
    tmp_path: Path,
) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshd",
            "agent",
            "-server",
            "-bootstrap-expect=2",
            "-bind=127.0.0.1",
            f"-data-dir={tmp_path}",
            "-http-port=-1",
            "-dns-port=-1",
            "-grpc-port=-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "cluster key" in out and "meshd keygen" in out
    assert "Traceback" not in out
