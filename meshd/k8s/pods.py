"""A pod on this node -> the service definitions the agent registers for it (pure).

Which pods: those that ask, with `connect-inject: "true"` or a `connect-service` annotation
(consul's or meshd's name). The service is named by the annotation, else by each Kubernetes
Service in the pod's namespace whose selector matches it, else by the webhook's fallback (the
`app` label, the first container's name). A pod that asks nothing is not registered: a
cluster's own pods (CoreDNS, controllers, ...) do not belong in the catalog by default.

The registration is the webhook's (`meshd.k8s.webhook.registration`) with the pod's real name
and IP put in: same ID (`<pod>-<service>`), same sidecar for an injected pod. The init
container's registration and the agent's are therefore one registration written twice, never
two instances; the agent's wins because it also follows readiness and deletion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshd.k8s.webhook import (
    PORT_ANNOTATIONS,
    SERVICE_ANNOTATIONS,
    STATUS_ANNOTATION,
    UPSTREAM_ANNOTATIONS,
    AnnotationError,
    annotation,
    parse_upstreams,
    registration,
    service_name,
    service_port,
    wants_injection,
)

Obj = dict[str, Any]

#: Service meta on every registration the agent owns, named as consul-k8s names them.
META_SOURCE = "external-source"
META_POD = "pod-name"
META_NAMESPACE = "k8s-namespace"
META_NODE = "k8s-node"
READINESS_SUFFIX = ":k8s-readiness"


@dataclass(frozen=True)
class PodState:
    """What decides the registration's check: ready, or why not."""

    ready: bool
    reason: str


def meta(pod: Obj) -> Obj:
    return pod.get("metadata") or {}


def annotations_of(pod: Obj) -> dict[str, str]:
    return meta(pod).get("annotations") or {}


def asks_registration(pod: Obj) -> bool:
    return wants_injection(pod) or annotation(annotations_of(pod), SERVICE_ANNOTATIONS) is not None


def is_gone(pod: Obj) -> bool:
    """A pod that finished never serves again; its registration goes at once."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def readiness(pod: Obj) -> PodState:
    if meta(pod).get("deletionTimestamp"):
        return PodState(False, "Pod is terminating")
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            if cond.get("status") == "True":
                return PodState(True, "Kubernetes reports the pod Ready")
            why = cond.get("message") or cond.get("reason") or "not ready"
            return PodState(False, f"Pod is not ready: {why}")
    return PodState(False, "Pod has no Ready condition yet")


def selects(service: Obj, pod: Obj) -> bool:
    """A Service's selector matches the pod (same namespace; an empty selector matches none)."""
    if meta(service).get("namespace") != meta(pod).get("namespace"):
        return False
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = meta(pod).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _target_port(service: Obj, pod: Obj) -> int | None:
    """The Service's first port's targetPort, a number or a container port name."""
    ports = (service.get("spec") or {}).get("ports") or []
    if not ports:
        return None
    target = ports[0].get("targetPort", ports[0].get("port"))
    if isinstance(target, int):
        return target
    return service_port(pod, str(target))


def _names_and_ports(pod: Obj, services: list[Obj]) -> list[tuple[str, int]]:
    notes = annotations_of(pod)
    port_note = annotation(notes, PORT_ANNOTATIONS)
    if annotation(notes, SERVICE_ANNOTATIONS) is None:
        out = []
        for svc in sorted(services, key=lambda s: str(meta(s).get("name"))):
            if selects(svc, pod):
                port = service_port(pod, port_note) if port_note else _target_port(svc, pod)
                out.append((str(meta(svc)["name"]), port or 0))
        if out:
            return out
    return [(service_name(pod, notes), service_port(pod, port_note))]


def definitions(pod: Obj, services: list[Obj], k8s_node: str) -> list[Obj]:
    """The agent service definitions for one pod; [] when it asks for none or has no IP yet.

    Raises AnnotationError for an annotation meshd cannot use (the caller logs it and skips
    the pod, as the webhook admits such a pod without a sidecar)."""
    if not asks_registration(pod) or is_gone(pod):
        return []
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return []
    pod_name, namespace = str(meta(pod).get("name")), str(meta(pod).get("namespace") or "default")
    notes = annotations_of(pod)
    injected = notes.get(STATUS_ANNOTATION) == "injected" or wants_injection(pod)
    upstreams = parse_upstreams(annotation(notes, UPSTREAM_ANNOTATIONS) or "")
    state = readiness(pod)
    out = []
    for name, port in _names_and_ports(pod, services):
        reg = registration(name, port, upstreams, namespace)["service"]
        text = json.dumps(reg).replace("$(POD_NAME)", pod_name).replace("$(POD_IP)", ip)
        svc: Obj = json.loads(text)
        if not injected:
            svc.pop("connect", None)
        svc["meta"].update({META_SOURCE: "kubernetes", META_NODE: k8s_node})
        svc["check"] = {
            "check_id": svc["id"] + READINESS_SUFFIX,
            "name": "Kubernetes Readiness Check",
            "ttl": "1s",  # the agent clears the timer: pod events set the status, not time
            "status": "passing" if state.ready else "critical",
            "output": state.reason,
        }
        out.append(svc)
    return out


def owned(service_meta: dict[str, str]) -> bool:
    """A local service registered for a pod (by the agent, or by an injected init container,
    whose registration carries the same pod meta): the Kubernetes mode may remove it."""
    return META_POD in service_meta and META_NAMESPACE in service_meta


__all__ = [
    "AnnotationError",
    "PodState",
    "asks_registration",
    "definitions",
    "is_gone",
    "owned",
    "readiness",
    "selects",
]
