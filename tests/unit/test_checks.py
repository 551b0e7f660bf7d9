"""Health-check runner tests against real local servers (HTTP, TCP, UDP, gRPC, subprocesses).

Intervals are tens of milliseconds so the whole file runs in seconds; every wait is a bounded
poll, so a regression fails with a message instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshd.agent.checks import (
    CheckRunner,
    CheckState,
    ScriptChecksDisabledError,
    alias_result,
    http_status,
    next_status,
    step,
)
from meshd.agent.definitions import CheckDefinition, DefinitionError
from meshd.structs import HealthCheck

pytestmark = pytest.mark.timeout(30)

Update = tuple[str, str, str]


def mk(type_: str, **kw: Any) -> CheckDefinition:
    kw.setdefault("CheckID", "c1")
    kw.setdefault("Name", kw["CheckID"])
    if type_ not in ("ttl",):
        kw.setdefault("Interval", 0.03)
    kw.setdefault("Timeout", 1.0)
    return CheckDefinition(Type=type_, **kw)


@dataclass
class Recorder:
    updates: list[Update] = field(default_factory=list)

    def __call__(self, cid: str, status: str, output: str) -> None:
        self.updates.append((cid, status, output))

    def of(self, cid: str = "c1") -> list[Update]:
        return [u for u in self.updates if u[0] == cid]

    async def until(self, pred: Callable[[Update], bool], timeout: float = 3.0) -> Update:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for u in self.updates:
                if pred(u):
                    return u
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching update within {timeout}s; got {self.updates!r}")

    async def status(self, status: str, cid: str = "c1", timeout: float = 3.0) -> str:
        u = await self.until(lambda u: u[0] == cid and u[1] == status, timeout)
        return u[2]


@pytest_asyncio.fixture
async def rec() -> AsyncIterator[Recorder]:
    yield Recorder()


@pytest_asyncio.fixture
async def runner(rec: Recorder) -> AsyncIterator[CheckRunner]:
    r = CheckRunner(rec, enable_script_checks=True)
    yield r
    await r.close()


def _bound(kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    return s


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on: bind to learn one, then close it."""
    with _bound(kind) as s:
        return s.getsockname()[1]


# ---- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "want"),
    [
        (200, "passing"),
        (204, "passing"),
        (299, "passing"),
        (429, "warning"),
        (199, "critical"),
        (301, "critical"),
        (404, "critical"),
        (500, "critical"),
        (503, "critical"),
    ],
)
def test_http_status(code: int, want: str) -> None:
    assert http_status(code) == want


def _run(d: CheckDefinition, state: CheckState, results: list[str]) -> list[tuple[str, bool]]:
    out = []
    for r in results:
        state, reported = step(state, r, d)
        out.append((state.status, reported))
    return out


def test_counters_default_report_every_result() -> None:
    d = mk("tcp", TCP="x:1")
    got = _run(d, CheckState.initial(d), ["passing", "critical", "warning", "passing"])
    assert got == [("passing", True), ("critical", True), ("warning", True), ("passing", True)]


def test_counters_first_result_immediate_then_damped() -> None:
    """Consul's StatusHandler starts at the thresholds: the first result is reported at once."""
    d = mk(
        "tcp", TCP="x:1", SuccessBeforePassing=2, FailuresBeforeWarning=2, FailuresBeforeCritical=3
    )
    got = _run(
        d,
        CheckState.initial(d),
        ["passing", "critical", "critical", "critical", "passing", "passing"],
    )
    assert got == [
        ("passing", True),  # first result goes straight through
        ("passing", False),  # 1 failure: held
        ("warning", True),  # 2 failures: warning
        ("critical", True),  # 3 failures: critical
        ("critical", False),  # 1 success: held
        ("passing", True),  # 2 successes: passing
    ]


def test_counters_warning_defaults_to_critical_threshold() -> None:
    d = mk("tcp", TCP="x:1", FailuresBeforeCritical=2)
    got = _run(d, CheckState("passing"), ["critical", "critical"])
    assert got == [("passing", False), ("critical", True)]


