"""Sidecar injection: an AdmissionReview (admission.k8s.io/v1) in, its answer with a JSONPatch out.

Pure, so the tests run it on real AdmissionReview bodies and apply the patch themselves. What
a pod annotated `consul.hashicorp.com/connect-inject: "true"` (or `meshd.io/connect-inject`)
gets, all of it resolved at run time through the downward API because a Deployment's pods
have no name yet when they are admitted:

- an init container that registers the service and its sidecar with the node's agent
  (`$HOST_IP:8500`), ID `<pod name>-<service>`, address the pod IP;
- the `envoy-sidecar` container running `meshd connect envoy -sidecar-for <that ID>` against
  `$HOST_IP:8502`, deregistering the service when the pod stops;
- an emptyDir shared by both, holding the registration and Envoy's bootstrap (TMPDIR).

meshd never blocks a pod: a malformed annotation admits it unchanged with a warning, because
an injector outage or typo must not stop a cluster's deployments.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

INJECT_ANNOTATIONS = ("consul.hashicorp.com/connect-inject", "meshd.io/connect-inject")
SERVICE_ANNOTATIONS = ("consul.hashicorp.com/connect-service", "meshd.io/connect-service")
PORT_ANNOTATIONS = ("consul.hashicorp.com/connect-service-port", "meshd.io/connect-service-port")
UPSTREAM_ANNOTATIONS = (
    "consul.hashicorp.com/connect-service-upstreams",
    "meshd.io/connect-service-upstreams",
)
STATUS_ANNOTATION = "consul.hashicorp.com/connect-inject-status"
SIDECAR_NAME = "envoy-sidecar"
INIT_NAME = "meshd-connect-init"
VOLUME_NAME = "meshd-connect-inject"
VOLUME_PATH = "/meshd/connect-inject"
SIDECAR_PORT = 20000  # the proxy's public (mTLS) listener, as in consul-k8s

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?$")


class AdmissionError(ValueError):
    """A body that is not an AdmissionReview; the API server sent something broken."""


class AnnotationError(ValueError):
    """A pod annotation meshd cannot use; becomes a warning, never a rejection."""


@dataclass(frozen=True)
class InjectorSettings:
    """What the webhook's flags set for every injected pod."""

    image: str = "meshd:0.1.0"
    agent_http_port: int = 8500
    agent_grpc_port: int = 8502


@dataclass(frozen=True)
class Upstream:
    name: str
    port: int
    datacenter: str | None = None


def annotation(annotations: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in annotations:
            return annotations[name]
    return None


def wants_injection(pod: Obj) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotation(annotations, INJECT_ANNOTATIONS)
    return isinstance(value, str) and value.strip().lower() == "true"


def parse_upstreams(value: str) -> list[Upstream]:
    """consul-k8s's format: `name:port[:datacenter]`, comma-separated."""
    out: list[Upstream] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3) or not _NAME.match(parts[0]):
            raise AnnotationError(f"upstream {item!r}: expected name:port[:datacenter]")
        if not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
            raise AnnotationError(f"upstream {item!r}: {parts[1]!r} is not a port")
        dc = parts[2] if len(parts) == 3 else None
        if dc is not None and not _NAME.match(dc):
            raise AnnotationError(f"upstream {item!r}: {dc!r} is not a datacenter name")
        out.append(Upstream(parts[0], int(parts[1]), dc))
    ports = [u.port for u in out]
    if len(set(ports)) != len(ports):
        raise AnnotationError(f"upstreams {value!r}: two upstreams bind the same local port")
    return out


def service_port(pod: Obj, value: str | None) -> int:
    """A number, or the name of a container port; without the annotation, the first port."""
    ports = [p for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
    if value is None:
        return int(ports[0]["containerPort"]) if ports else 0
    if value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    for p in ports:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise AnnotationError(
        f"connect-service-port {value!r}: neither a port nor a container port name"
    )


def service_name(pod: Obj, annotations: dict[str, str]) -> str:
    name = annotation(annotations, SERVICE_ANNOTATIONS)
    if name is None:
        labels = pod["metadata"].get("labels") or {}
        name = labels.get("app") or pod["spec"]["containers"][0]["name"]
    if not _NAME.match(name):
        raise AnnotationError(f"connect-service {name!r}: not a service name")
    return name


def registration(service: str, port: int, upstreams: list[Upstream], namespace: str) -> Obj:
    """The agent registration, with $(POD_NAME)/$(POD_IP) left for Kubernetes to expand."""
    sid = f"$(POD_NAME)-{service}"
    ups: list[Obj] = []
    for u in upstreams:
        up: Obj = {"destination_name": u.name, "local_bind_port": u.port}
        if u.datacenter:
            up["datacenter"] = u.datacenter
        ups.append(up)
    return {
        "service": {
            "id": sid,
            "name": service,
            "address": "$(POD_IP)",
            "port": port,
            "meta": {"pod-name": "$(POD_NAME)", "k8s-namespace": namespace},
            "connect": {
                "sidecar_service": {
                    "port": SIDECAR_PORT,
                    "address": "$(POD_IP)",
                    "proxy": {"local_service_port": port, "upstreams": ups},
                    # The agent runs in another network namespace: check the pod IP, not loopback.
                    "checks": [
                        {
                            "name": "Connect Sidecar Listening",
                            "tcp": f"$(POD_IP):{SIDECAR_PORT}",
                            "interval": "10s",
                        },
                        {"name": "Connect Sidecar Aliasing", "alias_service": sid},
                    ],
                },
            },
        }
    }


def _env(settings: InjectorSettings) -> list[Obj]:
    def field(name: str, path: str) -> Obj:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        field("HOST_IP", "status.hostIP"),
        field("POD_IP", "status.podIP"),
        field("POD_NAME", "metadata.name"),
        {"name": "MESHD_HTTP_ADDR", "value": f"$(HOST_IP):{settings.agent_http_port}"},
        {"name": "TMPDIR", "value": VOLUME_PATH},
    ]


