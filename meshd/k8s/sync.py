"""Service sync, both ways, as pure translations (the loops are in meshd.agent.k8s_sync).

Kubernetes -> meshd: a Service is synced when its annotation `consul.hashicorp.com/service-sync`
(or `meshd.io/service-sync`) says "true", or, with `default_sync`, unless it says "false"; and
its namespace is allowed. Its instances are the ready endpoints of its EndpointSlices (label
`kubernetes.io/service-name`), registered on one catalog node (`k8s-sync`) with consul-k8s's
tag `k8s` and meta `external-source: kubernetes`.

meshd -> Kubernetes: every catalog service that did not come from Kubernetes becomes an
`ExternalName` Service `NAME` -> `NAME.service.<domain>` in one namespace, labelled as meshd's
so that only those are ever updated or deleted: a Service someone else made is left alone.
"""

from __future__ import annotations

import re
from typing import Any

from meshd.k8s.settings import SyncCatalog
from meshd.structs import NodeService

Obj = dict[str, Any]

SYNC_ANNOTATIONS = ("consul.hashicorp.com/service-sync", "meshd.io/service-sync")
NAME_ANNOTATIONS = ("consul.hashicorp.com/service-name", "meshd.io/service-name")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on every EndpointSlice of a Service
SOURCE_LABEL = "meshd.io/sync-source"  # on the ExternalName Services meshd writes
SYNC_TAG = "k8s"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _first(values: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in values:
            return values[name]
    return None


def wants_sync(service: Obj, cfg: SyncCatalog) -> bool:
    meta = _meta(service)
    if (meta.get("labels") or {}).get(SOURCE_LABEL) == "meshd":
        return False  # our own ExternalName: syncing it back would loop
    if not cfg.namespace_allowed(str(meta.get("namespace") or "default")):
        return False
    note = _first(meta.get("annotations") or {}, SYNC_ANNOTATIONS)
    if note is None:
        return cfg.default_sync
    return note.strip().lower() == "true"


def catalog_name(service: Obj) -> str:
    return _first(_meta(service).get("annotations") or {}, NAME_ANNOTATIONS) or str(
        _meta(service)["name"]
    )


def _slice_port(slc: Obj, service: Obj) -> int:
    """The slice's port for the Service's first port (by name), else its first port."""
    ports = slc.get("ports") or []
    wanted = ((service.get("spec") or {}).get("ports") or [{}])[0].get("name")
    for p in ports:
        if p.get("name") == wanted and p.get("port"):
            return int(p["port"])
    return int(ports[0]["port"]) if ports and ports[0].get("port") else 0


def instances(service: Obj, slices: list[Obj]) -> list[NodeService]:
    """One instance per ready endpoint address (sorted, so equal inputs give equal output)."""
    meta = _meta(service)
    ns, k8s_name = str(meta.get("namespace") or "default"), str(meta["name"])
    name = catalog_name(service)
    out: dict[str, NodeService] = {}
    for slc in slices:
        port = _slice_port(slc, service)
        for ep in slc.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue  # unknown (absent) counts as ready, as kube-proxy treats it
            for addr in ep.get("addresses") or []:
                sid = f"{name}-{ns}-{addr}-{port}".replace(":", "-")
                out[sid] = NodeService(
                    ID=sid,
                    Service=name,
                    Tags=[SYNC_TAG],
                    Address=str(addr),
                    Port=port,
                    Meta={
                        "external-source": "kubernetes",
                        "external-k8s-ns": ns,
                        "k8s-service-name": k8s_name,
                    },
                )
    return [out[k] for k in sorted(out)]


def desired_catalog(
    services: list[Obj], slices: list[Obj], cfg: SyncCatalog
) -> dict[str, NodeService]:
    """Every instance the sync node should hold, by service ID."""
    by_service: dict[tuple[str, str], list[Obj]] = {}
    for slc in slices:
        owner = (_meta(slc).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if owner:
            key = (str(_meta(slc).get("namespace") or "default"), owner)
            by_service.setdefault(key, []).append(slc)
    out: dict[str, NodeService] = {}
    for svc in services:
        if wants_sync(svc, cfg):
            key = (str(_meta(svc).get("namespace") or "default"), str(_meta(svc)["name"]))
            out.update({i.ID: i for i in instances(svc, by_service.get(key, []))})
    return out


def external_name_service(name: str, namespace: str, domain: str) -> Obj | None:
    """The ExternalName Service for one meshd service; None for a name Kubernetes refuses."""
    if not _DNS_1035.match(name):
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {SOURCE_LABEL: "meshd"},
        },
        "spec": {
            "type": "ExternalName",
            "externalName": f"{name}.service.{domain.rstrip('.')}",
        },
    }


def to_k8s_names(catalog: dict[str, list[str]], synced_in: set[str]) -> list[str]:
    """meshd services that get an ExternalName: not the ones that came from Kubernetes."""
    return sorted(
        n
        for n, tags in catalog.items()
        if n != "consul" and n not in synced_in and SYNC_TAG not in tags
    )


def owned_by_meshd(service: Obj) -> bool:
    return (_meta(service).get("labels") or {}).get(SOURCE_LABEL) == "meshd"
