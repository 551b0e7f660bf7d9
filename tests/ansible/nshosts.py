"""Test "VMs" for the Ansible role: network namespaces with their own sshd, file system view and
systemctl, so Ansible reaches them over real SSH and the role's tasks run unchanged.

systemd is not PID 1 here and there is no container engine. Each host is a netns from
tests/multihost/netns.py plus a private mount namespace (`unshare -m`) in which sshd runs:
- /etc, /opt, /var/lib and /var/log are overlays on the machine's own directories, so a host
  sees the real system but writes (users, /etc/meshd, the venv, the data dir) go to its own
  upper directory and never reach the machine or another host;
- /run is a fresh tmpfs (sshd's privilege-separation directory, systemctl's state);
- /usr/bin/systemctl is PyPI's docker-systemctl-replacement, which reads unit files and
  supports Type=notify, ExecReload and $MAINPID.
Everything that Ansible starts over SSH, meshd included, inherits that view.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netns import Host

OVERLAYS = {"etc": "/etc", "opt": "/opt", "varlib": "/var/lib", "varlog": "/var/log"}
SSHD_CONFIG = "/etc/ssh/sshd_meshd_test.conf"
AUTHORIZED_KEYS = "/etc/ssh/meshd_test_authorized_keys"


@dataclass
class SSHHost:
    """One test VM: a netns address that answers SSH, and its private files seen from outside."""

    name: str
    host: Host
    root: Path

    @property
    def addr(self) -> str:
        return self.host.addr

    def path(self, inside: str) -> Path:
        """Where a file the host wrote under an overlaid directory lives on the machine."""
        for key, mount in OVERLAYS.items():
            if inside == mount or inside.startswith(mount + "/"):
                return self.root / "up" / key / inside[len(mount) :].lstrip("/")
        raise ValueError(f"{inside} is not in one of the host's own directories")

    def run(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A shell command inside the host's view, as Ansible's tasks see it."""
        return self.host.run(
            "nsenter", f"--mount=/proc/{self.sshd_pid()}/ns/mnt", "sh", "-c", cmd, timeout=timeout
        )

    def sshd_pid(self) -> int:
        proc = self.host.procs[0]
        # `ip netns exec` and `unshare` exec in place, so the pid we started is sshd's
        return proc.pid


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def systemctl_wrapper(dest: Path) -> Path:
    """docker-systemctl-replacement from this venv, as a `systemctl` any host can exec."""
    _write(dest, f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m systemctl3 "$@"\n', 0o755)
    return dest


def start_host(name: str, host: Host, root: Path, pubkey: str, systemctl: Path) -> SSHHost:
    """Lay out the host's own directories, then run sshd in its mount namespace."""
    for key in OVERLAYS:
        (root / "up" / key).mkdir(parents=True, exist_ok=True)
        (root / "work" / key).mkdir(parents=True, exist_ok=True)
    ssh = root / "up" / "etc" / "ssh"
    _write(ssh / AUTHORIZED_KEYS.rsplit("/", 1)[1], pubkey, 0o600)
    _write(
        ssh / SSHD_CONFIG.rsplit("/", 1)[1],
        "\n".join(
            [
                f"ListenAddress {host.addr}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                f"AuthorizedKeysFile {AUTHORIZED_KEYS}",
                "PidFile /run/sshd.pid",
                "Subsystem sftp internal-sftp",
                "MaxStartups 50",
                "MaxSessions 50",
                "",
            ]
        ),
    )
    mounts = ["set -e", "mount --make-rprivate /"]
    for key, target in OVERLAYS.items():
        opts = f"lowerdir={target},upperdir={root}/up/{key},workdir={root}/work/{key}"
        mounts.append(f"mount -t overlay meshd-{key} -o {opts} {target}")
    mounts += [
        "mount -t tmpfs -o mode=0755 meshd-run /run",
        "mkdir -p /run/sshd /run/systemd/system",
        f"mount --bind {systemctl} /usr/bin/systemctl",
        f"exec /usr/sbin/sshd -D -e -f {SSHD_CONFIG}",
    ]
    host.popen(["unshare", "-m", "sh", "-c", "\n".join(mounts)], str(root / "sshd.log"))
    return SSHHost(name, host, root)


def wait_for_ssh(hosts: list[SSHHost], key: Path, timeout: float = 30) -> None:
    """sshd is up when a real login runs a command; fail with its log otherwise."""
    for h in hosts:
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(
                [*ssh_command(key, h.addr), "true"], capture_output=True, text=True, timeout=20
            )
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                log = (h.root / "sshd.log").read_text(errors="replace")
                raise RuntimeError(f"no SSH login on {h.name}: {r.stderr}\n{log}")
            time.sleep(0.2)


def ssh_command(key: Path, addr: str) -> list[str]:
    return [
        "ssh",
        "-i",
        str(key),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        f"root@{addr}",
    ]


def make_key(dest: Path) -> str:
    """A fresh key pair for this run; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(dest)], check=True, timeout=30
    )
    return dest.with_suffix(".pub").read_text()
