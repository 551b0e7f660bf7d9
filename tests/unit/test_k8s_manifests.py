"""`meshd k8s manifests`: every object passes Kubernetes' own schemas, strictly, and flags count.

Validation uses kubernetes-validate's strict schemas (additionalProperties false), so a field
Kubernetes does not know fails here instead of being dropped silently by the API server.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from certs import make_ca
from click.testing import CliRunner

from meshd.cli.main import cli
from meshd.config import load_config
from meshd.k8s.manifests import ManifestOptions, coredns_stub, render

# The oldest version the issue asks for, and the newest the installed package knows.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def run_manifests(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["k8s", "manifests", *args])
    assert result.exit_code == 0, result.output
    return [doc for doc in yaml.safe_load_all(result.output) if doc is not None]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = by_kind(objects, kind)
    return obj


def validate_strict(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--tls-secret", "", "--replicas", "5", "--storage-class", "fast"],
        ["--dns-cluster-ip", "10.96.0.53", "--namespace", "mesh", "--name", "m"],
        ["--sync-catalog", "--sync-namespace", "apps"],
    ],
)
def test_every_rendered_object_validates_strictly(args: list[str], version: str) -> None:
    objects = run_manifests(*args)
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "StatefulSet",
        "DaemonSet",
    } <= kinds
    for obj in objects:
        validate_strict(obj, version)


@pytest.fixture
def ca_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "webhook-ca.pem"
    path.write_text(make_ca("11111111-2222-3333-4444-555555555555.consul").pem)
    return path


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_webhook_objects_validate_strictly(ca_bundle: Path, version: str) -> None:
    objects = run_manifests("--webhook", "--webhook-ca-bundle", str(ca_bundle))
    assert {"Deployment", "MutatingWebhookConfiguration"} <= {o["kind"] for o in objects}
    for obj in objects:
        validate_strict(obj, version)


def test_webhook_is_wired_to_its_service_and_never_blocks_pods(ca_bundle: Path) -> None:
    objects = run_manifests("--webhook", "--webhook-ca-bundle", str(ca_bundle), "-namespace", "m")
    (hook,) = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    service = next(s for s in by_kind(objects, "Service") if "webhook" in s["metadata"]["name"])
    deployment = one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ref = hook["clientConfig"]["service"]
    assert (ref["name"], ref["namespace"], ref["path"]) == (
        service["metadata"]["name"],
        "m",
        "/mutate",
    )
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]).decode() == ca_bundle.read_text()
    assert hook["failurePolicy"] == "Ignore"
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["rules"][0]["resources"] == ["pods"]
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["operator"] == "NotIn" and "m" in expr["values"] and "kube-system" in expr["values"]


def test_webhook_deployment_args_are_ones_meshd_k8s_webhook_accepts(ca_bundle: Path) -> None:
    deployment = one(run_manifests("--webhook"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["meshd", "k8s", "webhook"]
    # Parsed by the real command; it gets as far as loading the (absent here) certificate.
    result = CliRunner().invoke(cli, ["k8s", "webhook", *container["args"]])
    assert result.exit_code == 1
    assert "cannot load the TLS certificate and key" in result.output
    assert "/meshd/webhook-tls/tls.crt" in container["args"][0]


def test_no_webhook_unless_asked_and_a_bad_bundle_is_refused(tmp_path: Path) -> None:
    assert not by_kind(run_manifests(), "MutatingWebhookConfiguration")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    result = CliRunner().invoke(
        cli, ["k8s", "manifests", "--webhook", "--webhook-ca-bundle", str(bad)]
    )
    assert result.exit_code == 1
    assert "--webhook-ca-bundle" in result.output
    assert "apiVersion" not in result.output


def test_strict_validation_rejects_an_unknown_field() -> None:
    # The check above means something only if strict mode refuses what Kubernetes would drop.
    sts = one(run_manifests(), "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["hostPortz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strict(sts, "1.30")


def test_servers_are_a_statefulset_with_volume_spread_and_budget() -> None:
    objects = run_manifests("--replicas", "5", "--image", "reg.example/meshd:9", "--storage", "2Gi")
    sts = one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert sts["spec"]["replicas"] == 5
    assert container["image"] == "reg.example/meshd:9"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert {"name": "data", "mountPath": "/meshd/data"} in container["volumeMounts"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    probe = container["readinessProbe"]["exec"]["command"]
    assert "/v1/status/leader" in probe[-1]


def test_servers_join_through_the_headless_services_pod_names() -> None:
    objects = run_manifests("--replicas", "3", "--namespace", "mesh")
    sts = one(objects, "StatefulSet")
    headless = next(s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    config = json.loads(one_config(objects, "server"))
    svc = f"{headless['metadata']['name']}.mesh.svc.cluster.local"
    assert config["retry_join"] == [f"{sts['metadata']['name']}-{i}.{svc}" for i in range(3)]


def one_config(objects: list[dict[str, Any]], component: str) -> str:
    for cm in by_kind(objects, "ConfigMap"):
        if f"{component}.json" in cm["data"]:
            return str(cm["data"][f"{component}.json"])
    raise AssertionError(f"no {component}.json ConfigMap")


def test_cluster_key_and_tls_come_from_secrets_and_agents_never_get_the_server_key() -> None:
    objects = run_manifests("--gossip-secret", "gk", "--tls-secret", "srv-tls", "--ca-secret", "ca")
    sts, ds = one(objects, "StatefulSet"), one(objects, "DaemonSet")
    for workload in (sts, ds):
        env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
        key = next(e for e in env if e["name"] == "GOSSIP_KEY")
        assert key["valueFrom"]["secretKeyRef"] == {"name": "gk", "key": "key"}
    server_tls = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert server_tls["secret"] == {"secretName": "srv-tls"}
    agent_tls = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert agent_tls["secret"] == {
        "secretName": "ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    # No TLS: no Secret volume anywhere and no tls block in the config files.
    plain = run_manifests("--tls-secret", "")
    for workload in (one(plain, "StatefulSet"), one(plain, "DaemonSet")):
        assert all("secret" not in v for v in workload["spec"]["template"]["spec"]["volumes"])
    assert "tls" not in json.loads(one_config(plain, "server"))


def test_agents_are_a_daemonset_on_every_node_reachable_on_host_ports() -> None:
    ds = one(run_manifests("--agent-memory", "200Mi"), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    host_ports = {(p["hostPort"], p["protocol"]) for p in container["ports"] if "hostPort" in p}
    assert host_ports == {(8500, "TCP"), (8502, "TCP"), (8600, "UDP"), (8600, "TCP")}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"][:2]}
    assert env == {"NODE": "spec.nodeName", "ADVERTISE_IP": "status.hostIP"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert container["resources"]["requests"]["memory"] == "200Mi"
    assert container["resources"]["requests"]["cpu"]


def test_agent_rbac_is_read_only_and_bound_to_the_agents_account() -> None:
    objects = run_manifests()
    role = one(objects, "ClusterRole")
    granted = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    wanted = {
        (g, r, v)
        for g, r in [
            ("", "pods"),
            ("", "services"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
        ]
        for v in ("get", "list", "watch")
    }
    assert granted == wanted  # nothing that writes, no secrets
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    ds = one(objects, "DaemonSet")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": ds["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": "meshd",
        }
    ]


def _pod_flags(container: dict[str, Any], values: dict[str, str]) -> tuple[list[str], dict]:
    """The container's args as Kubernetes expands $(VAR), split like `meshd agent` does."""
    dirs, flags = [], {}
    for arg in container["args"]:
        expanded = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)
        name, _, value = expanded.lstrip("-").partition("=")
        if name == "config-dir":
            dirs.append(value)
        else:
            flags[name] = value
    return dirs, flags


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_the_rendered_config_and_args_load_as_meshd_config(kind: str, tmp_path: Path) -> None:
    # The ConfigMap is mounted at the -config-dir the container passes; meshd must accept both.
    objects = run_manifests("--datacenter", "eu-west", "--replicas", "5")
    workload = one(objects, kind)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    component = container["name"]
    (tmp_path / f"{component}.json").write_text(one_config(objects, component))
    key = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
    dirs, flags = _pod_flags(
        container, {"NODE": "node-7", "ADVERTISE_IP": "10.1.2.3", "GOSSIP_KEY": key}
    )
    assert dirs == ["/meshd/config"]
    cfg = load_config(dirs=[str(tmp_path)], flags=flags)
    assert cfg.datacenter == "eu-west"
    assert cfg.node_name == "node-7"
    assert cfg.advertise_addr == "10.1.2.3"
    assert cfg.encrypt == key
    assert len(cfg.retry_join) == 5
    assert cfg.server is (kind == "StatefulSet")
    assert cfg.leave_on_terminate is (kind == "DaemonSet")
    if cfg.server:
        assert cfg.bootstrap_expect == 5
        assert cfg.kubernetes is None  # no Service sync unless asked for
    else:
        # the Kubernetes mode, with this node's name from the downward API
        assert cfg.kubernetes is not None and cfg.kubernetes.register_pods
        assert cfg.kubernetes.kubeconfig is None  # in-cluster credentials
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef") for e in container["env"]}
        assert env["NODE_NAME"] == {"fieldPath": "spec.nodeName"}


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


