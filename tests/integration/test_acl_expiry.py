"""Token expiry on every path: an expired token stops working at once (HTTP, DNS, xDS), well
before the agent's token cache would look again (token_ttl is 10 minutes here), and the
leader reaps it. Consul's rules for ExpirationTTL / ExpirationTime are in tests/unit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import grpc
import pytest
from acl_helpers import ACLAgent, start_acl_agent
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as ds
from helpers import wait_for

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
PROXY = "web-sidecar-proxy"
RULES = (
    'service "web" { policy = "write" }\nservice_prefix "" { policy = "read" }\n'
    'node_prefix "" { policy = "read" }\nkey "e" { policy = "write" }'
)
TTL = 6.0


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    agent = start_acl_agent(acl='token_ttl = "10m"\ntoken_min_expiration_ttl = "1s"')
    try:
        agent.ok(
            "PUT",
            "/v1/agent/service/register",
            {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {}}},
        )
        wait_for(lambda: agent.ok("GET", f"/v1/agent/service/{PROXY}"))
        yield agent
    finally:
        agent.proc.stop()


def _rcode(acl: ACLAgent, name: str) -> int:
    q = dns.message.make_query(name, "A")
    return int(dns.query.udp(q, "127.0.0.1", port=acl.proc.dns_port, timeout=3).rcode())


class Stream:
    """An ADS stream for the web sidecar kept open; `error` is how it ended, if it did."""

    def __init__(self, acl: ACLAgent, token: str) -> None:
        self.first: Any = None
        self.error: grpc.RpcError | None = None
        self._done = threading.Event()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{acl.proc.grpc_port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.StreamAggregatedResources(
            self._requests(), metadata=[("x-consul-token", token)], timeout=60
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[ds.DiscoveryRequest]:
        yield ds.DiscoveryRequest(node=base_pb2.Node(id=PROXY), type_url=CLUSTER)
        self._done.wait(60)

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.first = self.first or resp
        except grpc.RpcError as e:
            self.error = e

    def close(self) -> None:
        self._done.set()
        self._call.cancel()
        self._channel.close()


def test_an_expired_token_stops_working_everywhere_and_is_reaped(acl: ACLAgent) -> None:
    name = "exp-all"
    acl.ok("PUT", "/v1/acl/policy", {"Name": name, "Rules": RULES})
    tok = acl.ok("PUT", "/v1/acl/token", {"Policies": [{"Name": name}], "ExpirationTTL": "6s"})
    secret, accessor = tok["SecretID"], tok["AccessorID"]
    assert tok["ExpirationTime"] and not tok.get("ExpirationTTL")
    assert acl.call("PUT", "/v1/kv/e", b"1", token=secret).status == 200
    acl.ok("PUT", "/v1/agent/token/dns", {"Token": secret})
    wait_for(lambda: _rcode(acl, "web.service.consul.") == dns.rcode.NOERROR)
    stream = Stream(acl, secret)
    try:
        wait_for(lambda: stream.first is not None or stream.error is not None)
        assert stream.error is None and stream.first.type_url == CLUSTER
        # everything was used (and cached) before the expiry; each path refuses after it
        wait_for(lambda: acl.call("PUT", "/v1/kv/e", b"2", token=secret).status == 403, TTL + 5)
        assert acl.call("GET", "/v1/kv/e", token=secret).body == b"ACL not found\n"
        wait_for(lambda: _rcode(acl, "web.service.consul.") == dns.rcode.NXDOMAIN, 5)
        wait_for(lambda: stream.error is not None, 5)
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stream.error.details() == "ACL not found"
    finally:
        stream.close()
    wait_for(lambda: accessor not in {t["AccessorID"] for t in acl.ok("GET", "/v1/acl/tokens")}, 15)
    assert acl.call("GET", f"/v1/acl/token/{accessor}").status in (403, 404)


def test_expiry_is_fixed_at_creation_and_bad_values_change_nothing(acl: ACLAgent) -> None:
    before = {t["AccessorID"] for t in acl.ok("GET", "/v1/acl/tokens")}
    in_past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    cases = {
        "ExpirationTTL": ("500ms", "ExpirationTime cannot be less than 0:00:01 in the future"),
        "both": ("1h", "Expiration TTL and Expiration Time cannot both be set"),
        "ExpirationTime": (in_past, "ExpirationTime cannot be before CreateTime"),
        "max": ("25h", "ExpirationTime cannot be more than 1 day, 0:00:00 in the future"),
        "negative": ("-5m", "Token Expiration TTL '-5m' should be > 0"),
    }
    for field, (value, message) in cases.items():
        body: dict[str, Any] = {"ExpirationTTL": value}
        if field == "both":
            body["ExpirationTime"] = "2030-01-01T00:00:00Z"
        elif field == "ExpirationTime":
            body = {"ExpirationTime": value}
        r = acl.call("PUT", "/v1/acl/token", body)
        assert (r.status, r.body.decode().strip()[: len(message)]) == (400, message), field
    assert {t["AccessorID"] for t in acl.ok("GET", "/v1/acl/tokens")} == before
    tok = acl.ok("PUT", "/v1/acl/token", {"ExpirationTTL": "1h"})
    r = acl.call("PUT", f"/v1/acl/token/{tok['AccessorID']}", {"ExpirationTTL": "2h"})
    assert (r.status, r.body) == (400, b"Cannot change expiration time\n")
    kept = acl.ok("PUT", f"/v1/acl/token/{tok['AccessorID']}", {"Description": "d"})
    assert kept["ExpirationTime"] == tok["ExpirationTime"] and kept["Description"] == "d"