def test_counters_success_resets_failures_and_warning_counts_as_success() -> None:
    d = mk("tcp", TCP="x:1", FailuresBeforeCritical=2, SuccessBeforePassing=2)
    got = _run(
        d,
        CheckState("passing", successes=2),
        ["critical", "warning", "critical", "warning", "warning"],
    )
    assert got == [
        ("passing", False),
        ("passing", False),
        ("passing", False),
        ("passing", False),
        ("warning", True),
    ]


def test_next_status_is_pure() -> None:
    d = mk("tcp", TCP="x:1", SuccessBeforePassing=3)
    s = CheckState("critical", successes=1)
    assert next_status(s, "passing", d) == "critical"
    assert next_status(s, "passing", d) == "critical"
    assert s == CheckState("critical", successes=1)
    assert next_status(CheckState("critical", successes=2), "passing", d) == "passing"


def hc(
    status: str, sid: str = "web", node: str = "n1", name: str = "chk", output: str = ""
) -> HealthCheck:
    return HealthCheck(
        Node=node, CheckID=f"{name}-{sid}", Name=name, Status=status, ServiceID=sid, Output=output
    )


def test_alias_result_worst_wins() -> None:
    assert alias_result(None, "", "web") == ("critical", "No checks found.")
    assert alias_result([], "", "web") == ("passing", "No checks found.")
    assert alias_result([hc("passing")], "", "web") == ("passing", "All checks passing.")
    st, out = alias_result([hc("passing"), hc("warning", name="w", output="slow")], "", "web")
    assert (st, out) == ("warning", 'Aliased check "w" failing: slow')
    checks = [hc("warning"), hc("critical", name="x"), hc("passing"), hc("warning")]
    assert alias_result(checks, "", "web")[0] == "critical"
    # Node-level checks (no ServiceID) count; other services' and other nodes' do not.
    assert alias_result([hc("passing"), hc("critical", sid="")], "", "web")[0] == "critical"
    assert alias_result([hc("passing"), hc("critical", sid="db")], "", "web")[0] == "passing"
    assert alias_result([hc("passing"), hc("critical", node="n2")], "n1", "web")[0] == "passing"


# ---- HTTP -------------------------------------------------------------------------------------


@dataclass
class HTTPServer:
    url: str
    codes: list[int]
    seen: list[web.Request]


async def _start_app(
    app: web.Application,
    ssl_ctx: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    r = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.2)
    await r.setup()
    sock = _bound()
    port = sock.getsockname()[1]
    await web.SockSite(r, sock, ssl_context=ssl_ctx).start()
    return r, port


def _app(codes: list[int], seen: list[web.Request]) -> web.Application:
    async def status(req: web.Request) -> web.Response:
        return web.Response(status=int(req.match_info["code"]), text="hello")

    async def dynamic(req: web.Request) -> web.Response:
        return web.Response(status=codes[0], text=f"code {codes[0]}")

    async def echo(req: web.Request) -> web.Response:
        seen.append(req)
        body = await req.text()
        return web.Response(
            text=f"{req.method} {req.headers.getall('X-Multi', [])} "
            f"{req.headers.get('User-Agent')} {req.host} {body}"
        )

    async def big(req: web.Request) -> web.Response:
        return web.Response(body=b"a" * 50 + b"b" * 100_000)

    async def slow(req: web.Request) -> web.Response:
        await asyncio.sleep(float(req.query.get("s", "2")))
        return web.Response(text="late")

    async def redirect(req: web.Request) -> web.Response:
        raise web.HTTPFound("/status/200")

    app = web.Application()
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/dynamic", dynamic)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    return app


@pytest_asyncio.fixture
async def http_server() -> AsyncIterator[HTTPServer]:
    codes, seen = [200], []
    r, port = await _start_app(_app(codes, seen))
    yield HTTPServer(f"http://127.0.0.1:{port}", codes, seen)
    await r.cleanup()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "status"), [(200, "passing"), (429, "warning"), (500, "critical")]
)
async def test_http_status_codes(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer, code: int, status: str
) -> None:
    url = f"{http_server.url}/status/{code}"
    runner.add(mk("http", HTTP=url, Status="passing" if code != 200 else "critical"))
    out = await rec.status(status)
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}[code]
    assert out == f"HTTP GET {url}: {code} {reason} Output: hello"


