"""The `meshd` CLI against a real agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import run_meshd


def meshd(agent, *args: str, stdin: str | None = None, env: dict | None = None):
    return run_meshd(*args, http_addr=agent.http, stdin=stdin, env=env)


def test_version_and_info(agent):
    r = meshd(agent, "version")
    assert r.returncode == 0 and r.stdout.startswith("meshd v")
    r = meshd(agent, "info")
    assert r.returncode == 0 and "leader" in r.stdout


def test_members(agent):
    r = meshd(agent, "members")
    assert r.returncode == 0
    assert "alive" in r.stdout and "server" in r.stdout
    data = json.loads(meshd(agent, "members", "-format=json").stdout)
    assert data[0]["Status"] == 1


def test_services_register_catalog_deregister(agent, tmp_path):
    f = tmp_path / "svc.json"
    f.write_text(
        json.dumps(
            {"service": {"name": "clisvc", "id": "clisvc-1", "port": 7000, "tags": ["blue"]}}
        )
    )
    r = meshd(agent, "services", "register", str(f))
    assert r.returncode == 0, r.stderr
    assert "clisvc" in meshd(agent, "catalog", "services").stdout.split()
    tags = meshd(agent, "catalog", "services", "-tags").stdout
    assert any(line.split()[:2] == ["clisvc", "blue"] for line in tags.splitlines())
    nodes = meshd(agent, "catalog", "nodes", "-service=clisvc").stdout
    assert "127.0.0.1" in nodes
    r = meshd(agent, "services", "register", "-name=flagsvc", "-port=7001", "-tag=a")
    assert r.returncode == 0, r.stderr
    assert agent.get("/v1/agent/service/flagsvc").json()["Port"] == 7001
    r = meshd(agent, "services", "deregister", "-id=clisvc-1")
    assert r.returncode == 0
    assert "clisvc" not in meshd(agent, "catalog", "services").stdout.split()


def test_services_register_hcl(agent, tmp_path):
    f = tmp_path / "svc.hcl"
    f.write_text('service {\n  name = "hclsvc"\n  port = 7100\n}\n')
    r = meshd(agent, "services", "register", str(f))
    assert r.returncode == 0, r.stderr
    assert agent.get("/v1/agent/service/hclsvc").json()["Port"] == 7100


def test_kv_commands(agent):
    assert (
        meshd(agent, "kv", "put", "cli/a", "hello").stdout.strip()
        == "Success! Data written to: cli/a"
    )
    assert meshd(agent, "kv", "get", "cli/a").stdout == "hello\n"
    assert meshd(agent, "kv", "put", "cli/b", "-", stdin="from stdin").returncode == 0
    assert meshd(agent, "kv", "get", "cli/b").stdout.strip() == "from stdin"
    keys = meshd(agent, "kv", "get", "-keys", "cli/").stdout.split()
    assert keys == ["cli/a", "cli/b"]
    r = meshd(agent, "kv", "get", "cli/missing")
    assert r.returncode == 1 and "No key exists at: cli/missing" in r.stderr
    assert meshd(agent, "kv", "delete", "-recurse", "cli/").returncode == 0
    assert meshd(agent, "kv", "get", "cli/a").returncode == 1


def test_unreachable_agent_is_one_line_error(agent):
    r = meshd(agent, "catalog", "services", env={"MESHD_HTTP_ADDR": "127.0.0.1:1"})
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "Error" in r.stderr


def test_consul_http_addr_is_honoured(agent):
    e = {"CONSUL_HTTP_ADDR": agent.http}
    env = {k: v for k, v in os.environ.items() if k != "MESHD_HTTP_ADDR"}
    r = subprocess.run(
        [sys.executable, "-m", "meshd", "catalog", "services"],
        capture_output=True,
        text=True,
        env={**env, **e},
        timeout=30,
    )
    assert r.returncode == 0 and "consul" not in r.stderr.lower()


def test_snapshot_save_restore_roundtrip(agent, tmp_path):
    agent.put("/v1/kv/snap/key", b"before")
    snap = tmp_path / "backup.snap"
    r = meshd(agent, "snapshot", "save", str(snap))
    assert r.returncode == 0, r.stderr
    assert snap.stat().st_size > 0
    agent.put("/v1/kv/snap/key", b"after")
    agent.put("/v1/kv/snap/new", b"x")
    r = meshd(agent, "snapshot", "restore", str(snap))
    assert r.returncode == 0, r.stderr
    assert agent.get("/v1/kv/snap/key?raw").body == b"before"
    assert agent.get("/v1/kv/snap/new").status == 404
    # the agent's own registrations come back through anti-entropy
    assert agent.get("/v1/catalog/nodes").json()
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot")
    r = meshd(agent, "snapshot", "restore", str(bad))
    assert r.returncode != 0 and "snapshot" in r.stderr
    assert agent.get("/v1/kv/snap/key?raw").body == b"before"


def test_operator_raft_list_peers_and_keygen(agent):
    r = meshd(agent, "operator", "raft", "list-peers")
    assert r.returncode == 0 and "leader" in r.stdout
    import base64

    key = meshd(agent, "keygen").stdout.strip()
    assert len(base64.b64decode(key)) == 32
    r = meshd(agent, "operator", "raft", "remove-peer", "-address=10.0.0.1:8301")
    assert r.returncode != 0 and "not a Raft peer" in r.stderr
