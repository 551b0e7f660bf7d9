"""The Ansible role end to end: site.yml over SSH onto five namespace hosts, then the cluster as
a user sees it, a service change applied by reload, and a rolling restart of the servers."""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
import pytest
from deploy import CLIENTS, SERVERS, Deployment, PlaybookRun, main_pid, service_web
from helpers import http_request, wait_for

pytestmark = pytest.mark.timeout(900)

Converged = tuple[Deployment, PlaybookRun, PlaybookRun]


def api(dep: Deployment, host: str, path: str) -> object:
    r = http_request(f"http://{dep.hosts[host].addr}:8500{path}", timeout=5)
    assert r.status == 200, (path, r.status, r.body)
    return r.json()


def test_converges_and_second_run_changes_nothing(converged: Converged) -> None:
    dep, first, second = converged
    hosts = set(dep.hosts)
    assert set(first.recap()) == hosts, str(first)
    assert all(c["failed"] == 0 and c["unreachable"] == 0 for c in first.recap().values())
    assert all(c["changed"] > 0 for c in first.recap().values())
    changed = {h: c["changed"] for h, c in second.recap().items()}
    assert changed == dict.fromkeys(hosts, 0), str(second)


def test_cluster_seen_from_a_client(converged: Converged) -> None:
    dep = converged[0]
    server_addrs = {dep.hosts[s].addr for s in SERVERS}
    leader = api(dep, "c1", "/v1/status/leader")
    assert isinstance(leader, str) and leader.rsplit(":", 1)[0] in server_addrs
    members = api(dep, "c1", "/v1/agent/members")
    assert isinstance(members, list)
    assert sorted((m["Name"], m["Status"]) for m in members) == sorted(
        (n, 1) for n in SERVERS + CLIENTS
    )


def _resolve(server: str, name: str) -> list[str]:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port = [server], 8600
    try:
        return sorted(a.to_text() for a in res.resolve(name, "A", lifetime=2))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.exception.Timeout):
        return []


def test_service_from_the_inventory_answers_on_the_other_client(converged: Converged) -> None:
    dep = converged[0]
    c1, c2 = dep.hosts["c1"].addr, dep.hosts["c2"].addr
    # c1 registers `web` from meshd_services; its check must pass before DNS lists it
    assert wait_for(lambda: _resolve(c2, "web.service.consul"), timeout=30) == [c1]


def _tls_context(dep: Deployment, host: str, with_cert: bool) -> ssl.SSLContext:
    tls = dep.hosts[host].path("/etc/meshd/tls")
    ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(tls / "agent.pem"), str(tls / "agent-key.pem"))
    return ctx


