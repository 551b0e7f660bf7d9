"""Accounts and rights: the agents read what their Kubernetes mode watches, nothing more.

With `--sync-catalog` the servers get rights too, since only the leading server syncs Services
(meshd.k8s.sync): read Services and EndpointSlices cluster-wide, and write Services in the one
namespace the ExternalName Services go to. Without the flag the servers keep an account with no
rights and no token.
"""

from __future__ import annotations

from meshd.k8s.manifests import ManifestOptions, Obj, object_meta

# What the agent's Kubernetes mode reads, and nothing it could change.
AGENT_RULES: list[Obj] = [
    {
        "apiGroups": [""],
        "resources": ["pods", "services", "namespaces"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
]


def rbac(opts: ManifestOptions) -> list[Obj]:
    """Servers get an account with no rights and no token; agents read pods and Services."""
    role_name = f"{opts.namespace}-{opts.agent_name}"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(opts, opts.server_name, "server"),
            "automountServiceAccountToken": opts.sync_catalog,
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(opts, opts.agent_name, "agent"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": object_meta(opts, role_name, "agent", namespaced=False),
            "rules": AGENT_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": object_meta(opts, role_name, "agent", namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role_name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": opts.agent_name, "namespace": opts.namespace}
            ],
        },
    ]


READ_RULES: list[Obj] = [
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
]
WRITE_RULES: list[Obj] = [
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "update", "delete"]},
]


def server_kubernetes_config(opts: ManifestOptions) -> Obj:
    """The servers' `kubernetes` block: no pods (the node's DaemonSet agent has them)."""
    return {
        "register_pods": False,
        "sync_catalog": {
            "to_consul": True,
            "to_k8s": True,
            "k8s_namespace": opts.sync_namespace,
        },
    }


def _binding(opts: ManifestOptions, kind: str, name: str, namespace: str | None) -> Obj:
    meta = object_meta(opts, name, "server", namespaced=namespace is not None)
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": opts.server_name, "namespace": opts.namespace}
        ],
    }


def sync_rbac(opts: ManifestOptions) -> list[Obj]:
    read = f"{opts.namespace}-{opts.server_name}-sync"
    write = f"{opts.server_name}-sync"
    write_meta = object_meta(opts, write, "server")
    write_meta["namespace"] = opts.sync_namespace
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": object_meta(opts, read, "server", namespaced=False),
            "rules": READ_RULES,
        },
        _binding(opts, "ClusterRole", read, None),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": write_meta,
            "rules": WRITE_RULES,
        },
        _binding(opts, "Role", write, opts.sync_namespace),
    ]
