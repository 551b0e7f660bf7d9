"""Run a command under the kernel-level restrictions a systemd unit file asks for.

systemd is not PID 1 on the test machines, so nothing enforces the unit's hardening there. This
script applies the parts that could break meshd itself (the system call filter, the address
family list, MemoryDenyWriteExecute, NoNewPrivileges), read from the unit file, and then execs
the command: if meshd needs a system call the unit forbids, the test sees it fail.

Run it with Debian's /usr/bin/python3, which has the libseccomp bindings (python3-seccomp):
    unit_sandbox.py UNIT_FILE -- COMMAND...
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
import sys

import seccomp  # type: ignore[import-not-found, unused-ignore]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
FAMILIES: dict[str, int] = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}


def unit_settings(path: str) -> dict[str, list[str]]:
    """Every `Key=value` of [Service], repeated keys kept in order (systemd merges them)."""
    out: dict[str, list[str]] = {}
    section = ""
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
                key, value = line.split("=", 1)
                out.setdefault(key.strip(), []).append(value.strip())
    return out


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """systemd's own definition of a group (`systemd-analyze syscall-filter`), nested groups too."""
    seen = seen if seen is not None else set()
    if group in seen:
        return set()
    seen.add(group)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        calls |= expand(name, seen) if name.startswith("@") else {name}
    return calls


def allowed_calls(filters: list[str]) -> set[str]:
    """Apply SystemCallFilter= lines as systemd does: an allow list, then `~` lines remove."""
    allowed: set[str] = set()
    for spec in filters:
        deny = spec.startswith("~")
        names: set[str] = set()
        for word in spec.lstrip("~").split():
            names |= expand(word) if word.startswith("@") else {word}
        allowed = allowed - names if deny else allowed | names
    return allowed


def apply(settings: dict[str, list[str]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if settings.get("NoNewPrivileges", ["no"])[-1] == "yes":
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    mdwe = settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    if mdwe and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (needs Linux 6.3+)")
    err = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(err))
    families = [FAMILIES[w] for w in " ".join(settings.get("RestrictAddressFamilies", [])).split()]
    for call in sorted(allowed_calls(settings.get("SystemCallFilter", [])) - {"socket"}):
        with contextlib.suppress(RuntimeError, ValueError):  # a name libseccomp does not know
            filt.add_rule(seccomp.ALLOW, call)
    for fam in families or [*FAMILIES.values()]:
        filt.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, fam))
    # execve of the command itself happens after the filter is loaded
    filt.add_rule(seccomp.ALLOW, "execve")
    filt.load()


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: unit_sandbox.py UNIT_FILE -- COMMAND...")
    apply(unit_settings(argv[1]))
    os.execv(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv)
