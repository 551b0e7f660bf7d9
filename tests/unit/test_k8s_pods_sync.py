"""The Kubernetes mode's pure parts: the config block, pod -> registration, Service sync.

Every Kubernetes object used here is first validated strictly against the 1.30 schema, so the
translations are exercised on objects a real API server could send.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from meshd.agent.definitions import parse_service
from meshd.agent.k8s import KubernetesError, api_client
from meshd.config import ConfigError, load_config
from meshd.k8s import pods as kp
from meshd.k8s import sync as ks
from meshd.k8s.settings import KubernetesConfig, SyncCatalog

Obj = dict[str, Any]


def valid(obj: Obj) -> Obj:
    kubernetes_validate.validate(obj, "1.30", strict=True)
    return obj


def a_pod(annotations: dict[str, str], ready: bool = True, ip: str | None = "10.1.0.5") -> Obj:
    status: Obj = {
        "phase": "Running",
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "ContainersNotReady",
            }
        ],
    }
    if ip:
        status["podIP"] = ip
    return valid(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "api-5c9-abcde",
                "namespace": "shop",
                "labels": {"app": "api"},
                "annotations": annotations,
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "api", "ports": [{"name": "grpc", "containerPort": 9090}]}],
            },
            "status": status,
        }
    )


def a_service(name: str, ns: str, annotations: dict[str, str] | None = None) -> Obj:
    return valid(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
            "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": "grpc"}]},
        }
    )


def a_slice(service: str, ns: str, endpoints: list[Obj]) -> Obj:
    return valid(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-x1",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": "IPv4",
            "ports": [{"port": 9090}],
            "endpoints": endpoints,
        }
    )


# ---- config -------------------------------------------------------------------------------


def test_the_block_turns_the_mode_on_with_in_cluster_defaults(tmp_path: Path) -> None:
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"kubernetes": {}}))
    cfg = load_config(files=[f]).kubernetes
    assert cfg == KubernetesConfig()
    assert cfg.kubeconfig is None and cfg.register_pods
    assert not cfg.sync_catalog.to_consul and not cfg.sync_catalog.to_k8s
    assert load_config().kubernetes is None


def test_the_block_reads_every_key_from_hcl_and_a_later_file_can_turn_it_off(
    tmp_path: Path,
) -> None:
    f = tmp_path / "k.hcl"
    f.write_text(
        """
