"""Network-namespace "hosts" on a private bridge, for multi-host tests of real meshd processes.

Every host is a netns with one veth into a bridge that lives in the root namespace. The bridge
has `<subnet>.1` so the test process itself can reach hosts; nothing is routed anywhere else:
no default route in the namespaces, no IP forwarding, no NAT.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import time
from typing import Any

IFNAMSIZ = 15  # usable characters of a Linux interface name
OWNER_DIR = "/run/meshd-mh"  # one file per network suffix: "<pid> <start time>" of its owner


def _sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Fail loudly with stderr included: a half-built network gives baffling test failures."""
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Signal the whole group so helpers a process spawned cannot outlive or ignore the fault."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _start_time(pid: int) -> str:
    """Pair with the pid so a recycled pid is not mistaken for a still-running owner."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _netns_names() -> list[str]:
    r = _sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _link_names() -> list[str]:
    r = _sh("ip", "-o", "link", "show", check=False)
    return [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", r.stdout, re.M)]


def _kill_netns_pids(ns: str) -> None:
    """Processes keep a deleted netns (and its veth) alive, so nothing may be left inside."""
    r = _sh("ip", "netns", "pids", ns, check=False)
    for pid in r.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def netns_available() -> bool:
    """Tests need root plus a working `ip netns`; anything else should fail, not skip."""
    try:
        return os.geteuid() == 0 and _sh("ip", "netns", "list", check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _claim_suffix() -> str:
    """Owner file exists before any resource and appears atomically (link), so cleanup in a
    parallel run can never mistake a network that is still being built for a leftover."""
    os.makedirs(OWNER_DIR, exist_ok=True)
    pid = os.getpid()
    tmp = os.path.join(OWNER_DIR, f".{pid}-{secrets.token_hex(4)}")
    with open(tmp, "w") as f:
        f.write(f"{pid} {_start_time(pid)}\n")
    try:
        for _ in range(100):
            suffix = secrets.token_hex(2)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, os.path.join(OWNER_DIR, suffix))
                return suffix
        raise RuntimeError(f"no free network suffix in {OWNER_DIR}")
    finally:
        os.unlink(tmp)


def _owner_alive(suffix: str) -> bool:
    try:
        with open(os.path.join(OWNER_DIR, suffix)) as f:
            pid, start = f.read().split()
    except (OSError, ValueError):
        return False
    return os.path.exists(f"/proc/{pid}") and _start_time(int(pid)) == start


def cleanup_stale(prefix: str = "mh") -> None:
    """Remove networks of aborted runs (owner process gone) while sparing live parallel runs.

    Ownership is checked afresh per resource, after seeing it: its owner file predates it.
    """
    for ns in _netns_names():
        m = re.fullmatch(rf"{re.escape(prefix)}-([0-9a-f]{{4}})-\d+", ns)
        if m and not _owner_alive(m.group(1)):
            _kill_netns_pids(ns)
            _sh("ip", "netns", "del", ns, check=False)
    pat = rf"{re.escape(prefix)}(?:br([0-9a-f]{{4}})|-([0-9a-f]{{4}})v\d+)"
    for link in _link_names():
        m = re.fullmatch(pat, link)
        if m and not _owner_alive(m.group(1) or m.group(2)):
            _sh("ip", "link", "del", link, check=False)
    for s in os.listdir(OWNER_DIR) if os.path.isdir(OWNER_DIR) else []:
        if not s.startswith(".") and not _owner_alive(s):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(OWNER_DIR, s))


class Host:
    """One namespace; every fault injected here is undone by Network.heal/close."""

    def __init__(self, name: str, ns: str, addr: str, veth: str) -> None:
        self.name, self.ns, self.addr, self.veth = name, ns, addr, veth
        self.procs: list[subprocess.Popen[bytes]] = []
        self._blocked: set[str] = set()

    def __repr__(self) -> str:
        return f"Host({self.name!r}, ns={self.ns!r}, addr={self.addr!r})"

    def run(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Default to captured text and a timeout so a hung probe can't stall the suite."""
        opts: dict[str, Any] = {"capture_output": True, "text": True, "timeout": 30}
        opts.update(kw)
        return subprocess.run(["ip", "netns", "exec", self.ns, *cmd], **opts)

    def popen(
        self, cmd: list[str], log_path: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Own process group so kill/pause hit exactly this process tree and nothing of pytest."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *cmd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
        _signal_group(proc, sig)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            _signal_group(proc, signal.SIGCONT)  # a paused process would never act on SIGTERM

    def pause(self, proc: subprocess.Popen[Any]) -> None:
        _signal_group(proc, signal.SIGSTOP)

    def resume(self, proc: subprocess.Popen[Any]) -> None:
        _signal_group(proc, signal.SIGCONT)

    def link_down(self) -> None:
        """Cut at the bridge port so the host looks unplugged, not firewalled."""
        _sh("ip", "link", "set", self.veth, "down")

    def link_up(self) -> None:
        _sh("ip", "link", "set", self.veth, "up")

    def _rules(self, other: str) -> list[list[str]]:
        return [["INPUT", "-s", other, "-j", "DROP"], ["OUTPUT", "-d", other, "-j", "DROP"]]

    def block(self, other: Host) -> None:
        """Both directions, so neither side sees a half-open link it could half-use."""
        for rule in self._rules(other.addr):
            if self.run("iptables", "-w", "-C", *rule).returncode != 0:
                self.run("iptables", "-w", "-I", *rule, check=True)
        self._blocked.add(other.addr)

    def unblock(self, other: Host) -> None:
        self._unblock_addr(other.addr)

    def _unblock_addr(self, addr: str) -> None:
        for rule in self._rules(addr):
            while self.run("iptables", "-w", "-C", *rule).returncode == 0:
                self.run("iptables", "-w", "-D", *rule, check=True)
        self._blocked.discard(addr)

    def unblock_all(self) -> None:
        for addr in list(self._blocked):
            self._unblock_addr(addr)


def _check_subnet_free(subnet: str, own_dev: str = "") -> None:
    """Refuse a /24 the machine already routes, so test traffic can never leak to a real net."""
    net = ipaddress.IPv4Network(f"{subnet}.0/24")
    for line in _sh("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        dest = next((w for w in line.split() if w[0].isdigit() or w == "default"), "default")
        if dest == "default" or (own_dev and f" dev {own_dev} " in f"{line} "):
            continue
        if ipaddress.IPv4Network(dest, strict=False).overlaps(net):
            raise RuntimeError(f"subnet {net} already in use ({line.strip()}); pass another")


def free_subnet(base: str = "10.213") -> str:
    """Let concurrent runs (or several Networks in one test) each get their own /24."""
    start = secrets.randbelow(256)  # random start: parallel runs rarely race for the same /24
    for k in range(256):
        with contextlib.suppress(RuntimeError):
            _check_subnet_free(f"{base}.{(start + k) % 256}")
            return f"{base}.{(start + k) % 256}"
    raise RuntimeError(f"no free /24 under {base}.0.0/16")


def _disable_bridge_netfilter() -> None:
    """With br_netfilter loaded, bridged frames hit the root FORWARD chain and may be dropped."""
    path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
    if os.path.exists(path):  # absent when br_netfilter is not loaded: nothing to do then
        with open(path, "w") as f:
            f.write("0\n")


class Network:
    """A private L2 segment with n hosts; always closes, even when the test run is aborted."""

    def __init__(self, n_hosts: int, prefix: str = "mh", subnet: str = "10.213.0") -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError("n_hosts must be in 1..200")
        if len(f"{prefix}-xxxxv{n_hosts - 1}") > IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} too long for {IFNAMSIZ}-char interface names")
        self.prefix, self.suffix, self.bridge, self._closed = prefix, "", "", False
        self._owner_pid = os.getpid()  # a forked child's atexit must not tear our network down
        self.hosts: list[Host] = []
        _check_subnet_free(subnet)
        atexit.register(self.close)
        try:
            self._build(n_hosts, subnet)
        except BaseException:
            self.close()
            raise

    def _build(self, n_hosts: int, subnet: str) -> None:
        _disable_bridge_netfilter()
        self.suffix = _claim_suffix()
        self.bridge = bridge = f"{self.prefix}br{self.suffix}"
        _sh("ip", "link", "add", bridge, "type", "bridge")
        _sh("ip", "link", "set", bridge, "type", "bridge", "forward_delay", "0")
        _sh("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
        _check_subnet_free(subnet, own_dev=bridge)  # a parallel run may have raced us to it
        _sh("ip", "link", "set", bridge, "up")
        for i in range(n_hosts):
            ns, veth = f"{self.prefix}-{self.suffix}-{i}", f"{self.prefix}-{self.suffix}v{i}"
            host = Host(f"h{i}", ns, f"{subnet}.{10 + i}", veth)
            self.hosts.append(host)
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partition(self, side_a: list[Host], side_b: list[Host]) -> None:
        for a in side_a:
            for b in side_b:
                a.block(b)
                b.block(a)

    def heal(self) -> None:
        """Undo every partition/block; link_down is a separate fault, undone by link_up."""
        for h in self.hosts:
            h.unblock_all()

    def close(self) -> None:
        """Best effort on every step, then verify: a leaked namespace would poison later runs."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        for h in self.hosts:
            for p in h.procs:
                _signal_group(p, signal.SIGKILL)
        for h in self.hosts:
            for p in h.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
            _kill_netns_pids(h.ns)
            _sh("ip", "netns", "del", h.ns, check=False)
        our_ns = {h.ns for h in self.hosts}
        our_links = {h.veth for h in self.hosts} | ({self.bridge} - {""})
        deadline = time.monotonic() + 5
        while True:  # netns teardown is asynchronous in the kernel; veths linger briefly
            left_ns = [n for n in _netns_names() if n in our_ns]
            left_links = [n for n in _link_names() if n in our_links]
            left = left_ns + left_links
            if not left or time.monotonic() > deadline:
                break
            for ns in left_ns:
                _sh("ip", "netns", "del", ns, check=False)
            for link in left_links:
                _sh("ip", "link", "del", link, check=False)
            time.sleep(0.05)
        if self.suffix and not left:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(OWNER_DIR, self.suffix))
        if left:
            raise RuntimeError(f"netns harness left behind {left}")
