"""Deploying meshd with `ansible-playbook site.yml` over SSH onto namespace hosts
(tests/ansible/nshosts.py): the inventory, the playbook runs and what they reported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nshosts import SSHHost

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
SERVERS = ["s1", "s2", "s3"]
CLIENTS = ["c1", "c2"]


def service_web(addr: str, tag: str) -> dict[str, Any]:
    """The client's service, checked against its own agent port so the check can pass."""
    return {
        "name": "web",
        "port": 8500,
        "tags": [tag],
        "check": {"tcp": f"{addr}:8500", "interval": "2s"},
    }


@dataclass
class Deployment:
    """The hosts, the inventory the test edits, and how to run the playbook against it."""

    workdir: Path
    key: Path
    hosts: dict[str, SSHHost]
    inventory: dict[str, Any] = field(default_factory=dict)

    def write_inventory(self) -> Path:
        path = self.workdir / "inventory.json"
        path.write_text(json.dumps(self.inventory, indent=2))
        return path

    def playbook(self, *extra: str, timeout: float = 420) -> PlaybookRun:
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "atmp"),
            "ANSIBLE_SSH_ARGS": (
                "-o ControlMaster=auto -o ControlPersist=300s "
                "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
            ),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        }
        cmd = [str(Path(sys.executable).with_name("ansible-playbook"))]
        cmd += ["-i", str(self.write_inventory()), str(ANSIBLE_DIR / "site.yml"), *extra]
        r = subprocess.run(
            cmd, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=timeout
        )
        run = PlaybookRun(r.returncode, r.stdout, r.stderr)
        log = self.workdir / "playbook.log"
        with log.open("a") as f:
            f.write(f"\n===== {' '.join(cmd)} rc={r.returncode}\n{r.stdout}\n{r.stderr}\n")
        return run


@dataclass
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counters per host: {"s1": {"ok": 20, "changed": 0, ...}}."""
        out: dict[str, dict[str, int]] = {}
        text = self.stdout.split("PLAY RECAP", 1)[-1]
        for m in re.finditer(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$", text, re.M):
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out

    def ran(self, task: str) -> list[str]:
        """Hosts that reported `changed` or `ok` for a task or handler of this name."""
        header = re.compile(rf"^(?:TASK|RUNNING HANDLER) \[(?:\S+ : )?{re.escape(task)}\]")
        hosts: list[str] = []
        for block in self.stdout.split("\n\n"):
            if header.match(block.strip()):
                hosts += re.findall(r"^(?:changed|ok): \[(\w+)", block.strip(), re.M)
        return hosts

    def __str__(self) -> str:
        return (self.stdout + self.stderr)[-6000:]


def build_wheelhouse(dest: Path) -> Path:
    """The meshd wheel and every dependency as wheels: all a host needs, no index."""
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", str(REPO), "-w", str(dest)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return dest


def inventory(hosts: dict[str, SSHHost], wheels: Path) -> dict[str, Any]:
    def hostvars(n: str) -> dict[str, Any]:
        addr = hosts[n].addr
        # the test reaches the HTTP API and DNS from outside the host, so they listen on its
        # address rather than loopback
        return {"ansible_host": addr, "meshd_bind_addr": addr, "meshd_client_addr": addr}

    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "meshd_wheelhouse": str(wheels),
                "meshd_extra_config": {"retry_interval": "1s"},
            },
            "children": {
                "servers": {"hosts": {n: hostvars(n) for n in SERVERS}},
                "clients": {
                    "hosts": {
                        "c1": {
                            **hostvars("c1"),
                            "meshd_services": [service_web(hosts["c1"].addr, "v1")],
                        },
                        "c2": hostvars("c2"),
                    }
                },
            },
        }
    }


def main_pid(host: SSHHost) -> int:
    """meshd's PID as the service manager tracks it (the PID `ExecReload` signals)."""
    r = host.run("systemctl show -p MainPID meshd")
    return int(r.stdout.strip().rsplit("=", 1)[-1] or 0)
