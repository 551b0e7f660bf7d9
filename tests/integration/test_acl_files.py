"""Secrets on disk are owner-only: the persisted agent tokens (`acl.enable_token_persistence`),
`meshd snapshot save` output and the servers' Raft snapshot files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from acl_helpers import MGMT, ACLAgent, start_acl_agent
from helpers import REPO, run_meshd, wait_for


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _node(acl: ACLAgent) -> str:
    return str(acl.ok("GET", "/v1/agent/self")["Config"]["NodeName"])


def test_persisted_agent_tokens_are_0600_and_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acl = start_acl_agent(
        acl="enable_token_persistence = true",
        agent_token=False,
        args=("-node=persist",),
        data_dir=str(data),
    )
    tokens_file = data / "acl-tokens.json"
    try:
        assert not tokens_file.exists()  # nothing set through the API yet
        _, agent_token = acl.token_for('node "persist" { policy = "write" }')
        _, dns_token = acl.token_for('service_prefix "" { policy = "read" }')
        _, weak = acl.token_for('key "x" { policy = "read" }')
        refused = acl.call("PUT", "/v1/agent/token/agent", {"Token": weak}, token=weak)
        assert refused.status == 403 and not tokens_file.exists()
        done = run_meshd(
            "acl",
            "set-agent-token",
            "agent",
            agent_token,
            f"-token={MGMT}",
            http_addr=acl.proc.http,
        )
        assert done.returncode == 0, done.stderr
        acl.ok("PUT", "/v1/agent/token/dns", {"Token": dns_token})
        assert _mode(tokens_file) == 0o600
        assert json.loads(tokens_file.read_text()) == {"agent": agent_token, "dns": dns_token}
        acl.ok("PUT", "/v1/agent/service/register", {"Name": "web", "Port": 80})
        wait_for(lambda: acl.ok("GET", "/v1/catalog/service/web"), timeout=15)
    finally:
        acl.proc.stop()
    acl.proc.start()  # the config file still has no agent token: the persisted one is used
    try:
        acl.ok("PUT", "/v1/agent/service/register", {"Name": "api", "Port": 81})
        wait_for(lambda: acl.ok("GET", "/v1/catalog/service/api"), timeout=15)
        log = acl.proc.read_log()
        assert "loaded persisted ACL tokens: agent, dns" in log
        assert agent_token not in log and dns_token not in log
    finally:
        acl.proc.stop()


def test_without_persistence_api_tokens_are_not_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acl = start_acl_agent(data_dir=str(data))
    try:
        _, token = acl.token_for('node_prefix "" { policy = "write" }')
        acl.ok("PUT", "/v1/agent/token/agent", {"Token": token})
        assert acl.ok("GET", "/v1/agent/self")  # the agent took it in memory
    finally:
        acl.proc.stop()
    assert data.is_dir() and not (data / "acl-tokens.json").exists()
    # the token itself is in the Raft journal (it was created through Raft); no other file
    # the agent keeps holds it
    agent_files = [p for p in data.rglob("*") if p.is_file() and "raft" not in p.parts]
    assert agent_files and all(token not in p.read_text(errors="replace") for p in agent_files)


def test_a_corrupt_tokens_file_stops_the_agent_with_its_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "acl-tokens.json").write_text("{not json")
    os.chmod(data / "acl-tokens.json", 0o600)
    acl_conf = tmp_path / "acl.hcl"
    acl_conf.write_text("acl {\n enabled = true\n enable_token_persistence = true\n}\n")
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "agent", "-server", "-bootstrap-expect=1",
         f"-data-dir={data}",
         f"-config-file={acl_conf}", "-http-port=-1", "-dns-port=-1", "-grpc-port=-1"],
        env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Error: cannot start agent: cannot read the persisted ACL tokens" in r.stderr
    assert "Traceback" not in r.stderr


def test_snapshot_save_output_is_0600(tmp_path: Path) -> None:
    acl = start_acl_agent()
    try:
        _, op = acl.token_for('operator = "read"')
        out = tmp_path / "backup.snap"
        denied = run_meshd("snapshot", "save", str(out), f"-token={op}", http_addr=acl.proc.http)
        assert denied.returncode != 0 and not out.exists()  # a snapshot needs management
        saved = run_meshd("snapshot", "save", str(out), f"-token={MGMT}", http_addr=acl.proc.http)
        assert saved.returncode == 0, saved.stderr
        assert _mode(out) == 0o600 and out.stat().st_size > 0
    finally:
        acl.proc.stop()


_RAFT_SNAPSHOT = textwrap.dedent(
    """
    import sys, time, asyncio
    from meshd.fsutil import prepare_data_dir
    from meshd.server.raft import RaftNode, RaftSettings, reserve_port
    from meshd.server.store import Store
    from meshd.structs import KVOp

    async def main(data):
        prepare_data_dir(data)
        hold = reserve_port("127.0.0.1")
        port = hold.getsockname()[1]
        node = RaftNode(Store(), RaftSettings(self_addr=f"127.0.0.1:{port}", peers=[],
                                              data_dir=data, fsync=False))
        hold.close()
        while not node.is_leader:
            await asyncio.sleep(0.05)
        await node.apply(KVOp(Verb="set", Key="secret", Value=b"%s"))
        node._sync.forceLogCompaction()
        for _ in range(200):
            await asyncio.sleep(0.05)
            if node._sync._SyncObj__raftLastApplied and __import__("os").path.exists(
                data + "/raft/snapshot.bin"):
                break
        node.close()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_raft_snapshot_files_are_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = uuid.uuid4().hex
    r = subprocess.run(
        [sys.executable, "-c", _RAFT_SNAPSHOT % secret, str(data)],
        env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    snapshot = data / "raft" / "snapshot.bin"
    assert snapshot.exists()
    loose = {str(p): oct(_mode(p)) for p in data.rglob("*") if _mode(p) & 0o077}
    assert loose == {}
    assert _mode(snapshot) == 0o600