@pytest.mark.asyncio
async def test_http_method_headers_body(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    url = f"{http_server.url}/echo"
    runner.add(
        mk(
            "http",
            HTTP=url,
            Method="PUT",
            Body="payload",
            Header={"X-Multi": ["a", "b"], "Host": ["svc.example"]},
        )
    )
    out = await rec.status("passing")
    assert out == (
        f"HTTP PUT {url}: 200 OK Output: PUT ['a', 'b'] Consul Health Check svc.example payload"
    )


@pytest.mark.asyncio
async def test_http_follows_redirects(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    url = f"{http_server.url}/redirect"
    runner.add(mk("http", HTTP=url))
    assert await rec.status("passing") == f"HTTP GET {url}: 200 OK Output: hello"


@pytest.mark.asyncio
async def test_http_output_truncated(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    runner.add(mk("http", HTTP=f"{http_server.url}/big", OutputMaxSize=80))
    out = await rec.status("passing")
    assert out.endswith("Output: " + "a" * 50 + "b" * 30)


@pytest.mark.asyncio
async def test_http_timeout_and_refused(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    runner.add(
        mk(
            "http",
            CheckID="slow",
            HTTP=f"{http_server.url}/slow?s=3",
            Timeout=0.3,
            Status="passing",
        )
    )
    refused = f"http://127.0.0.1:{closed_port()}/"
    runner.add(mk("http", CheckID="refused", HTTP=refused, Status="passing"))
    # critical with the timeout's reason, not the slow server's answer 3 s later
    assert "timed out after 0.3s" in await rec.status("critical", "slow")
    assert (await rec.status("critical", "refused")).startswith(f"HTTP GET {refused}: ")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    assert shutil.which("openssl"), "scripts/test installs openssl"
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.asyncio
async def test_https_tls_skip_verify(
    runner: CheckRunner, rec: Recorder, self_signed: tuple[str, str]
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*self_signed)
    r, port = await _start_app(_app([200], []), ctx)
    try:
        url = f"https://127.0.0.1:{port}/status/200"
        runner.add(mk("http", CheckID="skip", HTTP=url, TLSSkipVerify=True))
        runner.add(mk("http", CheckID="verify", HTTP=url, Status="passing"))
        assert (await rec.status("passing", "skip")).endswith("200 OK Output: hello")
        assert "certificate" in (await rec.status("critical", "verify")).lower()
    finally:
        await r.cleanup()


@pytest.mark.asyncio
async def test_counters_through_runner(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    runner.add(
        mk(
            "http",
            HTTP=f"{http_server.url}/dynamic",
            FailuresBeforeWarning=2,
            FailuresBeforeCritical=4,
            SuccessBeforePassing=3,
        )
    )
    await rec.status("passing")
    http_server.codes[0] = 500
    await rec.status("critical")
    http_server.codes[0] = 200
    await rec.until(lambda u: len(rec.of()) == 4)
    assert [u[1] for u in rec.of()] == ["passing", "warning", "critical", "passing"]


# ---- TCP / UDP --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tcp(runner: CheckRunner, rec: Recorder) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dead = closed_port()
    try:
        runner.add(mk("tcp", CheckID="up", TCP=f"127.0.0.1:{port}"))
        runner.add(mk("tcp", CheckID="down", TCP=f"127.0.0.1:{dead}", Status="passing"))
        assert await rec.status("passing", "up") == f"TCP connect 127.0.0.1:{port}: Success"
        assert (await rec.status("critical", "down")).startswith(f"dial tcp 127.0.0.1:{dead}:")
    finally:
        server.close()
        await server.wait_closed()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"pong", addr)  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_udp(runner: CheckRunner, rec: Recorder) -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    silent = _bound(socket.SOCK_DGRAM)  # bound, never answers: Consul calls that healthy
    e_port = echo.get_extra_info("sockname")[1]
    s_port = silent.getsockname()[1]
    dead = closed_port(socket.SOCK_DGRAM)
    try:
        runner.add(mk("udp", CheckID="echo", UDP=f"127.0.0.1:{e_port}"))
        runner.add(mk("udp", CheckID="silent", UDP=f"127.0.0.1:{s_port}", Timeout=0.2))
        runner.add(mk("udp", CheckID="dead", UDP=f"127.0.0.1:{dead}", Status="passing"))
        assert await rec.status("passing", "echo") == f"UDP connect 127.0.0.1:{e_port}: Success"
        await rec.status("passing", "silent")
        assert "refused" in (await rec.status("critical", "dead")).lower()
    finally:
        echo.close()
        silent.close()


# ---- gRPC -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_grpc(runner: CheckRunner, rec: Recorder) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await servicer.set("", serving)
    await servicer.set("api", serving)
    await servicer.set("sick", health_pb2.HealthCheckResponse.NOT_SERVING)
    dead = closed_port()
    try:
        a = f"127.0.0.1:{port}"
        runner.add(mk("grpc", CheckID="whole", GRPC=a))
        runner.add(mk("grpc", CheckID="api", GRPC=f"{a}/api"))
        runner.add(mk("grpc", CheckID="sick", GRPC=f"{a}/sick", Status="passing"))
        runner.add(mk("grpc", CheckID="unknown", GRPC=f"{a}/nope", Status="passing"))
        runner.add(mk("grpc", CheckID="dead", GRPC=f"127.0.0.1:{dead}", Status="passing"))
        assert await rec.status("passing", "whole") == f"gRPC check {a}: success"
        assert await rec.status("passing", "api") == f"gRPC check {a}/api: success"
        assert await rec.status("critical", "sick") == f"gRPC {a}/sick serving status: NOT_SERVING"
        assert "NOT_FOUND" in await rec.status("critical", "unknown")
        assert "UNAVAILABLE" in await rec.status("critical", "dead")
        await servicer.set("api", health_pb2.HealthCheckResponse.NOT_SERVING)
        await rec.status("critical", "api")
    finally:
        await runner.close()
        await server.stop(None)


# ---- script -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_script_exit_codes(runner: CheckRunner, rec: Recorder) -> None:
    runner.add(mk("script", CheckID="ok", Args=["sh", "-c", "echo fine"]))
    runner.add(mk("script", CheckID="warn", Args=["sh", "-c", "echo meh >&2; exit 1"]))
    runner.add(mk("script", CheckID="crit", Args=["sh", "-c", "exit 2"], Status="passing"))
    runner.add(mk("script", CheckID="missing", Args=["/nonexistent/check"], Status="passing"))
    assert await rec.status("passing", "ok") == "fine\n"
    assert await rec.status("warning", "warn") == "meh\n"
    assert await rec.status("critical", "crit") == ""
    assert "Check failed to invoke" in await rec.status("critical", "missing")


@pytest.mark.asyncio
async def test_script_output_capped_keeps_tail(runner: CheckRunner, rec: Recorder) -> None:
    runner.add(
        mk(
            "script",
            Args=["sh", "-c", "printf 'x%.0s' $(seq 1 1000); printf END"],
            OutputMaxSize=20,
        )
    )
    out = await rec.status("passing")
    assert out == "Captured 20 of 1003 bytes\n...\n" + "x" * 17 + "END"


def _alive(pid: int) -> bool:
    """Zombies count as dead: a killed grandchild is reparented to a PID 1 that may not reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def _read_pid(path: Path) -> int:
    for _ in range(300):
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        await asyncio.sleep(0.01)
    raise AssertionError("script never wrote its pid")


@pytest.mark.asyncio
async def test_script_timeout_kills_process_group(
    runner: CheckRunner, rec: Recorder, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo started; sleep 30 & echo $! > {pidfile}; wait"
    runner.add(mk("script", Args=["sh", "-c", script], Timeout=0.4, Interval=0.5, Status="passing"))
    out = await rec.status("critical")
    assert out == "Timed out (0.4s) running check\n\nstarted\n"
    grandchild = await _read_pid(pidfile)
    assert not _alive(grandchild)


@pytest.mark.asyncio
async def test_remove_and_close_kill_running_script(rec: Recorder, tmp_path: Path) -> None:
    r = CheckRunner(rec, enable_script_checks=True)
    pids = []
    for cid in ("a", "b"):
        pf = tmp_path / cid
        r.add(
            mk(
                "script",
                CheckID=cid,
                Args=["sh", "-c", f"sleep 30 & echo $! > {pf}; wait"],
                Timeout=20,
                Interval=0.01,
            )
        )
        pids.append(await _read_pid(pf))
    r.remove("a")
    await r.close()
    await asyncio.sleep(0.05)
    assert not any(_alive(p) for p in pids)
    assert rec.updates == []


def test_script_checks_disabled() -> None:
    r = CheckRunner(Recorder())
    with pytest.raises(ScriptChecksDisabledError) as ei:
        r.add(mk("script", Args=["true"]))
    assert str(ei.value) == (
        "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true"
    )
    assert isinstance(ei.value, DefinitionError)
    assert "c1" not in r


# ---- TTL --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl(runner: CheckRunner, rec: Recorder) -> None:
    runner.add(mk("ttl", TTL=0.3, Status="passing"))
    await asyncio.sleep(0.15)
    assert rec.updates == []  # the initial status is the caller's, never echoed
    assert await rec.status("critical", timeout=1.0) == "TTL expired"
    runner.update_ttl("c1", "passing", "all good")
    assert rec.updates[-1] == ("c1", "passing", "all good")
    t0 = time.monotonic()
    for _ in range(3):  # each update re-arms the timer
        await asyncio.sleep(0.15)
        runner.update_ttl("c1", "warning", "all good")
    assert [u[1] for u in rec.updates] == ["critical", "passing", "warning"]
    await rec.until(lambda u: len(rec.updates) == 4)
    assert time.monotonic() - t0 >= 0.6
    assert rec.updates[-1] == (
        "c1",
        "critical",
        "TTL expired (last output before timeout follows): all good",
    )


@pytest.mark.asyncio
async def test_ttl_errors_and_truncation(runner: CheckRunner, rec: Recorder) -> None:
    runner.add(mk("ttl", CheckID="t", TTL=10.0, OutputMaxSize=5))
    runner.add(mk("tcp", CheckID="notttl", TCP="127.0.0.1:1", Interval=10.0))
    with pytest.raises(KeyError):
        runner.update_ttl("nope", "passing", "")
    with pytest.raises(KeyError):
        runner.update_ttl("notttl", "passing", "")
    with pytest.raises(ValueError, match="invalid"):
        runner.update_ttl("t", "bogus", "")
    runner.update_ttl("t", "passing", "0123456789")
    assert rec.updates == [("t", "passing", "01234 ... (captured 5 of 10 bytes)")]


# ---- alias ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_alias_follows_source(rec: Recorder) -> None:
    view: dict[tuple[str | None, str], list[HealthCheck] | None] = {
        (None, "web"): [hc("passing")],
        ("n2", "db"): [hc("critical", "db", "n2", output="x")],
    }

    async def source(node: str | None, sid: str) -> list[HealthCheck] | None:
        return view.get((node, sid))

    r = CheckRunner(rec, alias_source=source)
    try:
        r.add(mk("alias", CheckID="a-web", AliasService="web", Interval=0.03))
        r.add(
            mk(
                "alias",
                CheckID="a-db",
                AliasService="db",
                AliasNode="n2",
                Interval=0.03,
                Status="passing",
            )
        )
        r.add(mk("alias", CheckID="a-none", AliasService="ghost", Interval=0.03, Status="passing"))
        assert await rec.status("passing", "a-web") == "All checks passing."
        assert await rec.status("critical", "a-db") == 'Aliased check "chk" failing: x'
        assert await rec.status("critical", "a-none") == "No checks found."
        view[(None, "web")] = [hc("passing"), hc("warning", name="w", output="hm")]
        assert await rec.status("warning", "a-web") == 'Aliased check "w" failing: hm'
    finally:
        await r.close()


@pytest.mark.asyncio
async def test_alias_source_error_is_critical(rec: Recorder) -> None:
    def source(node: str | None, sid: str) -> list[HealthCheck] | None:
        raise RuntimeError("boom")

    r = CheckRunner(rec, alias_source=source)
    r.add(mk("alias", AliasService="web", Status="passing"))
    try:
        assert "boom" in await rec.status("critical")
    finally:
        await r.close()


# ---- runner behaviour -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_slow_check_does_not_delay_fast_one(rec: Recorder, http_server: HTTPServer) -> None:
    calls: list[float] = []

    def source(node: str | None, sid: str) -> list[HealthCheck]:
        calls.append(time.monotonic())
        return []

    r = CheckRunner(rec, alias_source=source)
    try:
        r.add(
            mk(
                "http",
                CheckID="slow",
                HTTP=f"{http_server.url}/slow?s=5",
                Timeout=1.0,
                Interval=0.01,
            )
        )
        r.add(mk("alias", CheckID="fast", AliasService="web", Interval=0.02))
        await asyncio.sleep(0.5)
        assert len(calls) >= 10  # ~25 polls unless the slow probe blocks the loop or the fast one
        assert rec.of("slow") == []  # the slow one is still in flight
        assert rec.of("fast") == [("fast", "passing", "No checks found.")]
    finally:
        await r.close()


@pytest.mark.asyncio
async def test_reports_only_changes_and_add_replaces(
    runner: CheckRunner, rec: Recorder, http_server: HTTPServer
) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runner.add(mk("tcp", TCP=f"127.0.0.1:{port}", Interval=0.02))
        await rec.status("passing")
        await asyncio.sleep(0.2)  # ~10 more identical results
        assert len(rec.of()) == 1
        dead = closed_port()
        runner.add(mk("tcp", TCP=f"127.0.0.1:{dead}", Interval=0.02, Status="passing"))
        await rec.status("critical")
        runner.remove("c1")
        runner.remove("c1")  # idempotent
        n = len(rec.updates)
        await asyncio.sleep(0.1)
        assert len(rec.updates) == n
        assert runner.get("c1") is None
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_first_run_is_staggered_within_interval() -> None:
    """Consul starts each check at a random point of its interval, so that an agent restart
    does not fire every check at once: eight checks' first results do not come together."""
    first: dict[str, float] = {}

    def record(cid: str, status: str, output: str) -> None:
        first.setdefault(cid, time.monotonic())

    runner = CheckRunner(record)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for i in range(8):
            runner.add(mk("tcp", CheckID=f"s{i}", TCP=f"127.0.0.1:{port}", Interval=0.4))
        for _ in range(1000):
            if len(first) == 8:
                break
            await asyncio.sleep(0.01)
        assert len(first) == 8, first
        # uniform starts over 0.4 s: all eight within 50 ms of each other has odds of ~1e-5
        assert max(first.values()) - min(first.values()) > 0.05, first
    finally:
        await runner.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_callback_errors_do_not_kill_check() -> None:
    seen: list[str] = []

    def bad(cid: str, status: str, output: str) -> None:
        seen.append(status)
        raise RuntimeError("callback bug")

    calls = [0]

    def source(node: str | None, sid: str) -> list[HealthCheck]:
        calls[0] += 1
        return [hc("passing" if calls[0] % 2 else "critical")]

    r = CheckRunner(bad, alias_source=source)
    r.add(mk("alias", AliasService="web", Interval=0.01))
    try:
        for _ in range(200):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(seen) >= 3
    finally:
        await r.close()
    with pytest.raises(RuntimeError):
        r.add(mk("alias", AliasService="web"))


def test_unknown_type_rejected() -> None:
    with pytest.raises(DefinitionError):
        CheckRunner(Recorder()).add(mk("docker"))


@pytest.mark.asyncio
async def test_signal_exit_is_critical(runner: CheckRunner, rec: Recorder) -> None:
    runner.add(mk("script", Args=["sh", "-c", f"kill -{int(signal.SIGTERM)} $$"], Status="passing"))
    await rec.status("critical")
