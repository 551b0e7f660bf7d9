"""The agent config's `kubernetes { ... }` block: its schema and its value.

Kept out of `meshd.config` (which only adds the block's key and field) so that module stays
small. Every key is optional: an empty block means "in-cluster credentials, this pod's node
(`NODE_NAME` from the downward API), register the node's pods, sync no Services".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from meshd import configvalues as cv
from meshd.configvalues import Schema

#: The namespaces a Service is never synced from unless allowed by name (consul-k8s's default).
DEFAULT_DENY = ("kube-system", "kube-public")


@dataclass
class SyncCatalog:
    """Service sync: Kubernetes Services -> meshd (`to_consul`) and back as ExternalName."""

    to_consul: bool = False
    # True: every Service not annotated `service-sync: "false"`; False: only those annotated "true"
    default_sync: bool = False
    to_k8s: bool = False
    k8s_namespace: str = "default"  # where the ExternalName Services are written
    allow_namespaces: list[str] = field(default_factory=lambda: ["*"])
    deny_namespaces: list[str] = field(default_factory=lambda: list(DEFAULT_DENY))
    node_name: str = "k8s-sync"  # the catalog node the synced instances live on

    def namespace_allowed(self, namespace: str) -> bool:
        """Deny beats allow, as in consul-k8s's `-allow-k8s-namespace`/`-deny-k8s-namespace`."""
        if namespace in self.deny_namespaces:
            return False
        return "*" in self.allow_namespaces or namespace in self.allow_namespaces


@dataclass
class KubernetesConfig:
    kubeconfig: str | None = None  # None: the pod's in-cluster service account
    context: str | None = None
    node_name: str = ""  # "" = $NODE_NAME, else the agent's own node name
    register_pods: bool = True
    sync_catalog: SyncCatalog = field(default_factory=SyncCatalog)

    def k8s_node(self, agent_node: str) -> str:
        return self.node_name or os.environ.get("NODE_NAME", "") or agent_node


def _fields(prefix: tuple[str, ...], **checks: cv.Validator) -> Schema:
    return {key: ((*prefix, key), check) for key, check in checks.items()}


_SYNC: Schema = _fields(
    ("kubernetes", "sync_catalog"),
    to_consul=cv.boolean,
    default_sync=cv.boolean,
    to_k8s=cv.boolean,
    k8s_namespace=cv.string,
    allow_namespaces=cv.str_list,
    deny_namespaces=cv.str_list,
    node_name=cv.node_name,
)

SCHEMA: Schema = {
    **_fields(
        ("kubernetes",),
        kubeconfig=cv.string,
        context=cv.string,
        node_name=cv.string,
        register_pods=cv.boolean,
    ),
    "sync_catalog": (None, _SYNC),
    # The block's presence turns the mode on; `enabled = false` in a later file turns it off.
    "enabled": (("kubernetes", "enabled"), cv.boolean),
}


def build(raw: dict[str, Any] | None) -> KubernetesConfig | None:
    """The merged canonical block -> its value; None when the config has no block at all."""
    if raw is None:
        return None
    raw = dict(raw)
    if raw.pop("enabled", True) is False:
        return None
    sync = SyncCatalog(**raw.pop("sync_catalog", {}))
    for key in ("kubeconfig", "context"):
        if key in raw:
            raw[key] = raw[key] or None
    return KubernetesConfig(sync_catalog=sync, **raw)
