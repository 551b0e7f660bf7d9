"""The Kubernetes objects that install meshd: servers, agents, RBAC, config and DNS.

Pure functions from `ManifestOptions` to a list of plain dicts in `kubectl apply` order, so the
tests validate exactly what `meshd k8s manifests` prints. Choices that are not obvious:

- Servers find each other through a headless Service that publishes not-ready addresses: a
  server is only ready once there is a leader, and there is no leader until the servers have
  found each other.
- Readiness runs a command, not an httpGet: `/v1/status/leader` answers 200 with `""` while
  there is no leader, so only the body tells.
- Agents advertise the node's IP and publish 8500/8502/8600 as host ports, so a pod reaches its
  node's agent at `$HOST_IP`, the address Envoy sidecars get their configuration from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")

CONFIG_DIR = "/meshd/config"
DATA_DIR = "/meshd/data"
TLS_DIR = "/meshd/tls"
HTTP_PORT, GRPC_PORT, DNS_PORT, SERVER_PORT, RAFT_PORT = 8500, 8502, 8600, 8300, 8301

# The readiness test: exit 0 only once the agent names a leader.
LEADER_PROBE = (
    "import sys, urllib.request as u; "
    f"b = u.urlopen('http://127.0.0.1:{HTTP_PORT}/v1/status/leader', timeout=2).read(); "
    "sys.exit(b.strip() in (b'', b'\"\"'))"
)


class ManifestError(ValueError):
    """An option that would render objects Kubernetes rejects; the message names the flag."""


@dataclass
class ManifestOptions:
    """What `meshd k8s manifests` flags can change; the defaults make a 3-server install."""

    namespace: str = "meshd"
    name: str = "meshd"
    image: str = "meshd:0.1.0"
    datacenter: str = "dc1"
    domain: str = "consul"
    cluster_domain: str = "cluster.local"
    replicas: int = 3
    storage: str = "10Gi"
    storage_class: str | None = None
    gossip_secret: str = "meshd-gossip-key"
    # Servers mount tls.crt/tls.key/ca.crt from this Secret; agents mount only ca.crt from
    # ca_secret, so a node never holds a server's private key. "" = no TLS on port 8300.
    tls_secret: str = "meshd-server-tls"
    ca_secret: str = "meshd-ca"
    # Measured: an idle agent is 75 MB RSS, 76 MB with 1,000 services (benchmarks/README.md).
    agent_cpu: str = "100m"
    agent_memory: str = "128Mi"
    server_cpu: str = "250m"
    server_memory: str = "256Mi"
    dns_cluster_ip: str | None = None
    # The injector (meshd.k8s.webhook_manifests): off unless asked for.
    webhook: bool = False
    webhook_ca_bundle: str | None = None  # PEM of the CA that signed the webhook's certificate
    webhook_tls_secret: str = "meshd-webhook-tls"
    # Service sync (meshd.k8s.rbac): off unless asked for; the leading server runs it.
    sync_catalog: bool = False
    sync_namespace: str = "default"  # where meshd's services appear as ExternalName Services
    extra_labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse before rendering, so nothing half-valid reaches `kubectl apply`."""
        names = [("namespace", self.namespace), ("name", self.name)]
        for flag, value in [*names, ("sync-namespace", self.sync_namespace)]:
            if not _DNS_LABEL.match(value) or len(value) > 40:
                raise ManifestError(
                    f"--{flag} {value!r}: must be a DNS label (a-z, 0-9, '-', at most 40 chars)"
                )
        if self.replicas < 1:
            raise ManifestError(f"--replicas {self.replicas}: at least one server is needed")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError(f"--image {self.image!r}: not an image reference")
        if not re.match(r"^[A-Za-z0-9_-]+$", self.datacenter):
            raise ManifestError(f"--datacenter {self.datacenter!r}: letters, digits, - and _")
        for flag, value in (
            ("storage", self.storage),
            ("agent-cpu", self.agent_cpu),
            ("agent-memory", self.agent_memory),
            ("server-cpu", self.server_cpu),
            ("server-memory", self.server_memory),
        ):
            if not _QUANTITY.match(value):
                raise ManifestError(f"--{flag} {value!r}: not a Kubernetes quantity (e.g. 128Mi)")
        if self.webhook_ca_bundle is not None and (
            "-----BEGIN CERTIFICATE-----" not in self.webhook_ca_bundle
        ):
            raise ManifestError("--webhook-ca-bundle: the file holds no PEM certificate")

    @property
    def server_name(self) -> str:
        return f"{self.name}-server"

    @property
    def agent_name(self) -> str:
        return f"{self.name}-agent"

    def server_dns_names(self) -> list[str]:
        """The stable DNS names of the server pods, which the headless Service creates."""
        svc = f"{self.server_name}.{self.namespace}.svc.{self.cluster_domain}"
        return [f"{self.server_name}-{i}.{svc}" for i in range(self.replicas)]


