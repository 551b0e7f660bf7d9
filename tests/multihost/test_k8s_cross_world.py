"""Cross-world: a Kubernetes "pod" and a VM service talk through their sidecars over mTLS.

Hosts are network namespaces on one bridge:
- h0: a meshd server that is also the Kubernetes node agent of `node-a` (Kubernetes mode,
  kubeconfig pointing at the stand-in API server on the bridge address);
- h1: the "pod": a namespace whose address is the pod IP, running the pod's app and its Envoy
  sidecar against h0's agent (`HOST_IP:8502`), as an injected pod does; it is registered only
  through the Kubernetes mode, from the pod object the stand-in serves;
- h2: a VM with a client agent, its own service and that service's Envoy sidecar.
Intentions decide (explicit allow and deny). Not a real cluster: no kubelet, no CNI.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from cluster import Cluster, Node, wait
from helpers import REPO, free_port
from k8s_apiserver import FakeAPIServer, pod

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces need root (CI runs as root)"
)

APP_PORT = 8080  # each side's app, on its own loopback
POD_UPSTREAM, VM_UPSTREAM = 9001, 9002  # local listeners of the sidecars


def fetch(host: Any, port: int) -> str:
    """GET http://127.0.0.1:port/ from inside `host`: its body, or the error."""
    code = (
        "import urllib.request as u\n"
        "try:\n"
        f"    print(u.urlopen('http://127.0.0.1:{port}/', timeout=3).read().decode())\n"
        "except Exception as e:\n"
        "    print('ERR', e)\n"
    )
    return str(host.run(sys.executable, "-c", code).stdout)


def app(host: Any, name: str, log: str) -> None:
    """An HTTP app on the host's loopback that answers with its name."""
    code = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        b = b'hello from {name}'\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
        "        self.end_headers(); self.wfile.write(b)\n"
        f"http.server.HTTPServer(('127.0.0.1', {APP_PORT}), H).serve_forever()\n"
    )
    host.popen([sys.executable, "-c", code], log)


def envoy(host: Any, agent_host: Any, service_id: str, log: str) -> None:
    host.popen(
        [
            sys.executable,
            "-m",
            "meshd",
            "connect",
            "envoy",
            f"-sidecar-for={service_id}",
            f"-grpc-addr={agent_host.addr}:8502",
            "-admin-bind=127.0.0.1:19000",
        ],
        log,
        env={**os.environ, "PYTHONPATH": REPO, "MESHD_HTTP_ADDR": f"http://{agent_host.addr}:8500"},
    )


@pytest.fixture
def world(network_factory: Any) -> Iterator[tuple[Cluster, FakeAPIServer, list[Any]]]:
    net = network_factory(3)
    h0, h1, h2 = net.hosts
    bridge = h0.addr.rsplit(".", 1)[0] + ".1"
    api = FakeAPIServer(free_port(), host=bridge).start()
    cluster = Cluster(net, n_servers=1)
    kubeconfig = os.path.join(cluster.tmp, "kubeconfig")
    with open(kubeconfig, "w") as f:
        json.dump(api.kubeconfig(), f)
    k8s = os.path.join(cluster.tmp, "k8s.json")
    with open(k8s, "w") as f:
        json.dump({"kubernetes": {"kubeconfig": kubeconfig, "node_name": "node-a"}}, f)
    server, vm = cluster.servers[0], cluster.clients[1]  # clients[0] (on h1) is never started
    server.args.append(f"-config-file={k8s}")
    try:
        cluster.start(clients=False)
        vm.start()
        wait(lambda: vm.leader(), 60, f"vm agent up:\n{vm.log()}")
        yield cluster, api, [h0, h1, h2]
    finally:
        cluster.close()
        api.close()


def _intention(node: Node, src: str, dst: str, action: str) -> None:
    status, body, _ = node.put(
        f"/v1/connect/intentions/exact?source={src}&destination={dst}", {"Action": action}
    )
    assert status == 200, body


def test_a_pod_and_a_vm_service_reach_each_other_through_their_sidecars(
    world: tuple[Cluster, FakeAPIServer, list[Any]],
) -> None:
    cluster, api, (h0, h1, h2) = world
    server, vm = cluster.servers[0], cluster.clients[1]
    logs = cluster.tmp
    notes = {
        "consul.hashicorp.com/connect-inject": "true",
        "consul.hashicorp.com/connect-service": "web",
        "consul.hashicorp.com/connect-service-upstreams": f"vm-api:{POD_UPSTREAM}",
        "consul.hashicorp.com/connect-inject-status": "injected",
    }
    api.put(pod("web-0", h1.addr, annotations=notes))
    # the VM side, registered the VM way
    status, body, _ = vm.put(
        "/v1/agent/service/register",
        {
            "Name": "vm-api",
            "ID": "vm-api",
            "Port": APP_PORT,
            "Connect": {
                "SidecarService": {
                    "Proxy": {
                        "Upstreams": [{"DestinationName": "web", "LocalBindPort": VM_UPSTREAM}]
                    }
                }
            },
        },
    )
    assert status == 200, body
    _intention(server, "web", "vm-api", "allow")
    _intention(server, "vm-api", "web", "allow")

    wait(
        lambda: server.get("/v1/agent/service/web-0-web-sidecar-proxy")[0] == 200, 60, server.log()
    )
    app(h1, "the pod", os.path.join(logs, "pod-app.log"))
    app(h2, "the vm", os.path.join(logs, "vm-app.log"))
    envoy(h1, h0, "web-0-web", os.path.join(logs, "pod-envoy.log"))
    envoy(h2, h2, "vm-api", os.path.join(logs, "vm-envoy.log"))

    def diagnose() -> str:
        tails = []
        for name in ("pod-envoy.log", "vm-envoy.log"):
            with open(os.path.join(logs, name), errors="replace") as f:
                tails.append(f"--- {name}\n{f.read()[-3000:]}")
        return "\n".join([*tails, cluster.logs()])

    wait(lambda: "hello from the vm" in fetch(h1, POD_UPSTREAM), 120, "pod -> vm:\n" + diagnose())
    wait(lambda: "hello from the pod" in fetch(h2, VM_UPSTREAM), 120, "vm -> pod:\n" + diagnose())

    # the intention is what lets the pod in: deny it and the VM's sidecar refuses
    _intention(server, "web", "vm-api", "deny")
    wait(lambda: "hello" not in fetch(h1, POD_UPSTREAM), 60, "deny:\n" + diagnose())
    assert "hello from the pod" in fetch(h2, VM_UPSTREAM)  # the other way is still allowed
