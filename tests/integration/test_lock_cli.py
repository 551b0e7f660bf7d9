"""`meshd lock` against a real `meshd agent -dev`: exclusion, semaphores, loss, exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from helpers import REPO, MeshdProcess, run_meshd, wait_for


def _lock(agent: MeshdProcess, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": REPO, "MESHD_HTTP_ADDR": agent.http}
    env.pop("CONSUL_HTTP_ADDR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "meshd", "lock", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_contenders_take_turns(agent: MeshdProcess, tmp_path: Path) -> None:
    log = tmp_path / "log"
    prefix = f"locks/{uuid.uuid4()}"
    script = "echo start:{0} >> {1}; sleep 0.5; echo end:{0} >> {1}"
    procs = [_lock(agent, prefix, script.format(i, log)) for i in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    words = log.read_text().split()
    assert len(words) == 6
    for i in range(0, 6, 2):  # every start is directly followed by its own end
        assert words[i].replace("start", "end") == words[i + 1]
    assert run_meshd("kv", "get", f"{prefix}/.lock", http_addr=agent.http).returncode == 1


def test_child_exit_code(agent: MeshdProcess) -> None:
    prefix = f"locks/{uuid.uuid4()}"
    assert run_meshd("lock", prefix, "exit 7", http_addr=agent.http).returncode == 0
    r = run_meshd("lock", "-child-exit-code", prefix, "exit 7", http_addr=agent.http)
    assert r.returncode == 2
    r = run_meshd("lock", "-shell=false", prefix, "sh", "-c", "echo $0 $1", "a", "b",
                  http_addr=agent.http)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "a b"


def test_lost_lock_terminates_child(agent: MeshdProcess, tmp_path: Path) -> None:
    prefix = f"locks/{uuid.uuid4()}"
    marker = tmp_path / "term"
    started = tmp_path / "started"
    child = (
        f"trap 'echo got-term > {marker}; exit 0' TERM; touch {started}; "
        "while :; do sleep 0.1; done"
    )
    p = _lock(agent, prefix, child)
    wait_for(started.exists, timeout=20)
    holder = agent.get(f"/v1/kv/{prefix}/.lock").json()[0]["Session"]
    agent.put(f"/v1/session/destroy/{holder}")
    assert p.wait(30) == 1
    assert "Lock lost, killing child" in p.stderr.read()  # type: ignore[union-attr]
    assert marker.read_text().strip() == "got-term"


def test_timeout_while_held(agent: MeshdProcess) -> None:
    prefix = f"locks/{uuid.uuid4()}"
    sid = agent.put("/v1/session/create", {}).json()["ID"]
    flags = 0x2DDCCBC058A50C18  # a lock held the way `consul lock` holds it
    assert agent.put(f"/v1/kv/{prefix}/.lock?acquire={sid}&flags={flags}").json() is True
    r = run_meshd("lock", "-timeout", "1s", prefix, "echo ran", http_addr=agent.http)
    assert r.returncode == 1 and "Lock acquisition failed" in r.stderr
    assert "ran" not in r.stdout
    assert agent.get(f"/v1/kv/{prefix}/.lock").json()[0]["Session"] == sid


def test_key_not_used_as_a_lock_is_a_conflict(agent: MeshdProcess) -> None:
    prefix = f"locks/{uuid.uuid4()}"
    agent.put(f"/v1/kv/{prefix}/.lock", b"plain value")
    r = run_meshd("lock", prefix, "echo ran", http_addr=agent.http)
    assert r.returncode == 1 and "does not match lock use" in r.stderr and "ran" not in r.stdout


def test_semaphore_admits_n_and_refuses_other_limit(agent: MeshdProcess, tmp_path: Path) -> None:
    prefix = f"sems/{uuid.uuid4()}"
    slots = tmp_path / "slots"
    slots.mkdir()
    peak = tmp_path / "peak"
    # each holder takes a slot file, records how many slots are taken, waits, frees its slot
    script = (
        "touch {d}/{i}; ls {d} | wc -l >> {p}; while [ ! -e {g} ]; do sleep 0.1; done; rm {d}/{i}"
    )
    go = tmp_path / "go"
    procs = [
        _lock(agent, "-n", "2", prefix, script.format(d=slots, i=i, p=peak, g=go)) for i in range(3)
    ]
    wait_for(lambda: len(peak.read_text().split()) >= 2 if peak.exists() else False, timeout=30)
    holders = agent.get(f"/v1/kv/{prefix}/.lock").json()
    state = json.loads(base64.b64decode(holders[0]["Value"]))
    assert state["Limit"] == 2 and len(state["Holders"]) == 2
    r = run_meshd("lock", "-n", "3", "-timeout", "5s", prefix, "true", http_addr=agent.http)
    assert r.returncode == 1 and "semaphore limit conflict (lock: 2, local: 3)" in r.stderr
    go.touch()
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    counts = [int(x) for x in peak.read_text().split()]
    assert len(counts) == 3 and max(counts) <= 2
    # nothing left behind but (at most) `.lock` with no holders, the refused `-n 3` included
    left = agent.get(f"/v1/kv/{prefix}?recurse")
    rows = left.json() if left.status == 200 else []
    assert [r["Key"] for r in rows] in ([], [f"{prefix}/.lock"])
    assert all(json.loads(base64.b64decode(r["Value"]))["Holders"] == {} for r in rows)