def _rpc_status(ctx: ssl.SSLContext, addr: str, server_name: str) -> bytes:
    """One plain request over TLS to a server's RPC port; the first bytes of the answer."""
    with (
        socket.create_connection((addr, 8300), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as conn,
    ):
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return conn.recv(64)


def test_tls_between_agents_is_verified(converged: Converged) -> None:
    dep = converged[0]
    for server in SERVERS:
        addr = dep.hosts[server].addr
        # the server proves it is server.dc1.consul under the role's CA, and accepts c1's cert
        assert _rpc_status(_tls_context(dep, "c1", True), addr, "server.dc1.consul").startswith(
            b"HTTP/1.1"
        )
        # a client without a certificate from that CA is refused
        with pytest.raises((ssl.SSLError, ConnectionError)):
            data = _rpc_status(_tls_context(dep, "c1", False), addr, "server.dc1.consul")
            if not data:
                raise ConnectionResetError("closed without an answer")
        # and a server certificate does not pass for another name
        with pytest.raises(ssl.SSLCertVerificationError):
            _rpc_status(_tls_context(dep, "c1", True), addr, "client.dc1.consul")


def test_secrets_have_tight_modes(converged: Converged) -> None:
    dep = converged[0]
    listing = (
        dep.hosts["s1"]
        .run(
            "stat -c '%a %U:%G %n' /etc/meshd/encrypt.key /etc/meshd/ca /etc/meshd/ca/*key.pem "
            "/etc/meshd/tls/agent-key.pem /etc/meshd/conf.d/agent.json /var/lib/meshd"
        )
        .stdout.splitlines()
    )
    assert sorted(listing) == sorted(
        [
            "600 root:root /etc/meshd/encrypt.key",
            "700 root:root /etc/meshd/ca",
            "600 root:root /etc/meshd/ca/consul-agent-ca-key.pem",
            "640 root:meshd /etc/meshd/tls/agent-key.pem",
            "640 root:meshd /etc/meshd/conf.d/agent.json",
            "750 meshd:meshd /var/lib/meshd",
        ]
    )


def test_invalid_service_is_refused_and_changes_nothing(converged: Converged) -> None:
    dep = converged[0]
    c1 = dep.hosts["c1"]
    services = c1.path("/etc/meshd/conf.d/services.json")
    before, pid = services.read_text(), main_pid(c1)
    hostvars = dep.inventory["all"]["children"]["clients"]["hosts"]["c1"]
    good = hostvars["meshd_services"]
    hostvars["meshd_services"] = [{"name": "web", "port": "eighty"}]
    try:
        run = dep.playbook("--limit", "c1")
    finally:
        hostvars["meshd_services"] = good
    assert run.returncode != 0
    assert "failed to validate" in run.stdout and "port" in run.stdout, str(run)
    assert services.read_text() == before
    assert main_pid(c1) == pid
    catalog = api(dep, "c2", "/v1/catalog/service/web")
    assert [s["ServiceTags"] for s in catalog] == [["v1"]]  # type: ignore[attr-defined]


def _served_cert(dep: Deployment, server: str) -> bytes:
    """The certificate a server presents on its RPC port now (DER)."""
    ctx = _tls_context(dep, "c1", True)
    with (
        socket.create_connection((dep.hosts[server].addr, 8300), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="server.dc1.consul") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der
    return der


def _file_cert(dep: Deployment, host: str) -> bytes:
    pem = dep.hosts[host].path("/etc/meshd/tls/agent.pem").read_text()
    return ssl.PEM_cert_to_DER_cert(pem)


def test_service_change_and_certificate_rotation_reload_without_restart(
    converged: Converged,
) -> None:
    """c1's service changes and s2's certificate is rotated (docs/ansible.md): both hosts
    reload, nothing restarts, and both changes are live."""
    dep = converged[0]
    pids = {n: main_pid(h) for n, h in dep.hosts.items()}
    assert all(pids.values()), pids
    old_cert = _file_cert(dep, "s2")
    assert _served_cert(dep, "s2") == old_cert
    c1 = dep.inventory["all"]["children"]["clients"]["hosts"]["c1"]
    c1["meshd_services"] = [service_web(dep.hosts["c1"].addr, "v2")]
    assert dep.hosts["s1"].run("rm -r /etc/meshd/ca/hosts/s2").returncode == 0
    run = dep.playbook()
    assert run.returncode == 0, str(run)
    assert {h: c["changed"] > 0 for h, c in run.recap().items()} == {
        n: n in ("c1", "s2") for n in dep.hosts
    }, str(run)
    assert sorted(run.ran("Reload meshd")) == ["c1", "s2"], str(run)
    assert run.ran("Restart meshd client agents") == []
    assert run.ran("Restart meshd servers one at a time") == []
    tags = wait_for(
        lambda: (
            [s["ServiceTags"] for s in api(dep, "c2", "/v1/catalog/service/web")]  # type: ignore[attr-defined]
            == [["v2"]]
        ),
        timeout=15,
    )
    assert tags
    new_cert = _file_cert(dep, "s2")
    assert new_cert != old_cert
    assert wait_for(lambda: _served_cert(dep, "s2") == new_cert, timeout=15)
    assert {n: main_pid(h) for n, h in dep.hosts.items()} == pids


@dataclass
class LeaderPoll:
    """What a client agent said the leader was, polled through a rolling restart."""

    answers: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, url: str) -> None:
        while not self.stop.is_set():
            try:
                r = http_request(url, timeout=2)
                value = r.json() if r.status == 200 else f"HTTP {r.status}"
            except OSError as e:
                value = f"error {e}"
            self.answers.append((time.monotonic(), value))
            self.stop.wait(0.1)


@pytest.fixture(scope="module")
def rolling(converged: Converged) -> Iterator[tuple[Deployment, PlaybookRun, LeaderPoll, dict]]:
    """A change that needs a restart on the servers only (their log level), applied by site.yml
    while a client is polled for the leader."""
    dep = converged[0]
    before = {n: main_pid(h) for n, h in dep.hosts.items()}
    dep.inventory["all"]["children"]["servers"]["vars"] = {"meshd_log_level": "debug"}
    poll = LeaderPoll()
    t = threading.Thread(
        target=poll.run, args=(f"http://{dep.hosts['c2'].addr}:8500/v1/status/leader",)
    )
    t.start()
    try:
        run = dep.playbook()
    finally:
        poll.stop.set()
        t.join()
    after = {n: main_pid(h) for n, h in dep.hosts.items()}
    yield dep, run, poll, {"before": before, "after": after}


def test_rolling_restart_of_the_servers(rolling: tuple) -> None:
    dep, run, poll, pids = rolling
    assert run.returncode == 0, str(run)
    restarted = [h for h in SERVERS if pids["before"][h] != pids["after"][h]]
    assert restarted == SERVERS
    assert all(pids["before"][c] == pids["after"][c] for c in CLIENTS)
    # one server at a time: each restart is followed by the wait for leader and peers
    order = [
        line.split("server ")[1].split("]")[0]
        for line in run.stdout.splitlines()
        if "HANDLER [meshd : Restart meshd on server" in line
    ]
    assert sorted(order) == SERVERS and len(order) == 3
    first_leader = poll.answers[0][1].rsplit(":", 1)[0]
    assert order[-1] == next(s for s in SERVERS if dep.hosts[s].addr == first_leader)
    waits = [line for line in run.stdout.splitlines() if "HANDLER [meshd : Wait for" in line]
    assert len(waits) == 6
    # the client agent answered every poll, and there is a leader at the end
    assert [
        a for _, a in poll.answers if not isinstance(a, str) or a.startswith(("HTTP", "error"))
    ] == []
    assert poll.answers[-1][1]
    # the leader changed at most once: the role restarts the leader last
    leaders = [a for _, a in poll.answers if a]
    changes = sum(1 for x, y in itertools.pairwise(leaders) if x != y)
    assert changes <= 1, leaders


def test_rolling_restart_keeps_a_leader_at_all_times(rolling: tuple) -> None:
    """The leader hands leadership over before it restarts: the client names a leader at
    every poll, and only the server that led did a hand-over."""
    dep, run, poll, _ = rolling
    assert [t for t, a in poll.answers if not a] == []
    first_leader = poll.answers[0][1].rsplit(":", 1)[0]
    handed = [s for s in SERVERS if run.ran(f"Hand leadership over before restarting {s}")]
    assert handed == [s for s in SERVERS if dep.hosts[s].addr == first_leader], str(run)
