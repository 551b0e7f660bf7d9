"""`meshd watch`, `meshd event` and the agent's `watches` config against real agents, with real
handler scripts reading the JSON on their stdin."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, BackgroundHTTP, MeshdProcess, dev_agent, free_port, run_meshd, wait_for

HANDLER = """#!/bin/sh
f=$(mktemp "$OUT/call.XXXXXX")
cat > "$f.tmp"
echo "$CONSUL_INDEX" > "$f.index"
mv "$f.tmp" "$f.json"
"""


def handler_script(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "calls"
    out.mkdir()
    script = tmp_path / "handler.sh"
    script.write_text(HANDLER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, out


def calls(out: Path) -> list[Any]:
    """What the handler received, oldest first (mktemp names are random: order by mtime)."""
    files = sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in files]


def value_of(entry: Any) -> bytes | None:
    return base64.b64decode(entry["Value"]) if entry and entry.get("Value") else None


@pytest.fixture
def watcher() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_watch(
    agent: MeshdProcess, out: Path, *args: str, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": REPO, "MESHD_HTTP_ADDR": agent.http, "OUT": str(out)}
    p = subprocess.Popen([sys.executable, "-m", "meshd", "watch", *args], env=env)
    procs.append(p)
    return p


def test_watch_key_runs_the_handler_with_json_on_stdin(
    agent: MeshdProcess, tmp_path: Path, watcher: list[subprocess.Popen[bytes]]
) -> None:
    script, out = handler_script(tmp_path)
    start_watch(agent, out, "-type=key", "-key=watch1/k", str(script), procs=watcher)
    wait_for(lambda: calls(out), timeout=15)
    assert calls(out) == [None]  # the key does not exist yet: the first answer is null
    agent.put("/v1/kv/watch1/k", b"v1")
    wait_for(lambda: len(calls(out)) == 2, timeout=15)
    entry = calls(out)[1]
    assert entry["Key"] == "watch1/k" and value_of(entry) == b"v1"
    index_files = sorted(out.glob("*.index"), key=lambda p: p.stat().st_mtime_ns)
    assert int(index_files[-1].read_text()) == entry["ModifyIndex"]
    agent.put("/v1/kv/watch1/other", b"x")  # another key: no call
    agent.put("/v1/kv/watch1/k", b"v2")
    wait_for(lambda: len(calls(out)) == 3, timeout=15)
    assert value_of(calls(out)[2]) == b"v2"
    assert all(value_of(c) != b"x" for c in calls(out) if c)


def test_watch_without_handler_prints_the_answer_and_exits(agent: MeshdProcess) -> None:
    agent.put("/v1/kv/watch2/a", b"1")
    agent.put("/v1/kv/watch2/b", b"2")
    r = run_meshd("watch", "-type=keyprefix", "-prefix=watch2/", http_addr=agent.http)
    assert r.returncode == 0, r.stderr
    assert [value_of(e) for e in json.loads(r.stdout)] == [b"1", b"2"]
    reg = {"Node": "watch2-node", "Address": "10.8.0.1", "Service": {"Service": "watch2-svc"}}
    assert agent.put("/v1/catalog/register", reg).status == 200
    r = run_meshd("watch", "-type=services", http_addr=agent.http)
    assert json.loads(r.stdout)["watch2-svc"] == []


def test_event_command_and_event_watch(agent: MeshdProcess) -> None:
    r = run_meshd("event", "-name=watch-ev", "hello", http_addr=agent.http)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Event ID: ")
    event_id = r.stdout.split()[-1]
    r = run_meshd("watch", "-type=event", "-name=watch-ev", http_addr=agent.http)
    events = json.loads(r.stdout)
    assert [e["ID"] for e in events] == [event_id]
    assert base64.b64decode(events[0]["Payload"]) == b"hello"
    r = run_meshd("event", "hello", http_addr=agent.http)
    assert r.returncode == 1 and "Event name must be specified" in r.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-type=bogus"], "watch type must be one of"),
        (["-type=key"], "needs 'key'"),
        (["-type=checks", "-service=a", "-state=passing"], "not both"),
        (["-type=checks", "-state=sad"], "watch state must be one of"),
        (["-type=nodes", "-key=x"], "does not take key"),
    ],
)
def test_watch_refuses_bad_definitions(args: list[str], reason: str) -> None:
    r = run_meshd("watch", *args, http_addr="http://127.0.0.1:1")
    assert r.returncode == 1 and reason in r.stderr


def test_watch_exits_1_when_its_handler_fails(agent: MeshdProcess) -> None:
    r = run_meshd("watch", "-type=nodes", "exit 3", http_addr=agent.http)
    assert r.returncode == 1 and "Error executing handler" in r.stderr and "3" in r.stderr


def test_agent_config_watches_and_reload(tmp_path: Path) -> None:
    script, out = handler_script(tmp_path)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    watch = {"type": "key", "key": "cfgwatch/k", "handler_type": "script", "args": [str(script)]}
    (conf / "watches.json").write_text(json.dumps({"watches": [watch]}))
    agent = dev_agent("-config-dir", str(conf), env={"OUT": str(out)}).start()
    posts: list[tuple[str, Any]] = []
    http = BackgroundHTTP()
    try:
        wait_for(lambda: calls(out), timeout=15)
        agent.put("/v1/kv/cfgwatch/k", b"from-config")
        wait_for(lambda: any(value_of(c) == b"from-config" for c in calls(out)), timeout=15)

        async def receive(request: Any) -> Any:
            from aiohttp import web

            posts.append((request.headers.get("X-Consul-Index", ""), await request.json()))
            return web.Response(text="ok")

        port = free_port()
        http.serve(port, receive)
        hook = {
            "type": "keyprefix",
            "prefix": "cfgwatch/",
            "http_handler_config": {"path": f"http://127.0.0.1:{port}/hook", "method": "POST"},
        }
        (conf / "watches.json").write_text(json.dumps({"watches": [hook]}))
        r = run_meshd("reload", http_addr=agent.http)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: posts, timeout=15)
        agent.put("/v1/kv/cfgwatch/k2", b"second")
        wait_for(lambda: any(len(body or []) == 2 for _, body in posts), timeout=15)
        index, body = posts[-1]
        assert int(index) == max(e["ModifyIndex"] for e in body)
        # the script watch was replaced: it no longer runs
        seen = len(calls(out))
        agent.put("/v1/kv/cfgwatch/k", b"after-reload")
        wait_for(
            lambda: any(len(b or []) == 2 and value_of(b[0]) == b"after-reload" for _, b in posts)
        )
        assert len(calls(out)) == seen
        # a bad watch is refused by reload and by `meshd validate`, and changes nothing
        (conf / "watches.json").write_text(json.dumps({"watches": [{"type": "key"}]}))
        r = run_meshd("reload", http_addr=agent.http)
        assert r.returncode != 0 and "needs 'key'" in (r.stderr + r.stdout)
        r = run_meshd("validate", str(conf))
        assert r.returncode != 0 and "needs 'key'" in (r.stderr + r.stdout)
        before = len(posts)
        agent.put("/v1/kv/cfgwatch/k3", b"third")
        wait_for(lambda: len(posts) > before)
    finally:
        http.close()
        agent.stop()
