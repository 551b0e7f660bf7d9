"""The injector's own objects: its Deployment, Service and MutatingWebhookConfiguration.

`failurePolicy: Ignore`: when the injector is down, pods start without a sidecar rather than not
at all (the same rule as for a malformed annotation). Its own namespace and the system ones are
never sent to it, so it cannot stand in the way of its own restart.
"""

from __future__ import annotations

import base64

from meshd.k8s.manifests import ManifestOptions, Obj, object_meta, pod_labels, selector_labels

WEBHOOK_PORT = 8080
TLS_PATH = "/meshd/webhook-tls"


def webhook_objects(opts: ManifestOptions) -> list[Obj]:
    name = f"{opts.name}-webhook"
    selector = selector_labels(opts, "webhook")
    container: Obj = {
        "name": "webhook",
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["meshd", "k8s", "webhook"],
        "args": [
            f"-tls-cert-file={TLS_PATH}/tls.crt",
            f"-tls-key-file={TLS_PATH}/tls.key",
            f"-listen=0.0.0.0:{WEBHOOK_PORT}",
            f"-image={opts.image}",
        ],
        "ports": [{"name": "https", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 5,
        },
        "volumeMounts": [{"name": "tls", "mountPath": TLS_PATH, "readOnly": True}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    client_config: Obj = {
        "service": {
            "name": name,
            "namespace": opts.namespace,
            "path": "/mutate",
            "port": 443,
        }
    }
    if opts.webhook_ca_bundle:
        client_config["caBundle"] = base64.b64encode(opts.webhook_ca_bundle.encode()).decode()
    hook: Obj = {
        "name": "connect-inject.meshd.io",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Ignore",
        "reinvocationPolicy": "IfNeeded",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "clientConfig": client_config,
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", "kube-public", opts.namespace],
                }
            ]
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(opts, name, "webhook"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(opts, name, "webhook"),
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": pod_labels(opts, "webhook")},
                    "spec": {
                        "serviceAccountName": name,
                        "automountServiceAccountToken": False,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 100},
                        "containers": [container],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": opts.webhook_tls_secret}}
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(opts, name, "webhook"),
            "spec": {
                "selector": selector,
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": object_meta(opts, f"{opts.namespace}-{name}", "webhook", namespaced=False),
            "webhooks": [hook],
        },
    ]