kubernetes {
  kubeconfig = "/etc/kube/config"
  node_name  = "worker-3"
  sync_catalog {
    to_consul        = true
    default_sync     = true
    to_k8s           = true
    allow_namespaces = ["shop", "web"]
    deny_namespaces  = ["web"]
  }
}
"""
    )
    cfg = load_config(files=[f]).kubernetes
    assert cfg is not None
    assert (cfg.kubeconfig, cfg.k8s_node("host")) == ("/etc/kube/config", "worker-3")
    sync = cfg.sync_catalog
    assert sync.to_consul and sync.default_sync and sync.to_k8s
    assert sync.namespace_allowed("shop")
    assert not sync.namespace_allowed("web")  # deny beats allow
    assert not sync.namespace_allowed("other")
    off = tmp_path / "z.json"
    off.write_text(json.dumps({"kubernetes": {"enabled": False}}))
    assert load_config(files=[f, off]).kubernetes is None


def test_the_node_name_defaults_to_the_downward_api_then_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert KubernetesConfig().k8s_node("agent-host") == "agent-host"
    monkeypatch.setenv("NODE_NAME", "worker-7")
    assert KubernetesConfig().k8s_node("agent-host") == "worker-7"


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"kubeconfg": "/x"}, "kubernetes.kubeconfg"),
        ({"register_pods": "yes"}, "kubernetes.register_pods"),
        ({"sync_catalog": {"to_k8s": 1}}, "kubernetes.sync_catalog.to_k8s"),
        (
            {"sync_catalog": {"allow_namespaces": "shop"}},
            "kubernetes.sync_catalog.allow_namespaces",
        ),
    ],
)
def test_a_bad_key_is_refused_by_its_dotted_name(tmp_path: Path, block: Obj, named: str) -> None:
    f = tmp_path / "k.json"
    f.write_text(json.dumps({"kubernetes": block}))
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(files=[f])


def test_credentials_that_cannot_load_stop_the_mode_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: 7\n")
    with pytest.raises(KubernetesError, match=r"cannot load credentials from .*kubeconfig"):
        asyncio.run(api_client(KubernetesConfig(kubeconfig=str(bad))))
    with pytest.raises(KubernetesError, match="no such file"):
        asyncio.run(api_client(KubernetesConfig(kubeconfig=str(tmp_path / "none"))))


# ---- pods -> registrations ------------------------------------------------------------------


def test_an_annotated_pod_becomes_the_agent_registration_with_pod_meta_and_readiness() -> None:
    pod = a_pod(
        {
            "consul.hashicorp.com/connect-service": "api",
            "consul.hashicorp.com/connect-service-port": "grpc",
        },
        ready=False,
    )
    (d,) = kp.definitions(pod, [], "node-a")
    assert (d["id"], d["name"], d["address"], d["port"]) == (
        "api-5c9-abcde-api",
        "api",
        "10.1.0.5",
        9090,
    )
    assert d["meta"] == {
        "pod-name": "api-5c9-abcde",
        "k8s-namespace": "shop",
        "external-source": "kubernetes",
        "k8s-node": "node-a",
    }
    assert "connect" not in d  # not injected: no sidecar to register
    assert d["check"]["status"] == "critical"
    assert "ContainersNotReady" in d["check"]["output"]
    defn = parse_service(d)  # the agent's own parser accepts it
    assert defn.checks[0].CheckID == "api-5c9-abcde-api:k8s-readiness"
    assert kp.owned(d["meta"])


def test_an_injected_pod_is_the_init_containers_registration_with_real_values() -> None:
    notes = {
        "consul.hashicorp.com/connect-inject": "true",
        "consul.hashicorp.com/connect-service-upstreams": "db:5432:dc2",
    }
    (d,) = kp.definitions(a_pod(notes), [a_service("api-svc", "shop")], "node-a")
    assert d["name"] == "api-svc"  # named by the Service selecting it
    assert d["port"] == 9090  # its targetPort, a container port name
    sidecar = d["connect"]["sidecar_service"]
    assert sidecar["address"] == "10.1.0.5"
    assert "$(" not in json.dumps(d)
    upstream = sidecar["proxy"]["upstreams"][0]
    assert upstream == {"destination_name": "db", "local_bind_port": 5432, "datacenter": "dc2"}
    assert d["check"]["status"] == "passing"
    parse_service(d)


def test_a_service_in_another_namespace_or_without_selector_names_nothing() -> None:
    notes = {"meshd.io/connect-inject": "true"}
    other = a_service("api-svc", "other")
    no_selector = copy.deepcopy(a_service("bare", "shop"))
    del no_selector["spec"]["selector"]
    (d,) = kp.definitions(a_pod(notes), [other, no_selector], "node-a")
    assert d["name"] == "api"  # the webhook's fallback: the app label


def test_pods_that_ask_nothing_have_no_ip_or_finished_register_nothing() -> None:
    named = {"meshd.io/connect-service": "api"}
    assert kp.definitions(a_pod({}), [a_service("api-svc", "shop")], "n") == []
    assert kp.definitions(a_pod(named, ip=None), [], "n") == []
    done = a_pod(named)
    done["status"]["phase"] = "Succeeded"
    assert kp.definitions(valid(done), [], "n") == []


def test_a_terminating_pod_is_critical_and_a_malformed_annotation_is_an_error() -> None:
    pod = a_pod({"meshd.io/connect-service": "api"})
    pod["metadata"]["deletionTimestamp"] = "2026-12-01T10:00:00Z"
    assert kp.readiness(valid(pod)) == kp.PodState(False, "Pod is terminating")
    bad = a_pod({"meshd.io/connect-service": "api", "meshd.io/connect-service-port": "nope"})
    with pytest.raises(kp.AnnotationError, match="nope"):
        kp.definitions(bad, [], "n")


# ---- Service sync ---------------------------------------------------------------------------


def test_services_sync_when_annotated_or_by_default_and_never_from_denied_namespaces() -> None:
    on = {"consul.hashicorp.com/service-sync": "true"}
    off = {"consul.hashicorp.com/service-sync": "false"}
    opt_in, opt_out, plain = (
        a_service("a", "shop", on),
        a_service("b", "shop", off),
        a_service("c", "shop"),
    )
    system = a_service("d", "kube-system", on)
    cfg = SyncCatalog(to_consul=True)
    assert [ks.wants_sync(s, cfg) for s in (opt_in, opt_out, plain, system)] == [
        True,
        False,
        False,
        False,
    ]
    cfg = SyncCatalog(to_consul=True, default_sync=True)
    assert [ks.wants_sync(s, cfg) for s in (opt_in, opt_out, plain, system)] == [
        True,
        False,
        True,
        False,
    ]


def test_only_ready_endpoints_become_instances_on_the_sync_node() -> None:
    svc = a_service("billing", "shop", {"consul.hashicorp.com/service-sync": "true"})
    slc = a_slice(
        "billing",
        "shop",
        [
            {"addresses": ["10.3.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.3.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.3.0.3"]},  # no condition: ready, as kube-proxy reads it
        ],
    )
    other = a_slice("unrelated", "shop", [{"addresses": ["10.9.9.9"]}])
    want = ks.desired_catalog([svc], [slc, other], SyncCatalog(to_consul=True))
    assert sorted((i.Service, i.Address, i.Port) for i in want.values()) == [
        ("billing", "10.3.0.1", 9090),
        ("billing", "10.3.0.3", 9090),
    ]
    assert all(i.Tags == ["k8s"] and i.Meta["external-k8s-ns"] == "shop" for i in want.values())


def test_external_name_services_validate_and_invalid_names_are_skipped() -> None:
    obj = ks.external_name_service("vm-db", "meshd", "consul.")
    assert obj is not None
    valid(obj)
    assert obj["spec"]["externalName"] == "vm-db.service.consul"
    assert ks.owned_by_meshd(obj)
    assert not ks.wants_sync(obj, SyncCatalog(default_sync=True))  # never synced back in
    for name in ("Upper", "under_score", "9lives", "x" * 64):
        assert ks.external_name_service(name, "meshd", "consul.") is None


def test_names_from_kubernetes_or_tagged_k8s_do_not_go_back_out() -> None:
    catalog = {"consul": [], "billing": ["k8s"], "orders": [], "vm-db": ["primary"]}
    assert ks.to_k8s_names(catalog, {"orders"}) == ["vm-db"]


# ---- who syncs -------------------------------------------------------------------------------


def _stub_agent(server: Any) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        config=SimpleNamespace(node_name="host-1"),
        local=SimpleNamespace(node_meta={}),
        server=server,
    )


def test_a_client_agent_never_syncs_services_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from kubernetes_asyncio.client import ApiClient

    from meshd.agent.k8s import KubernetesMode

    cfg = KubernetesConfig(register_pods=False, sync_catalog=SyncCatalog(to_consul=True))

    async def run() -> list[Any]:
        mode = KubernetesMode(_stub_agent(None), cfg)
        mode.api = ApiClient()
        await mode.start()
        tasks = list(mode._tasks)
        await mode.stop()
        return tasks

    assert asyncio.run(run()) == []
    assert "only servers sync" in caplog.text


def test_a_server_syncs_only_while_it_leads(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    monkeypatch.delenv("NODE_NAME", raising=False)
    from meshd.agent.k8s import KubernetesMode

    raft = SimpleNamespace(is_leader=False)
    mode = KubernetesMode(_stub_agent(SimpleNamespace(raft=raft)), KubernetesConfig())
    assert not mode._is_leader()
    raft.is_leader = True
    assert mode._is_leader()
    assert mode.agent.local.node_meta == {"k8s-node": "host-1"}  # node meta for the catalog
