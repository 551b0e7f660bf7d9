"""The sidecar injector over real HTTPS, fed real admission.k8s.io/v1 AdmissionReview bodies.

Each answer's JSONPatch is applied to the pod (PyPI's jsonpatch, RFC 6902) and the result is
validated strictly against Kubernetes' Pod schema; the registration the init container would
send is parsed by the agent's own service-definition code.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import REPO, free_port, wait_for

from meshd.agent.definitions import parse_service
from meshd.agent.sidecar import expand_sidecar
from meshd.k8s.webhook import InjectorSettings
from meshd.k8s.webhook_server import server_ssl, start

K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


# --- TLS material ---------------------------------------------------------------------------------


def _write_tls(tmp: Path) -> tuple[str, str, str]:
    """(ca, cert, key) paths: a CA and a serving cert for 127.0.0.1, as a caBundle would vouch."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("webhook test CA", ca_key, "webhook test CA", ca_key, True)
    leaf = cert("meshd-webhook", key, "webhook test CA", ca_key, False)
    paths = (tmp / "ca.pem", tmp / "tls.crt", tmp / "tls.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(paths[0]), str(paths[1]), str(paths[2])


@pytest.fixture
def tls(tmp_path: Path) -> tuple[str, str, str]:
    return _write_tls(tmp_path)


@pytest.fixture
async def webhook_url(tls: tuple[str, str, str]) -> AsyncIterator[str]:
    _, cert, key = tls
    runner = await start(
        InjectorSettings(image="reg.example/meshd:1"), "127.0.0.1", 0, server_ssl(cert, key)
    )
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/mutate"
    await runner.cleanup()


async def post(url: str, ca: str, body: Any) -> tuple[int, Any]:
    """As the API server does: HTTPS, verifying the webhook's certificate against the CA."""
    ctx = ssl.create_default_context(cafile=ca)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, ssl=ctx, headers={"Content-Type": "application/json"}) as resp,
    ):
        return resp.status, await resp.json()


# --- real objects ---------------------------------------------------------------------------------


