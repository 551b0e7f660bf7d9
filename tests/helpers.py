"""Starting real `meshd` processes for tests, and talking to them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from meshd.testing import free_ports


def free_port() -> int:
    """One port for a process that needs only one; a process with several takes `free_ports`."""
    return free_ports(1)[0]


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MeshdProcess:
    http_port: int
    dns_port: int
    grpc_port: int
    args: list[str]
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def spawn(self) -> None:
        """Start the process without waiting for it (tests that watch it come up)."""
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshd",
                    "agent",
                    *self.args,
                    f"-http-port={self.http_port}",
                    f"-dns-port={self.dns_port}",
                    f"-grpc-port={self.grpc_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def start(self, timeout: float = 20.0) -> MeshdProcess:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshd exited {self.proc.returncode}: {self.read_log()}")
            try:
                r = self.request("GET", "/v1/status/leader")
                if r.status == 200 and r.json() and self._settled():
                    return self
            except urllib.error.URLError as e:
                if not isinstance(e.reason, ConnectionRefusedError):  # refused: not up yet
                    raise RuntimeError(f"meshd start: {e.reason}: {self.read_log()}") from e
            time.sleep(0.05)
        raise RuntimeError(f"meshd did not become ready: {self.read_log()}")

    def _settled(self) -> bool:
        """The leader has marked this node alive (its serfHealth write is behind us)."""
        node = self.request("GET", "/v1/agent/self").json()["Config"]["NodeName"]
        checks = self.request("GET", f"/v1/health/node/{node}").json()
        return any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks)

    def read_log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Response:
        return http_request(self.http + path, method, body, timeout)

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("PUT", path, body if body is not None else b"", **kw)


def http_request(
    url: str, method: str = "GET", body: Any = None, timeout: float = 10.0
) -> Response:
    """One HTTP call; an error status is a Response too. Bytes go as-is, anything else as JSON."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return Response(e.code, e.read(), dict(e.headers))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_meshd(
    *args: str,
    http_addr: str | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The `meshd` CLI as a user runs it, pointed at `http_addr` (CONSUL_HTTP_ADDR cleared)."""
    e = {**os.environ, "PYTHONPATH": REPO}
    e.pop("CONSUL_HTTP_ADDR", None)
    if http_addr:
        e["MESHD_HTTP_ADDR"] = http_addr
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=e,
        timeout=30,
    )


def dev_agent(*extra: str, env: dict[str, str] | None = None) -> MeshdProcess:
    fd, log_path = tempfile.mkstemp(prefix="meshd-", suffix=".log")
    os.close(fd)
    http, dns, grpc = free_ports(3)
    return MeshdProcess(http, dns, grpc, ["-dev", *extra], log_path, env=env or {})


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


class BackgroundHTTP:
    """aiohttp servers on loopback, run on their own loop in a thread (test stand-ins)."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runners: list[Any] = []

    def serve(self, port: int, handler: Any, path: str = "/{tail:.*}") -> None:
        from aiohttp import web

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", path, handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners.append(runner)

        self._asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self) -> None:
        for r in self.runners:
            self._asyncio.run_coroutine_threadsafe(r.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def server_agent(
    tmp: str, *extra: str, name: str = "srv", config: dict[str, Any] | None = None
) -> MeshdProcess:
    """A real (non-dev) single server on loopback with its own RPC and Raft ports; the RPC
    port is `proc.rpc_port`, for client agents to join. `config` adds to its config file."""
    rpc, raft = free_ports(2)
    conf = os.path.join(tmp, f"{name}.json")
    with open(conf, "w") as f:
        json.dump(
            {
                "server": True,
                "bootstrap": True,
                "node_name": name,
                "data_dir": os.path.join(tmp, f"{name}-data"),
                "ports": {"server": rpc, "raft": raft},
                **(config or {}),
            },
            f,
        )
    proc = dev_agent("-config-file", conf, *extra)
    proc.args.remove("-dev")
    proc.rpc_port = rpc  # type: ignore[attr-defined]
    return proc


def client_agent(server: MeshdProcess, name: str, *extra: str) -> MeshdProcess:
    """A client agent (no -dev, no -server) that joins `server` over RPC."""
    rpc_port = server.rpc_port  # type: ignore[attr-defined]
    proc = dev_agent("-node", name, "-retry-join", f"127.0.0.1:{rpc_port}", *extra)
    proc.args.remove("-dev")
    return proc


def server_cluster(
    tmp: str, n: int = 3, config: dict[str, Any] | None = None
) -> list[MeshdProcess]:
    """`n` real servers on loopback that form one cluster (bootstrap_expect n, each joining the
    others' RPC ports), a node failure timeout of 2 s; not started: start them together."""
    flat = free_ports(2 * n)  # one pick: separate picks can hand out the same port twice
    ports = [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]
    key = base64.b64encode(os.urandom(32)).decode()  # servers with peers refuse to run without
    procs = []
    for i, (rpc, raft) in enumerate(ports):
        conf = os.path.join(tmp, f"s{i}.json")
        with open(conf, "w") as f:
            json.dump(
                {
                    "server": True,
                    "bootstrap_expect": n,
                    "node_name": f"s{i}",
                    "data_dir": os.path.join(tmp, f"s{i}"),
                    "ports": {"server": rpc, "raft": raft},
                    "retry_join": [f"127.0.0.1:{p}" for j, (p, _) in enumerate(ports) if j != i],
                    "limits": {"node_failure_timeout": 2},
                    "encrypt": key,
                    **(config or {}),
                },
                f,
            )
        proc = dev_agent("-config-file", conf)
        proc.args.remove("-dev")
        proc.rpc_port = rpc  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def start_all(procs: list[MeshdProcess], timeout: float = 60.0) -> None:
    """Start processes that wait for each other (a cluster forming) in parallel."""
    import threading

    errors: list[BaseException] = []

    def run(p: MeshdProcess) -> None:
        try:
            p.start(timeout=timeout)
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
