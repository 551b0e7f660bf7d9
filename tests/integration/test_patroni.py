"""Patroni (Debian's package) with `meshd agent -dev` as its Consul DCS: elect, stream, fail over.

Patroni takes its leader key with `?acquire=` on a TTL session (behaviour `delete`, lock-delay
0) and renews it every loop; a leader that dies stops renewing, the servers end the session
2x TTL later and delete the key, and the replica takes the key and promotes itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import MeshdProcess, dev_agent, wait_for

from meshd.durations import parse_duration_seconds
from meshd.testing import free_ports

PG_BIN = "/usr/lib/postgresql/15/bin"
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs PostgreSQL as the postgres user: root"),
    pytest.mark.skipif(  # never in CI: there a missing install step must fail the run
        not (shutil.which("patroni") and os.path.exists(f"{PG_BIN}/postgres"))
        and not os.environ.get("CI"),
        reason="needs Debian's patroni and postgresql (scripts/test installs them)",
    ),
]
PATRONI_TTL = 20  # Patroni asks meshd for a 10 s session (half), which lapses after 2x


@dataclass
class Member:
    name: str
    dir: str
    rest_port: int
    pg_port: int
    proc: subprocess.Popen[bytes] | None = None

    def state(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/", timeout=2) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as e:  # 503 for a replica: the body is the state still
            return dict(json.load(e))
        except OSError:
            return {}

    def is_primary(self) -> bool:
        return self.state().get("role") in ("master", "primary")

    def sql(self, query: str) -> str:
        r = subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-h", self.dir, "-p",
             str(self.pg_port), "-U", "postgres", "-tAc", query],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """kill -9 Patroni and its PostgreSQL (which runs in a session of its own)."""
        pid = self.postmaster_pid()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _config(m: Member, scope: str, agent: MeshdProcess) -> str:
    return f"""
scope: {scope}
name: {m.name}
restapi:
  listen: 127.0.0.1:{m.rest_port}
  connect_address: 127.0.0.1:{m.rest_port}
consul:
  host: 127.0.0.1:{agent.http_port}
  register_service: false
bootstrap:
  dcs:
    ttl: {PATRONI_TTL}
    loop_wait: 2
    retry_timeout: 5
  initdb: [{{encoding: UTF8}}]
  pg_hba:
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
  - local all all trust
postgresql:
  listen: 127.0.0.1:{m.pg_port}
  connect_address: 127.0.0.1:{m.pg_port}
  data_dir: {m.dir}/data
  bin_dir: {PG_BIN}
  pgpass: {m.dir}/pgpass
  authentication:
    superuser: {{username: postgres, password: pw}}
    replication: {{username: replicator, password: rpw}}
  parameters:
    unix_socket_directories: {m.dir}
"""


@pytest.fixture
def patroni() -> Iterator[tuple[MeshdProcess, list[Member], str]]:
    agent = dev_agent().start()
    base = tempfile.mkdtemp(prefix="meshd-patroni-")
    os.chmod(base, 0o755)
    ports = free_ports(4)
    members = [Member(f"pg{i + 1}", f"{base}/pg{i + 1}", ports[i], ports[2 + i]) for i in range(2)]
    scope = f"demo-{uuid.uuid4().hex[:8]}"
    try:
        for m in members:
            os.makedirs(m.dir, mode=0o700)
            shutil.chown(m.dir, "postgres", "postgres")
            with open(f"{m.dir}.yml", "w") as f:
                f.write(_config(m, scope, agent))
        yield agent, members, scope
    finally:
        for m in members:
            m.kill()
        agent.stop()
        shutil.rmtree(base, ignore_errors=True)


def _start(m: Member) -> None:
    log = open(f"{m.dir}.log", "wb")  # noqa: SIM115 - the child keeps it
    m.proc = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", "patroni", f"{m.dir}.yml"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _log(m: Member) -> str:
    with open(f"{m.dir}.log", errors="replace") as f:
        return f.read()[-3000:]


def test_patroni_elects_streams_and_fails_over(
    patroni: tuple[MeshdProcess, list[Member], str],
) -> None:
    agent, (pg1, pg2), scope = patroni
    _start(pg1)
    wait_for(pg1.is_primary, timeout=120)
    _start(pg2)

    def streaming() -> bool:
        rows = pg1.state().get("replication") or []
        return any(
            r.get("application_name") == "pg2" and r.get("state") == "streaming" for r in rows
        )

    wait_for(streaming, timeout=120)
    leader = agent.get(f"/v1/kv/service/{scope}/leader").json()[0]
    assert leader["Session"]
    (session,) = agent.get(f"/v1/session/info/{leader['Session']}").json()
    assert session["Behavior"] == "delete"
    assert parse_duration_seconds(session["TTL"]) == PATRONI_TTL / 2  # Patroni sends "10.0s"
    pg1.sql("CREATE TABLE failover (x int); INSERT INTO failover VALUES (42)")
    wait_for(lambda: pg2.sql("SELECT count(*) FROM pg_tables WHERE tablename='failover'") == "1")
    assert pg2.sql("SELECT x FROM failover") == "42"  # the replica streamed it

    pg1.kill()
    wait_for(pg2.is_primary, timeout=PATRONI_TTL * 3, interval=0.5)
    leader = agent.get(f"/v1/kv/service/{scope}/leader").json()[0]
    assert base64.b64decode(leader["Value"]) == b"pg2" and leader["Session"] != session["ID"]
    assert agent.get(f"/v1/session/info/{session['ID']}").json() == []
    pg2.sql("INSERT INTO failover VALUES (43)")  # promoted: it takes writes
    assert pg2.sql("SELECT sum(x) FROM failover") == "85", _log(pg2)
