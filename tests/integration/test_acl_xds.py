"""xDS and leaf certificates with ACLs on: only a token with service:write on the service a
proxy fronts opens its stream or gets its leaf (a real agent's ADS port, a real gRPC client)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from acl_helpers import ACLAgent, start_acl_agent
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3 import discovery_pb2 as ds
from helpers import REPO, wait_for

from meshd.testing import free_ports

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
PROXY = "web-sidecar-proxy"


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    agent = start_acl_agent()
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


def _open_stream(acl: ACLAgent, token: str) -> Any:
    """The first answer of an ADS stream for the web sidecar, or the gRPC error."""
    done = threading.Event()

    def requests() -> Iterator[ds.DiscoveryRequest]:
        yield ds.DiscoveryRequest(node=base_pb2.Node(id=PROXY), type_url=CLUSTER)
        done.wait(15)  # keep the stream open until the test has its answer

    with grpc.insecure_channel(f"127.0.0.1:{acl.proc.grpc_port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = stub.StreamAggregatedResources(
            requests(), metadata=[("x-consul-token", token)], timeout=10
        )
        try:
            return next(call)
        except grpc.RpcError as e:
            return e
        finally:
            done.set()
            call.cancel()


def test_stream_refused_without_service_write(acl: ACLAgent) -> None:
    _, other = acl.token_for('service "db" { policy = "write" }')
    err = _open_stream(acl, other)
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks permission 'service:write' on \"web\"" in (err.details() or "")
    unknown = _open_stream(acl, "0b7f5a8e-0000-4000-8000-000000000000")
    assert isinstance(unknown, grpc.RpcError) and unknown.details() == "ACL not found"


def test_stream_served_with_service_write(acl: ACLAgent) -> None:
    _, web = acl.token_for('service "web" { policy = "write" }')
    answer = _open_stream(acl, web)
    assert isinstance(answer, ds.DiscoveryResponse), answer
    assert answer.type_url == CLUSTER


def test_leaf_needs_service_write(acl: ACLAgent) -> None:
    _, other = acl.token_for('service "db" { policy = "write" }')
    _, web = acl.token_for('service "web" { policy = "write" }')
    assert acl.call("GET", "/v1/agent/connect/ca/leaf/web", token=other).status == 403
    leaf = acl.call("GET", "/v1/agent/connect/ca/leaf/web", token=web)
    assert leaf.status == 200 and "PrivateKeyPEM" in leaf.json()


def _run_envoy(acl: ACLAgent, token: str) -> tuple[subprocess.Popen[bytes], int, str]:
    admin = free_ports(1)[0]
    fd, log_path = tempfile.mkstemp(prefix="envoy-acl-", suffix=".log")
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "MESHD_HTTP_ADDR": acl.proc.http,
        "MESHD_HTTP_TOKEN": token,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshd", "connect", "envoy", "-sidecar-for", "web",
         f"-grpc-addr=127.0.0.1:{acl.proc.grpc_port}", f"-admin-bind=127.0.0.1:{admin}",
         "--", "--base-id", str(admin)],
        stdout=fd, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    os.close(fd)
    return proc, admin, log_path


def _admin(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def _log(path: str) -> str:
    with open(path) as f:
        return f.read()


def _identity_token(acl: ACLAgent, service: str) -> str:
    body = {"ServiceIdentities": [{"ServiceName": service}]}
    return str(acl.ok("PUT", "/v1/acl/token", body)["SecretID"])


def test_real_envoy_gets_its_key_only_with_the_right_token(acl: ACLAgent) -> None:
    web, other = _identity_token(acl, "web"), _identity_token(acl, "db")
    denied, denied_admin, denied_log = _run_envoy(acl, other)
    allowed, allowed_admin, _ = _run_envoy(acl, web)
    try:
        wait_for(lambda: "spiffe://" in _admin(allowed_admin, "/certs"), timeout=20)
        wait_for(
            lambda: "lacks permission 'service:write' on \"web\"" in _log(denied_log),
            timeout=20,
        )
        assert '"certificates": []' in _admin(denied_admin, "/certs")
        assert "public_listener" not in _admin(denied_admin, "/listeners")
    finally:
        for p in (denied, allowed):
            p.terminate()
            p.wait(10)
