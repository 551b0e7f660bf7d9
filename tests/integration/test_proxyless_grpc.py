"""Proxyless gRPC: grpcio's own xDS client resolves `xds:///NAME` from meshd's ADS server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from helpers import dev_agent, free_ports, wait_for

CLIENT = r"""
import collections, sys, grpc
channel = grpc.insecure_channel(sys.argv[1])
call = channel.unary_unary("/meshd.test.Who/Who")
metadata = [tuple(kv.split("=", 1)) for kv in sys.argv[3:]]
seen = collections.Counter()
for _ in range(int(sys.argv[2])):
    try:
        seen[call(b"", timeout=10, metadata=metadata).decode()] += 1
    except grpc.RpcError as e:
        seen[e.code().name] += 1
print(dict(seen))
"""


def _server(name: str, port: int) -> grpc.Server:
    handler = grpc.method_handlers_generic_handler(
        "meshd.test.Who",
        {"Who": grpc.unary_unary_rpc_method_handler(lambda req, ctx: name.encode())},
    )
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


@pytest.fixture(scope="module")
def grpc_mesh(tmp_path_factory):
    agent = dev_agent().start()
    ports = free_ports(2)
    servers = [_server(f"api-{i + 1}", p) for i, p in enumerate(ports)]
    for i, p in enumerate(ports):
        r = agent.put(
            "/v1/agent/service/register",
            {
                "Name": "grpcapi",
                "ID": f"grpcapi-{i + 1}",
                "Address": "127.0.0.1",
                "Port": p,
                "Meta": {"version": f"v{i + 1}"},
                "Check": {"CheckID": f"grpcapi-{i + 1}-ttl", "TTL": "10m", "Status": "passing"},
            },
        )
        assert r.status == 200
    bootstrap = tmp_path_factory.mktemp("xds") / "bootstrap.json"
    bootstrap.write_text(
        json.dumps(
            {
                "xds_servers": [
                    {
                        "server_uri": f"127.0.0.1:{agent.grpc_port}",
                        "channel_creds": [{"type": "insecure"}],
                        "server_features": ["xds_v3"],
                    }
                ],
                "node": {"id": "proxyless-test-client", "cluster": "test"},
            }
        )
    )
    yield agent, str(bootstrap)
    for s in servers:
        s.stop(0)
    agent.stop()


def run_client(bootstrap: str, target: str, n: int, *metadata: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, target, str(n), *metadata],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRPC_XDS_BOOTSTRAP": bootstrap},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1])  # a dict literal printed by the client


def test_xds_target_reaches_both_instances(grpc_mesh):
    _agent, bootstrap = grpc_mesh
    wait_for(lambda: set(run_client(bootstrap, "xds:///grpcapi", 20)) == {"api-1", "api-2"}, 30)


def test_critical_instance_is_not_used(grpc_mesh):
    agent, bootstrap = grpc_mesh
    agent.put("/v1/agent/check/fail/grpcapi-2-ttl")
    try:
        seen = run_client(bootstrap, "xds:///grpcapi", 10)
        assert set(seen) == {"api-1"}, seen
    finally:
        agent.put("/v1/agent/check/pass/grpcapi-2-ttl")


def test_proxyless_client_follows_a_weighted_split_and_a_header_route(grpc_mesh):
    agent, bootstrap = grpc_mesh
    entries = [
        {"Kind": "service-defaults", "Name": "grpcapi", "Protocol": "grpc"},
        {
            "Kind": "service-resolver",
            "Name": "grpcapi",
            "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"},
                "v2": {"Filter": "Service.Meta.version == v2"},
            },
        },
        {
            "Kind": "service-splitter",
            "Name": "grpcapi",
            "Splits": [
                {"Weight": 80, "ServiceSubset": "v1"},
                {"Weight": 20, "ServiceSubset": "v2"},
            ],
        },
        {
            "Kind": "service-router",
            "Name": "grpcapi",
            "Routes": [
                {
                    "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
                    "Destination": {"ServiceSubset": "v2"},
                },
                {
                    "Match": {"HTTP": {"Header": [{"Name": "x-fault", "Exact": "1"}]}},
                    "Destination": {"Fault": {"AbortStatus": 503, "AbortPercent": 100}},
                },
            ],
        },
    ]
    try:
        for entry in entries:
            r = agent.put("/v1/config", entry)
            assert r.status == 200, r.body
        canary = ("xds:///grpcapi", 20, "x-canary=1")
        wait_for(lambda: run_client(bootstrap, *canary) == {"api-2": 20}, 30)
        # the meshd fault extension, applied by gRPC itself (A33): HTTP 503 is UNAVAILABLE
        assert run_client(bootstrap, "xds:///grpcapi", 5, "x-fault=1") == {"UNAVAILABLE": 5}
        seen = run_client(bootstrap, "xds:///grpcapi", 500)
        assert set(seen) == {"api-1", "api-2"}, seen
        assert 0.72 <= seen["api-1"] / 500 <= 0.88, seen  # 80 % +- 4 standard deviations
    finally:
        for entry in reversed(entries):
            agent.request("DELETE", f"/v1/config/{entry['Kind']}/{entry['Name']}")
    wait_for(lambda: set(run_client(bootstrap, "xds:///grpcapi", 20)) == {"api-1", "api-2"}, 30)
