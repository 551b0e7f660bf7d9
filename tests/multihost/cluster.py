"""Running real meshd servers and client agents on namespace hosts."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from typing import Any

from helpers import REPO, Response, http_request
from rpc_certs import TestCA

# What a request to a killed, restarting or partitioned node raises: the connection is refused
# (no process) or reset (killed mid-request), or nothing answers in time (partitions drop
# packets; a cluster without a leader holds a write). Any other OSError is a bug and propagates.
UNREACHABLE = (ConnectionError, TimeoutError)


def node_request(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Response:
    """`http_request`, raising the socket error itself where urllib wraps it in a URLError."""
    try:
        return http_request(url, method, body, timeout)
    except urllib.error.URLError as e:
        if isinstance(e.reason, OSError):
            raise e.reason from e
        raise


def keygen() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class Node:
    host: Any  # netns.Host
    name: str
    args: list[str]
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://{self.host.addr}:8500"

    def start(self) -> Node:
        cmd = [
            sys.executable,
            "-m",
            "meshd",
            "agent",
            f"-node={self.name}",
            f"-bind={self.host.addr}",
            f"-client={self.host.addr}",
            *self.args,
        ]
        self.proc = self.host.popen(
            cmd, self.log_path, env={**os.environ, "PYTHONPATH": REPO, **self.env}
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.host.kill(self.proc, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.host.kill(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-3000:]
        except FileNotFoundError:  # not started yet
            return ""

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or raw bytes, headers); an error's body as text."""
        r = node_request(self.http + path, method, body, timeout)
        if r.status >= 400:
            return r.status, r.body.decode(errors="replace"), r.headers
        return r.status, _maybe_json(r.body), r.headers

    def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: Any = b"", **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return self.request("PUT", path, body, **kw)

    def leader(self) -> str:
        try:
            status, body, _ = self.get("/v1/status/leader", timeout=2)
        except UNREACHABLE:
            return ""
        return body if status == 200 and isinstance(body, str) else ""


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class Cluster:
    def __init__(
        self,
        net: Any,
        n_servers: int = 3,
        key: str | None = None,
        extra: list[str] | None = None,
        tls: bool = True,
    ) -> None:
        self.net = net
        self.key = key if key is not None else keygen()
        self.tmp = tempfile.mkdtemp(prefix="meshd-mh-")
        self.ca = TestCA(os.path.join(self.tmp, "tls")) if tls else None
        self.servers: list[Node] = []
        self.clients: list[Node] = []
        hosts = net.hosts
        server_hosts = hosts[:n_servers]
        for i, h in enumerate(server_hosts):
            joins = [f"-retry-join={o.addr}" for o in server_hosts if o is not h]
            self.servers.append(
                self._node(
                    h,
                    f"s{i + 1}",
                    ["-server", f"-bootstrap-expect={n_servers}", *joins, *(extra or [])],
                )
            )
        for i, h in enumerate(hosts[n_servers:]):
            joins = [f"-retry-join={o.addr}" for o in server_hosts]
            self.clients.append(self._node(h, f"c{i + 1}", [*joins, *(extra or [])]))

    def _node(self, host: Any, name: str, args: list[str]) -> Node:
        data_dir = os.path.join(self.tmp, name)
        os.makedirs(data_dir, exist_ok=True)
        conf = os.path.join(data_dir, "test.json")
        doc: dict[str, Any] = {"limits": {"node_failure_timeout": "3s"}}
        if self.ca is not None:
            server = "-server" in args
            cert, key = self.ca.issue(
                name,
                ["server.dc1.consul"] if server else [f"{name}.client.dc1.consul"],
                [host.addr],
            )
            doc["tls"] = {
                "defaults": {
                    "ca_file": self.ca.ca_file,
                    "cert_file": cert,
                    "key_file": key,
                    "verify_incoming": True,
                    "verify_outgoing": True,
                },
                "internal_rpc": {"verify_server_hostname": True},
            }
        with open(conf, "w") as f:
            json.dump(doc, f)
        full = [*args, f"-data-dir={data_dir}", f"-config-file={conf}"]
        if self.key:
            full.append(f"-encrypt={self.key}")
        return Node(host, name, full, data_dir, os.path.join(self.tmp, f"{name}.log"))

    def start(self, clients: bool = True) -> Cluster:
        for s in self.servers:
            s.start()
        self.wait_leader()
        if clients:
            for c in self.clients:
                c.start()
            for c in self.clients:
                wait(lambda c=c: c.leader(), 30, f"client {c.name} up:\n{c.log()}")
        return self

    def wait_leader(self, among: list[Node] | None = None, timeout: float = 30) -> str:
        nodes = among or [s for s in self.servers if s.proc and s.proc.poll() is None]

        def agreed() -> str:
            leaders = {s.leader() for s in nodes}
            return leaders.pop() if len(leaders) == 1 and "" not in leaders else ""

        return wait(
            agreed,
            timeout,
            "no agreed leader:\n" + "\n".join(f"--- {s.name}\n{s.log()}" for s in nodes),
        )

    def leader_node(self) -> Node:
        addr = self.wait_leader()
        host = addr.rsplit(":", 1)[0]
        return next(s for s in self.servers if s.host.addr == host)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log()}" for n in self.servers + self.clients)

    def close(self) -> None:
        for n in self.clients + self.servers:
            n.kill()


def wait(pred: Any, timeout: float, msg: str = "", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
        except UNREACHABLE:
            v = None
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {msg}")
