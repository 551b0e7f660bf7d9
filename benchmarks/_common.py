"""Shared helpers for the benchmark scripts in this directory (not a benchmark itself).

Everything here talks to 127.0.0.1 only. An agent started by `MeshdAgent` is stopped when the
`with` block ends, whether it ends normally, by an exception or by Ctrl-C / SIGTERM; as a last
resort the child is also asked (PR_SET_PDEATHSIG) to receive SIGTERM if this process dies.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from meshd.testing import free_ports

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (missing tool, agent failed to start, bad answers)."""


# --------------------------------------------------------------------------- tools / signals


def require_tool(binary: str, package: str) -> str:
    """The absolute path of `binary`, or BenchError naming the Debian package that provides it."""
    path = shutil.which(binary)
    if path is None:
        for extra in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
            candidate = Path(extra) / binary
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise BenchError(
            f"`{binary}` is not installed. Install it with:  apt-get install -y {package}\n"
            f"(or run benchmarks/run_all.sh, which installs what is missing)"
        )
    return path


def find_tool(binary: str) -> str | None:
    try:
        return require_tool(binary, "-")
    except BenchError:
        return None


def install_sigterm_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop the agent either way."""

    def _handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _handler)


def _child_dies_with_parent() -> None:
    """preexec_fn: SIGTERM this child if the benchmark process disappears (Linux only).

    Also give the child default SIGINT/SIGTERM handling: a benchmark started in the background
    by a non-interactive shell inherits an ignored SIGINT, which the agent would inherit too.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_main(main: Any) -> None:
    """Run `main()` and map the ways a benchmark ends onto exit codes and readable messages."""
    install_sigterm_as_interrupt()
    try:
        code = main()
    except BenchError as e:
        print(f"\nERROR: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted; agent and helper processes stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """One port for a process that binds only one; a process with several takes `free_ports`
    (meshd.testing), which picks them together so no two are the same."""
    return free_ports(1)[0]


# --------------------------------------------------------------------------- CPU accounting


def _proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int) -> list[int]:
    kids = _proc_children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime (all threads) of `pid` and its live descendants, from /proc/<pid>/stat."""
    total = 0
    for p in _tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLK_TCK


def children_cpu_seconds() -> float:
    """CPU used by this process's waited-for children (dnsperf, wrk) so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


@dataclass
class CpuMeter:
    """CPU used by process `pid` (with descendants) between start() and stop(), vs wall time.

    Also records how busy the whole machine was, so a reader can tell when something else
    (another test run, the kernel's network softirqs) competed for the cores.
    """

    pid: int
    cpu0: float = 0.0
    wall0: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0
    machine0: tuple[float, float] = (0.0, 0.0)
    machine_cores: float = math.nan

    def start(self) -> CpuMeter:
        self.cpu0, self.wall0 = cpu_seconds(self.pid), time.monotonic()
        self.machine0 = machine_busy_seconds()
        return self

    def stop(self) -> CpuMeter:
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        self.wall = time.monotonic() - self.wall0
        busy, total = machine_busy_seconds()
        d_total = total - self.machine0[1]
        if d_total > 0:
            self.machine_cores = (busy - self.machine0[0]) / d_total * (os.cpu_count() or 1)
        return self

    @property
    def cores(self) -> float:
        """Cores busy on average (1.0 = one core fully used)."""
        return self.cpu / self.wall if self.wall > 0 else 0.0


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "", left: int = 1
) -> str:
    """A plain-text table: the first `left` columns left-aligned, the rest (numbers) right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def render(cells: Sequence[str]) -> str:
        out = []
        for i, (c, w) in enumerate(zip(cells, widths, strict=True)):
            out.append(c.ljust(w) if i < left else c.rjust(w))
        return "| " + " | ".join(out) + " |"

    parts = [title] if title else []
    parts += [line, render(headers), line, *(render(r) for r in rows), line]
    return "\n".join(parts)


def result_line(name: str, values: dict[str, float | int | str]) -> str:
    def one(v: float | int | str) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    return "RESULT " + " ".join([f"bench={name}", *(f"{k}={one(v)}" for k, v in values.items())])


def machine_summary() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"host: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}"


def fs_type(path: str) -> str:
    """Filesystem type holding `path` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


# --------------------------------------------------------------------------- HTTP (blocking)


def http(
    method: str,
    port: int,
    path: str,
    body: Any = None,
    timeout: float = 10.0,
    token: str | None = None,
) -> Any:
    """One blocking request to the agent; returns decoded JSON (or text); raises on non-2xx.
    `token`: an ACL token, sent as X-Consul-Token."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-Consul-Token": token} if token else {}
    req = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise BenchError(f"{method} {path} -> HTTP {e.code}: {e.read()[:300]!r}") from None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


# --------------------------------------------------------------------------- the agent


@dataclass
class MeshdAgent:
    """A meshd agent on free loopback ports, running for the duration of a `with` block.

    mode "dev": `-dev` (in-memory server+agent). mode "data-dir": a non-dev single server
    (`-server -bootstrap-expect=1 -data-dir=...`), so writes pay for the Raft journal flushes.
    """

    mode: str = "dev"  # "dev", "data-dir" (single non-dev server) or "client" (needs retry_join)
    node: str = "bench"
    retry_join: str = ""  # "127.0.0.1:<server port>" of a data-dir server, for mode "client"
    dns: bool = True
    data_dir: str | None = None  # parent directory for the data-dir mode's temporary data dir
    startup_timeout: float = 60.0
    http_port: int = 0
    dns_port: int = -1
    server_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    workdir: str = ""
    log_path: str = ""
    extra: list[str] = field(default_factory=list)

    def __enter__(self) -> MeshdAgent:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        http_port, grpc_port, server_port, raft_port, dns_port = free_ports(5)
        self.http_port, self.server_port = http_port, server_port
        self.dns_port = dns_port if self.dns else -1
        args = [
            sys.executable,
            "-m",
            "meshd",
            "agent",
            "-node",
            self.node,
            "-log-level",
            "warn",
            f"-http-port={http_port}",
            f"-dns-port={self.dns_port}",
            f"-grpc-port={grpc_port}",
        ]
        if self.mode != "client":
            args.append(f"-server-port={server_port}")
        if self.mode == "dev":
            args.insert(4, "-dev")
        elif self.mode == "client":
            if not self.retry_join:
                raise BenchError("a client agent needs retry_join")
            args += [f"-retry-join={self.retry_join}"]
        elif self.mode == "data-dir":
            cfg = Path(self.workdir) / "ports.json"
            cfg.write_text(json.dumps({"ports": {"raft": raft_port}}))
            data = Path(self.workdir) / "data"
            args += ["-server", "-bootstrap-expect=1", f"-data-dir={data}", f"-config-file={cfg}"]
        else:
            raise BenchError(f"unknown agent mode {self.mode!r}")
        return args + self.extra

    def start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"meshd-bench-{self.mode}-", dir=self.data_dir)
        self.log_path = str(Path(self.workdir) / "agent.log")
        args = self.command()
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                args,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_child_dies_with_parent,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                code = self.proc.returncode
                self.stop()
                raise BenchError(f"meshd exited with {code} while starting:\n{tail}")
            try:
                leader = http("GET", self.http_port, "/v1/status/leader", timeout=2.0)
                if leader:
                    return
            except (OSError, BenchError):
                pass
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise BenchError(
            f"meshd did not elect a leader within {self.startup_timeout:.0f}s:\n{tail}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    proc.send_signal(sig)
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""


@contextmanager
def managed_process(args: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A helper daemon (dnsmasq) that is stopped, by its pid, when the block ends."""
    proc = subprocess.Popen(
        list(args), start_new_session=True, preexec_fn=_child_dies_with_parent, **kwargs
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def run_bounded(
    args: Sequence[str], timeout: float, stdout_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a load generator to completion with a hard time limit (killed if it overruns).

    With `stdout_path`, its stdout goes to that file and is read back only after it exits: a
    pipe drained by this (Python) process while the load runs steals CPU from the server.
    """
    try:
        if stdout_path is None:
            return subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=_child_dies_with_parent,
                check=False,
            )
        with open(stdout_path, "wb") as out:
            proc = subprocess.run(
                list(args),
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=timeout,
                preexec_fn=_child_dies_with_parent,
                check=False,
            )
        text = Path(stdout_path).read_text(errors="replace")
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, text, proc.stderr.decode(errors="replace")
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{args[0]} did not finish within {timeout:.0f}s") from e