def containers(settings: InjectorSettings, service: str, reg: Obj) -> tuple[Obj, Obj]:
    """(init container, sidecar container) for one service."""
    service_file = f"{VOLUME_PATH}/service.json"
    mount = [{"name": VOLUME_NAME, "mountPath": VOLUME_PATH}]
    security = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    init = {
        "name": INIT_NAME,
        "image": settings.image,
        "command": ["/bin/sh", "-ec"],
        "args": [
            f'printf %s "$MESHD_SERVICE" > {service_file}\n'
            f"exec meshd services register {service_file}"
        ],
        "env": [*_env(settings), {"name": "MESHD_SERVICE", "value": json.dumps(reg)}],
        "volumeMounts": mount,
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": security,
    }
    sidecar = {
        "name": SIDECAR_NAME,
        "image": settings.image,
        "command": ["meshd", "connect", "envoy"],
        "args": [
            "-sidecar-for",
            f"$(POD_NAME)-{service}",
            "-grpc-addr",
            f"$(HOST_IP):{settings.agent_grpc_port}",
        ],
        "env": _env(settings),
        "ports": [{"name": "mesh", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "volumeMounts": mount,
        "lifecycle": {
            "preStop": {"exec": {"command": ["meshd", "services", "deregister", service_file]}}
        },
        "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
        "securityContext": security,
    }
    return init, sidecar


def _escape(key: str) -> str:
    """RFC 6901: annotation keys hold '/', which a JSON pointer must escape."""
    return key.replace("~", "~0").replace("/", "~1")


def _append(pod_part: Obj, key: str, path: str, item: Obj) -> Obj:
    if pod_part.get(key):
        return {"op": "add", "path": f"{path}/{key}/-", "value": item}
    return {"op": "add", "path": f"{path}/{key}", "value": [item]}


def injection_patch(pod: Obj, settings: InjectorSettings, namespace: str) -> list[Obj]:
    """The JSONPatch for one pod; [] when it does not ask for injection or already has it."""
    if not wants_injection(pod):
        return []
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    names = {c.get("name") for c in spec.get("containers") or []}
    if SIDECAR_NAME in names or annotations.get(STATUS_ANNOTATION) == "injected":
        return []  # reinvoked, or injected by hand: never add a second sidecar
    if not spec.get("containers"):
        raise AnnotationError("the pod has no containers to put in the mesh")
    service = service_name(pod, annotations)
    port = service_port(pod, annotation(annotations, PORT_ANNOTATIONS))
    upstreams = parse_upstreams(annotation(annotations, UPSTREAM_ANNOTATIONS) or "")
    init, sidecar = containers(settings, service, registration(service, port, upstreams, namespace))
    return [
        _append(spec, "volumes", "/spec", {"name": VOLUME_NAME, "emptyDir": {}}),
        _append(spec, "initContainers", "/spec", init),
        _append(spec, "containers", "/spec", sidecar),
        {
            "op": "add",
            "path": f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}",
            "value": "injected",
        },
    ]


def _allowed(uid: str, patch: list[Obj], warnings: list[str]) -> Obj:
    response: Obj = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def review(body: Any, settings: InjectorSettings) -> Obj:
    """Answer one AdmissionReview: always allowed; patched when the pod asks for a sidecar."""
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise AdmissionError("the body is not an AdmissionReview")
    if body.get("apiVersion") != "admission.k8s.io/v1":
        raise AdmissionError(f"apiVersion {body.get('apiVersion')!r}: only admission.k8s.io/v1")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise AdmissionError("the AdmissionReview has no request.uid")
    uid = request["uid"]
    pod = request.get("object")
    kind = request.get("kind")
    is_pod = isinstance(kind, dict) and kind.get("kind") == "Pod"
    if request.get("operation") != "CREATE" or not is_pod or not isinstance(pod, dict):
        return _allowed(uid, [], [])
    try:
        patch = injection_patch(pod, settings, request.get("namespace") or "default")
    except AnnotationError as e:
        return _allowed(uid, [], [f"meshd: sidecar not injected: {e}"])
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        # A pod shaped unlike any the API server sends: still never meshd's reason to refuse it.
        return _allowed(uid, [], [f"meshd: sidecar not injected: unreadable pod spec ({e!r})"])
    if patch and "annotations" not in pod["metadata"]:  # a patch means metadata exists
        patch.insert(0, {"op": "add", "path": "/metadata/annotations", "value": {}})
    return _allowed(uid, patch, [])
