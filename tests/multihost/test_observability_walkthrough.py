"""docs/observability.md's "Try it", verbatim: a newcomer's commands, then the traffic they
are told they will see (graph, /ui, `meshd top`, `meshd explain`, a deny). Needs root, for a
network namespace whose loopback has the walkthrough's fixed ports (8500, 9090, 9191...)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from netns import netns_available

REPO = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).with_name("walkthrough_check.py")


def try_it_block() -> str:
    text = (REPO / "docs" / "observability.md").read_text()
    section = text.split("## Try it", 1)[1]
    return section.split("```", 2)[1].lstrip("\n")


def test_the_walkthrough_shows_live_traffic(tmp_path: Path) -> None:
    assert netns_available(), "needs root and `ip netns` (unshare -n)"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CONSUL_HTTP_ADDR", None)
    env.pop("MESHD_HTTP_ADDR", None)
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(CHECK), try_it_block(), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    checks = dict(re.findall(r"^CHECK (\S+) (.*)$", out.stdout, re.M))
    assert checks.get("steps_exit") == "0", out
    assert 4 <= float(checks["rate"]) <= 6, checks  # "about 5 req/s"
    assert checks["ui"] == "200"
    assert checks["top_api_from"] == "web"
    assert checks["explain"] == "0" and checks["explain_denied"] == "2", checks