def deployment_pod(annotations: dict[str, str], *, volumes: bool = True) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet creates it: no name yet, SA token volume mounted."""
    container: dict[str, Any] = {
        "name": "web",
        "image": "nginx:1.27",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9c6b5f4-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d9c6b5f4"},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9c6b5f4",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "enableServiceLinks": True,
        },
    }
    if volumes:
        container["volumeMounts"] = [
            {
                "name": "kube-api-access-x2b9q",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ]
        pod["spec"]["volumes"] = [
            {
                "name": "kube-api-access-x2b9q",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ],
                },
            }
        ]
    return pod


def admission_review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": "",
            "namespace": pod["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": str(uuid.uuid4()),
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, ops)  # type: ignore[no-any-return]


def container(pod: dict[str, Any], name: str, where: str = "containers") -> dict[str, Any]:
    return next(c for c in pod["spec"][where] if c["name"] == name)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values, command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


INJECT = {
    "consul.hashicorp.com/connect-inject": "true",
    "consul.hashicorp.com/connect-service-upstreams": "db:5432,cache:6379:dc2",
}


# --- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("volumes", [True, False])
async def test_annotated_pod_gets_a_sidecar_and_still_validates(
    webhook_url: str, tls: tuple[str, str, str], volumes: bool
) -> None:
    pod = deployment_pod(INJECT, volumes=volumes)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)  # the input is a real pod
    request = admission_review(pod)
    status, answer = await post(webhook_url, tls[0], request)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == request["request"]["uid"]
    assert response["allowed"] is True
    assert "warnings" not in response
    result = patched(pod, response)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(result, version, strict=True)

    assert result["spec"]["containers"][0] == pod["spec"]["containers"][0]  # the app untouched
    sidecar = container(result, "envoy-sidecar")
    assert sidecar["image"] == "reg.example/meshd:1"
    assert sidecar["command"] + sidecar["args"] == [
        "meshd",
        "connect",
        "envoy",
        "-sidecar-for",
        "$(POD_NAME)-web",
        "-grpc-addr",
        "$(HOST_IP):8502",
    ]
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in sidecar["env"]
    }
    assert env["HOST_IP"] == "status.hostIP"
    assert env["POD_NAME"] == "metadata.name"
    volume_names = [v["name"] for v in result["spec"]["volumes"]]
    (mount,) = sidecar["volumeMounts"]
    assert mount["name"] in volume_names
    tmpdir = next(e["value"] for e in sidecar["env"] if e["name"] == "TMPDIR")
    assert tmpdir == mount["mountPath"]  # Envoy's bootstrap lands on the shared volume
    assert result["metadata"]["annotations"]["consul.hashicorp.com/connect-inject-status"] == (
        "injected"
    )
    if volumes:
        assert volume_names[0] == "kube-api-access-x2b9q"


async def test_the_registration_the_init_container_sends_is_one_the_agent_accepts(
    webhook_url: str, tls: tuple[str, str, str]
) -> None:
    pod = deployment_pod({**INJECT, "consul.hashicorp.com/connect-service-port": "http"})
    _, answer = await post(webhook_url, tls[0], admission_review(pod))
    init = container(patched(pod, answer["response"]), "meshd-connect-init", "initContainers")
    values = {"POD_NAME": "web-7d9c6b5f4-abcde", "POD_IP": "10.244.1.7", "HOST_IP": "192.0.2.4"}
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert expand(env["MESHD_HTTP_ADDR"], values) == "192.0.2.4:8500"
    body = json.loads(expand(env["MESHD_SERVICE"], values))
    definition = parse_service(body["service"])
    assert definition.service.ID == "web-7d9c6b5f4-abcde-web"
    assert definition.service.Service == "web"
    assert definition.service.Address == "10.244.1.7"
    assert definition.service.Port == 8080  # the named container port
    sidecar = expand_sidecar(definition, set())
    assert sidecar is not None
    assert sidecar.service.Port == 20000
    assert sidecar.service.Address == "10.244.1.7"
    upstreams = sidecar.service.Proxy["Upstreams"]
    assert [
        (u["DestinationName"], u["LocalBindPort"], u["LocalBindAddress"]) for u in upstreams
    ] == [
        ("db", 5432, "127.0.0.1"),
        ("cache", 6379, "127.0.0.1"),
    ]


async def test_meshds_own_annotation_injects_and_reinvocation_adds_nothing(
    webhook_url: str, tls: tuple[str, str, str]
) -> None:
    pod = deployment_pod({"meshd.io/connect-inject": "true", "meshd.io/connect-service": "shop"})
    _, answer = await post(webhook_url, tls[0], admission_review(pod))
    result = patched(pod, answer["response"])
    assert container(result, "envoy-sidecar")["args"][1] == "$(POD_NAME)-shop"
    # reinvocationPolicy: IfNeeded sends the patched pod again; it must stay as it is.
    _, again = await post(webhook_url, tls[0], admission_review(result))
    assert again["response"]["allowed"] is True
    assert "patch" not in again["response"]


@pytest.mark.parametrize(
    ("annotations", "operation"),
    [
        ({}, "CREATE"),
        ({"consul.hashicorp.com/connect-inject": "false"}, "CREATE"),
        (INJECT, "UPDATE"),
    ],
)
async def test_pods_not_asking_for_a_sidecar_are_admitted_without_a_patch(
    webhook_url: str, tls: tuple[str, str, str], annotations: dict[str, str], operation: str
) -> None:
    request = admission_review(deployment_pod(annotations), operation)
    status, answer = await post(webhook_url, tls[0], request)
    assert status == 200
    assert answer["response"] == {"uid": request["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"consul.hashicorp.com/connect-service-upstreams": "db"}, "'db'"),
        ({"consul.hashicorp.com/connect-service-upstreams": "db:99999"}, "not a port"),
        ({"consul.hashicorp.com/connect-service-upstreams": "a:80,b:80"}, "same local port"),
        ({"consul.hashicorp.com/connect-service-port": "grpc"}, "'grpc'"),
        ({"consul.hashicorp.com/connect-service": "web shop"}, "'web shop'"),
    ],
)
async def test_a_malformed_annotation_admits_the_pod_unchanged_with_a_warning(
    webhook_url: str, tls: tuple[str, str, str], bad: dict[str, str], reason: str
) -> None:
    pod = deployment_pod({**INJECT, **bad})
    before = copy.deepcopy(pod)
    status, answer = await post(webhook_url, tls[0], admission_review(pod))
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    (warning,) = response["warnings"]
    assert warning.startswith("meshd: sidecar not injected:")
    assert reason in warning
    assert pod == before


async def test_a_pod_it_cannot_read_is_admitted_with_a_warning(
    webhook_url: str, tls: tuple[str, str, str]
) -> None:
    pod = deployment_pod(INJECT)
    del pod["spec"]["containers"][0]["ports"][0]["containerPort"]  # no API server sends this
    status, answer = await post(webhook_url, tls[0], admission_review(pod))
    assert status == 200
    assert answer["response"]["allowed"] is True
    assert "patch" not in answer["response"]
    (warning,) = answer["response"]["warnings"]
    assert "unreadable pod spec" in warning


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        ({"kind": "Pod", "apiVersion": "v1"}, "not an AdmissionReview"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}, "v1beta1"),
        ({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}, "uid"),
    ],
)
async def test_a_body_that_is_not_an_admission_review_is_a_400_with_the_reason(
    webhook_url: str, tls: tuple[str, str, str], body: Any, reason: str
) -> None:
    status, answer = await post(webhook_url, tls[0], body)
    assert status == 400
    assert reason in answer["error"]


def webhook_cmd(cert: str, key: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "meshd",
        "k8s",
        "webhook",
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        *args,
    ]


def test_meshd_k8s_webhook_serves_https_with_the_given_certificate(
    tls: tuple[str, str, str],
) -> None:
    ca, cert, key = tls
    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        webhook_cmd(cert, key, "--listen", f"127.0.0.1:{port}", "--image", "x/meshd:2"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        pod = deployment_pod(INJECT)

        def answer() -> Any:
            try:
                return asyncio.run(
                    post(f"https://127.0.0.1:{port}/mutate", ca, admission_review(pod))
                )
            except aiohttp.ClientConnectorError:
                return None

        status, body = wait_for(answer, timeout=30)
        assert status == 200
        assert container(patched(pod, body["response"]), "envoy-sidecar")["image"] == "x/meshd:2"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_meshd_k8s_webhook_refuses_a_missing_certificate(tmp_path: Path) -> None:
    result = subprocess.run(
        webhook_cmd(str(tmp_path / "x"), str(tmp_path / "y"), "--listen", "127.0.0.1:1"),
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot load the TLS certificate and key" in result.stderr