def object_meta(opts: ManifestOptions, name: str, component: str, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name, "labels": pod_labels(opts, component)}
    if namespaced:
        meta["namespace"] = opts.namespace
    return meta


def selector_labels(opts: ManifestOptions, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": opts.name, "app.kubernetes.io/component": component}


def pod_labels(opts: ManifestOptions, component: str) -> dict[str, str]:
    return {
        **opts.extra_labels,
        **selector_labels(opts, component),
        "app.kubernetes.io/part-of": "meshd",
    }


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _secret_env(name: str, secret: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _resources(cpu: str, memory: str) -> Obj:
    # No CPU limit: throttling a Raft leader's heartbeats costs an election.
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def _port(name: str, port: int, protocol: str = "TCP", host: bool = False) -> Obj:
    p: Obj = {"name": name, "containerPort": port, "protocol": protocol}
    if host:
        p["hostPort"] = port
    return p


def _tls_config(opts: ManifestOptions, server: bool) -> Obj:
    if not opts.tls_secret:
        return {}
    files: Obj = {"ca_file": f"{TLS_DIR}/ca.crt", "verify_outgoing": True}
    if server:
        files.update(
            cert_file=f"{TLS_DIR}/tls.crt", key_file=f"{TLS_DIR}/tls.key", verify_incoming=True
        )
    return {"tls": {"defaults": files, "internal_rpc": {"verify_server_hostname": True}}}


def _agent_json(opts: ManifestOptions, server: bool) -> str:
    cfg: Obj = {
        "datacenter": opts.datacenter,
        "domain": opts.domain,
        "data_dir": DATA_DIR,
        "bind_addr": "0.0.0.0",
        "client_addr": "0.0.0.0",
        "retry_join": opts.server_dns_names(),
        "leave_on_terminate": not server,
        **_tls_config(opts, server),
    }
    if server:
        cfg.update(server=True, bootstrap_expect=opts.replicas)
        if opts.sync_catalog:
            from meshd.k8s.rbac import server_kubernetes_config

            cfg["kubernetes"] = server_kubernetes_config(opts)
    else:
        # the Kubernetes mode: in-cluster credentials, this node's pods ($NODE_NAME)
        cfg["kubernetes"] = {}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def config_maps(opts: ManifestOptions) -> list[Obj]:
    """One config file per role; the per-pod values come as flags from the downward API."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": object_meta(opts, f"{name}-config", component),
            "data": {f"{component}.json": _agent_json(opts, server=component == "server")},
        }
        for name, component in ((opts.server_name, "server"), (opts.agent_name, "agent"))
    ]


def _container(
    opts: ManifestOptions, component: str, env: list[Obj], ports: list[Obj], mounts: list[Obj]
) -> Obj:
    cpu, mem = (
        (opts.server_cpu, opts.server_memory)
        if component == "server"
        else (opts.agent_cpu, opts.agent_memory)
    )
    return {
        "name": component,
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["meshd", "agent"],
        "args": [
            f"-config-dir={CONFIG_DIR}",
            "-node=$(NODE)",
            "-advertise=$(ADVERTISE_IP)",
            "-encrypt=$(GOSSIP_KEY)",
        ],
        "env": [*env, _secret_env("GOSSIP_KEY", opts.gossip_secret, "key")],
        "ports": ports,
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "data", "mountPath": DATA_DIR},
            # The root filesystem is read-only; Python and meshd still want a /tmp.
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
        "resources": _resources(cpu, mem),
        "readinessProbe": {
            "exec": {"command": ["python3", "-c", LEADER_PROBE]},
            "initialDelaySeconds": 5,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _volumes(config_map: str, secret: str, items: list[str] | None) -> list[Obj]:
    vols: list[Obj] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if secret:
        src: Obj = {"secretName": secret}
        if items is not None:
            src["items"] = [{"key": k, "path": k} for k in items]
        vols.append({"name": "tls", "secret": src})
    return vols


def _tls_mount(opts: ManifestOptions) -> list[Obj]:
    return [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True}] if opts.tls_secret else []


def _pod_security() -> Obj:
    return {"runAsNonRoot": True, "runAsUser": 100, "runAsGroup": 1000, "fsGroup": 1000}


def server_statefulset(opts: ManifestOptions) -> Obj:
    """The Raft voters: stable names, one volume each, never two on one node."""
    selector = selector_labels(opts, "server")
    claim: Obj = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": opts.storage}},
        },
    }
    if opts.storage_class:
        claim["spec"]["storageClassName"] = opts.storage_class
    container = _container(
        opts,
        "server",
        [_field_env("NODE", "metadata.name"), _field_env("ADVERTISE_IP", "status.podIP")],
        [
            _port("http", HTTP_PORT),
            _port("grpc", GRPC_PORT),
            _port("dns-udp", DNS_PORT, "UDP"),
            _port("dns-tcp", DNS_PORT),
            _port("server", SERVER_PORT),
            _port("raft", RAFT_PORT),
        ],
        _tls_mount(opts),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(opts, opts.server_name, "server"),
        "spec": {
            "serviceName": opts.server_name,
            "replicas": opts.replicas,
            # All servers start together: a new cluster needs bootstrap_expect of them to elect.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels(opts, "server")},
                "spec": {
                    "serviceAccountName": opts.server_name,
                    # a token only for the Service sync's rights
                    "automountServiceAccountToken": opts.sync_catalog,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": _pod_security(),
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "labelSelector": {"matchLabels": selector},
                                    "topologyKey": "kubernetes.io/hostname",
                                }
                            ]
                        }
                    },
                    "containers": [container],
                    "volumes": _volumes(f"{opts.server_name}-config", opts.tls_secret, None),
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }


def agent_daemonset(opts: ManifestOptions) -> Obj:
    """One client agent per node, reachable from that node's pods at $HOST_IP."""
    container = _container(
        opts,
        "agent",
        [
            _field_env("NODE", "spec.nodeName"),
            _field_env("ADVERTISE_IP", "status.hostIP"),
            _field_env("NODE_NAME", "spec.nodeName"),  # the Kubernetes mode's pod selector
        ],
        [
            _port("http", HTTP_PORT, host=True),
            _port("grpc", GRPC_PORT, host=True),
            _port("dns-udp", DNS_PORT, "UDP", host=True),
            _port("dns-tcp", DNS_PORT, host=True),
        ],
        _tls_mount(opts),
    )
    volumes = _volumes(
        f"{opts.agent_name}-config", opts.ca_secret if opts.tls_secret else "", ["ca.crt"]
    )
    volumes.append({"name": "data", "emptyDir": {}})
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": object_meta(opts, opts.agent_name, "agent"),
        "spec": {
            "selector": {"matchLabels": selector_labels(opts, "agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": pod_labels(opts, "agent")},
                "spec": {
                    "serviceAccountName": opts.agent_name,
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": _pod_security(),
                    # Every node, tainted or not: a node without an agent has no mesh.
                    "tolerations": [{"operator": "Exists"}],
                    "priorityClassName": "system-node-critical",
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def services(opts: ManifestOptions) -> list[Obj]:
    """The servers' headless Service (pod DNS names) and a ClusterIP for the agents' DNS."""
    dns_spec: Obj = {
        "type": "ClusterIP",
        "selector": selector_labels(opts, "agent"),
        "ports": [
            {"name": "dns-udp", "port": 53, "targetPort": "dns-udp", "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "targetPort": "dns-tcp", "protocol": "TCP"},
        ],
    }
    if opts.dns_cluster_ip:
        dns_spec["clusterIP"] = opts.dns_cluster_ip
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(opts, opts.server_name, "server"),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": selector_labels(opts, "server"),
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                    {"name": "server", "port": SERVER_PORT, "targetPort": "server"},
                    {"name": "raft", "port": RAFT_PORT, "targetPort": "raft"},
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(opts, f"{opts.name}-dns", "agent"),
            "spec": dns_spec,
        },
    ]


def disruption_budget(opts: ManifestOptions) -> Obj:
    """One server down at a time: with 3, a drain never costs the quorum."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(opts, opts.server_name, "server"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(opts, "server")}},
    }


def render(opts: ManifestOptions) -> list[Obj]:
    """Every object, in an order `kubectl apply` accepts in one pass."""
    opts.validate()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/part-of": "meshd"}},
    }
    from meshd.k8s.rbac import rbac, sync_rbac  # these build on this module
    from meshd.k8s.webhook_manifests import webhook_objects

    return [
        namespace,
        *rbac(opts),
        *(sync_rbac(opts) if opts.sync_catalog else []),
        *config_maps(opts),
        *services(opts),
        disruption_budget(opts),
        server_statefulset(opts),
        agent_daemonset(opts),
        *(webhook_objects(opts) if opts.webhook else []),
    ]


def coredns_stub(opts: ManifestOptions, dns_ip: str) -> str:
    """A Corefile server block sending `.<domain>` to the agents' DNS Service.

    CoreDNS's `forward` takes addresses, not names, hence the Service's ClusterIP (pin it with
    `--dns-cluster-ip` so this snippet stays true across reinstalls).
    """
    return f"{opts.domain}:53 {{\n    errors\n    cache 30\n    forward . {dns_ip}\n}}\n"


def to_yaml(objects: list[Obj]) -> str:
    """Multi-document YAML; config files keep their lines (block scalars), not escaped `\\n`."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)