def test_without_sync_the_servers_have_no_token_and_no_rights() -> None:
    objects = run_manifests()
    server_sa = next(
        o for o in by_kind(objects, "ServiceAccount") if "server" in o["metadata"]["name"]
    )
    assert server_sa["automountServiceAccountToken"] is False
    assert not by_kind(objects, "Role")
    sts = one(objects, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_sync_gives_the_servers_the_sync_config_and_only_the_rights_it_needs(
    tmp_path: Path,
) -> None:
    objects = run_manifests("--sync-catalog", "--sync-namespace", "apps")
    (tmp_path / "server.json").write_text(one_config(objects, "server"))
    cfg = load_config(dirs=[str(tmp_path)], flags={"node": "s0"})
    assert cfg.kubernetes is not None and not cfg.kubernetes.register_pods
    sync = cfg.kubernetes.sync_catalog
    assert (sync.to_consul, sync.to_k8s, sync.k8s_namespace) == (True, True, "apps")
    sts = one(objects, "StatefulSet")
    account = sts["spec"]["template"]["spec"]["serviceAccountName"]
    assert sts["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    roles = {r["metadata"]["name"]: r for r in by_kind(objects, "ClusterRole")}
    bindings = by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding")
    server_roles = {
        b["roleRef"]["name"]
        for b in bindings
        if b["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "meshd"}]
    }
    read = [roles[n] for n in server_roles if n in roles]
    (write,) = by_kind(objects, "Role")
    assert write["metadata"]["namespace"] == "apps"
    assert write["metadata"]["name"] in server_roles
    assert {g for r in read for g in _grants(r)} == {
        (g, r, v)
        for g, r in [("", "services"), ("discovery.k8s.io", "endpointslices")]
        for v in ("get", "list", "watch")
    }
    assert _grants(write) == {("", "services", v) for v in ("create", "update", "delete")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "0"], "--replicas 0"),
        (["--namespace", "Not_A_Label"], "--namespace"),
        (["--agent-memory", "lots"], "--agent-memory"),
        (["--coredns-stub"], "-dns-cluster-ip"),
        (["--sync-catalog", "--sync-namespace", "No"], "--sync-namespace"),
    ],
)
def test_bad_flags_are_refused_with_the_flag_named_and_nothing_printed(
    args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["k8s", "manifests", *args])
    assert result.exit_code == 1
    assert message in result.output
    assert "apiVersion" not in result.output


def test_coredns_stub_forwards_the_domain_to_the_pinned_dns_service() -> None:
    objects = run_manifests("--dns-cluster-ip", "10.96.0.53")
    dns = next(s for s in by_kind(objects, "Service") if s["spec"].get("type") == "ClusterIP")
    assert dns["spec"]["clusterIP"] == "10.96.0.53"
    stub_args = ["--dns-cluster-ip", "10.96.0.53", "--domain", "mesh", "--coredns-stub"]
    result = CliRunner().invoke(cli, ["k8s", "manifests", *stub_args])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("mesh:53 {")
    assert "forward . 10.96.0.53" in result.output
    assert result.output == coredns_stub(ManifestOptions(domain="mesh"), "10.96.0.53")


def test_render_is_in_apply_order() -> None:
    kinds = [o["kind"] for o in render(ManifestOptions())]
    assert kinds[0] == "Namespace"
    assert kinds.index("ServiceAccount") < kinds.index("StatefulSet")
    assert kinds.index("ConfigMap") < kinds.index("DaemonSet")
