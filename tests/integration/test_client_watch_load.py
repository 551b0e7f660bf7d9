"""A client agent under watch load: many distinct unknown DNS names and many blocking reads
must not take the connections its heartbeats and writes need (issue 8: "heartbeats and writes
must never queue behind watches")."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.query
import dns.rcode
import pytest
from helpers import MeshdProcess, client_agent, http_request, server_agent, wait_for

UNKNOWN_NAMES = 400
BLOCKING_READS = 300  # more than one pool's 256 connections
BLOCK_FOR = "20s"


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[MeshdProcess, MeshdProcess]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = server_agent(tmp, config={"limits": {"node_failure_timeout": 2}}).start()
        conf = os.path.join(tmp, "client.json")  # room for the test's own HTTP connections
        with open(conf, "w") as f:
            json.dump({"limits": {"http_max_conns_per_client": 1000}}, f)
        client = client_agent(server, "load-client", "-config-file", conf).start()
        try:
            yield server, client
        finally:
            client.stop()
            server.stop()


def _serf_health(server: MeshdProcess, node: str) -> str | None:
    checks = server.get(f"/v1/health/node/{node}").json()
    return next((c["Status"] for c in checks if c["CheckID"] == "serfHealth"), None)


def _pause(server: MeshdProcess) -> None:
    """About a second of wall time, spent in a blocking read that nothing wakes."""
    index = server.get("/v1/kv/tick").headers.get("X-Consul-Index", "1")
    server.get(f"/v1/kv/tick?index={index}&wait=1s")


def _blocking_get(client: MeshdProcess, i: int) -> int:
    """Hold one blocking read of a distinct missing key until its wait ends."""
    first = client.get(f"/v1/kv/load/{i}")
    index = first.headers.get("X-Consul-Index", "1")
    url = f"{client.http}/v1/kv/load/{i}?index={index}&wait={BLOCK_FOR}"
    return http_request(url, timeout=60).status


def test_unknown_names_and_blocking_reads_leave_heartbeats_and_writes_working(
    cluster: tuple[MeshdProcess, MeshdProcess],
) -> None:
    server, client = cluster
    wait_for(lambda: _serf_health(server, "load-client") == "passing", timeout=20)
    for i in range(UNKNOWN_NAMES):
        query = dns.message.make_query(f"nosuch-{i}.service.consul", "A")
        reply = dns.query.udp(query, "127.0.0.1", port=client.dns_port, timeout=5)
        assert reply.rcode() == dns.rcode.NXDOMAIN
    with ThreadPoolExecutor(BLOCKING_READS) as pool:
        held = [pool.submit(_blocking_get, client, i) for i in range(BLOCKING_READS)]
        _pause(server)  # let the reads reach the servers and park there
        # while all those reads are parked on the servers, the client still writes...
        assert client.put("/v1/kv/load-write", b"v").status == 200
        assert client.get("/v1/kv/load-write?raw").body == b"v"
        reg = {"Name": "under-load", "Port": 80}
        assert client.put("/v1/agent/service/register", reg).status == 200
        wait_for(lambda: server.get("/v1/catalog/service/under-load").json(), timeout=10)
        # ...and its node stays alive: beyond node_failure_timeout, serfHealth is passing
        for _ in range(3):
            wait_for(lambda: _serf_health(server, "load-client") == "passing", timeout=3)
            _pause(server)
        # a name that exists still resolves through the client
        query = dns.message.make_query("under-load.service.consul", "A")
        reply = dns.query.udp(query, "127.0.0.1", port=client.dns_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        statuses = [f.result() for f in held]
        assert set(statuses) == {404}, sorted(set(statuses))
