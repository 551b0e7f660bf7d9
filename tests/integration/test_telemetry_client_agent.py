"""A client agent's sidecars reach the graph through the servers (RPC), and the client answers
graph reads from a server: one server and one client agent on loopback, real Envoys."""

from __future__ import annotations

import base64
import json
import os
import tempfile

from helpers import MeshdProcess, free_ports, wait_for
from telemetry_mesh import RATE, Traffic, start_mesh


def test_client_agent_reports_through_the_server():
    key = base64.b64encode(os.urandom(32)).decode()
    tmp = tempfile.mkdtemp(prefix="meshd-tel-")
    http_s, dns_s, grpc_s, rpc, raft, http_c, dns_c, grpc_c = free_ports(8)
    conf = os.path.join(tmp, "server.json")
    with open(conf, "w") as f:
        json.dump({"ports": {"raft": raft}}, f)
    server = MeshdProcess(
        http_s,
        dns_s,
        grpc_s,
        [
            "-server",
            "-bootstrap",
            f"-data-dir={tmp}/s1",
            f"-server-port={rpc}",
            f"-config-file={conf}",
            f"-encrypt={key}",
            "-node=s1",
            "-bind=127.0.0.1",
        ],
        os.path.join(tmp, "s1.log"),
    ).start(60)
    client = None
    mesh = None
    traffic = None
    try:
        client = MeshdProcess(
            http_c,
            dns_c,
            grpc_c,
            [
                f"-retry-join=127.0.0.1:{rpc}",
                f"-data-dir={tmp}/c1",
                f"-encrypt={key}",
                "-node=c1",
                "-bind=127.0.0.1",
            ],
            os.path.join(tmp, "c1.log"),
            env={"MESHD_TELEMETRY_INTERVAL": "1"},
        ).start(60)
        for dst in ("api", "db"):  # explicit: the default follows the ACL policy
            r = client.put(
                f"/v1/connect/intentions/exact?source=web&destination={dst}", {"Action": "allow"}
            )
            assert r.status == 200, r.body
        mesh = start_mesh(agent=client)
        traffic = Traffic(mesh)

        def edge_on(agent: MeshdProcess) -> dict | None:
            g = agent.get("/v1/meshd/graph?window=10s").json()
            return next((e for e in g["Edges"] if e["Destination"] == "api"), None)

        # the server (which runs no sidecar) has the client's edge: the report came over RPC
        e = wait_for(
            lambda: (x := edge_on(server)) and x["Metrics"]["RequestsPerSecond"] > 0 and x, 30
        )
        assert e["Source"] == "web"
        # and the client agent reads the graph back from the server
        c = wait_for(
            lambda: (x := edge_on(client)) and x["Metrics"]["RequestsPerSecond"] > 0 and x, 30
        )
        assert 0 < c["Metrics"]["RequestsPerSecond"] <= 1.5 * RATE
    finally:
        if traffic is not None:
            traffic.stop.set()
            traffic.thread.join(5)
        if mesh is not None:
            mesh.close()
        if client is not None:
            client.stop()
        server.stop()
