"""The servers' rights when `--sync-catalog` is on (meshd.k8s.sync; run by the Raft leader).

Only the leading server syncs Services, so only the servers' account gets rights, and only
these: read Services and EndpointSlices cluster-wide, and write Services in the one namespace
the ExternalName Services go to. Without the flag the servers keep an account with no rights
and no token.
"""

from __future__ import annotations

from meshd.k8s.manifests import ManifestOptions, Obj, object_meta

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
