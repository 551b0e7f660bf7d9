"""The role and playbook pass ansible-lint's strictest profile, with nothing skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NO_COLOR": "1"}
    return subprocess.run(
        [str(bin_dir / "ansible-lint"), "--profile", "production", "--nocolor", str(path)],
        cwd=path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_production_profile_has_no_findings() -> None:
    r = lint(ANSIBLE_DIR)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failure(s), 0 warning(s)" in r.stderr + r.stdout


def test_no_rule_is_skipped_or_downgraded() -> None:
    for name in (".ansible-lint", ".config/ansible-lint.yml", ".ansible-lint-ignore"):
        for base in (ANSIBLE_DIR, ANSIBLE_DIR.parent):
            assert not (base / name).exists(), f"{base / name} may skip rules"
    noqa = [p for p in ANSIBLE_DIR.rglob("*.yml") if "noqa" in p.read_text()]
    assert noqa == []
