"""Check definitions that could harm the host: intervals below Consul's floor, script checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, MeshdProcess, dev_agent, wait_for


def test_an_interval_below_one_second_is_raised_to_it_with_a_warning(agent: MeshdProcess) -> None:
    body = {"Name": "spin", "CheckID": "spin", "TCP": "127.0.0.1:1", "Interval": "1ns"}
    assert agent.put("/v1/agent/check/register", body).status == 200
    check = agent.get("/v1/agent/checks").json()["spin"]
    assert check["Interval"] == "1s"
    assert "'spin' has interval 1e-09s, below the minimum: raised to 1s" in agent.read_log()
    agent.put("/v1/agent/check/deregister/spin")


def _start(tmp_path: Path, conf: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(conf))
    return subprocess.run(
        [sys.executable, "-m", "meshd", "agent", "-dev", f"-config-file={path}", "-http-port=-1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO},
    )


SCRIPT_CHECK = {"check": {"name": "local-script", "args": ["true"], "interval": "1s"}}


def test_a_script_check_in_a_config_file_needs_a_flag_and_fails_start_up_cleanly(
    tmp_path: Path,
) -> None:
    r = _start(tmp_path, SCRIPT_CHECK)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "enable_local_script_checks" in out and "Scripts are disabled" in out
    assert "Traceback" not in out


def test_enable_local_script_checks_allows_config_files_but_not_the_api(tmp_path: Path) -> None:
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps({"enable_local_script_checks": True, **SCRIPT_CHECK}))
    a = dev_agent(f"-config-file={conf}").start()
    try:
        assert wait_for(
            lambda: (
                a.get("/v1/agent/checks").json().get("local-script", {}).get("Status") == "passing"
            ),
            timeout=15,
        )
        r = a.put(
            "/v1/agent/check/register", {"Name": "api-script", "Args": ["true"], "Interval": "1s"}
        )
        assert r.status == 400 and b"Scripts are disabled" in r.body
        assert "api-script" not in a.get("/v1/agent/checks").json()
    finally:
        a.stop()
