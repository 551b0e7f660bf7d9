"""ProxySnapshot -> xDS resources, as a pure function.

Certificates travel as SDS secrets ("leaf", "roots") referenced from listeners and clusters, so
a leaf rotation changes only the Secret type and Envoy swaps certificates without touching a
listener. Output is deterministic: resources sorted by name, Any payloads packed with
deterministic serialisation, so an unchanged snapshot yields unchanged bytes (stable versions,
no spurious pushes).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from .clusters import build_clusters
from .common import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    digest,
    leaf_secret,
    resource_name,
    roots_secret,
)
from .listeners import build_listeners
from .observability import tracing_clusters
from .snapshot import ProxySnapshot

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "build_resources",
    "resources_digest",
]


def build_resources(snap: ProxySnapshot) -> dict[str, list[Message]]:
    """All resources for one sidecar, keyed by type URL.

    Raises ValueError for a snapshot that cannot be expressed (unknown protocol, bad intention
    permission) rather than emitting config Envoy would reject.
    """
    listeners, routes = build_listeners(snap)
    clusters, assignments = build_clusters(snap)
    secrets: list[Message] = []
    if snap.leaf_cert_pem and snap.leaf_key_pem:
        secrets.append(leaf_secret(snap.leaf_cert_pem, snap.leaf_key_pem))
    if snap.roots_pem:
        secrets.append(roots_secret(snap.roots_pem))
    out: dict[str, list[Message]] = {
        LISTENER: list(listeners),
        CLUSTER: [*clusters, *tracing_clusters(snap)],
        ENDPOINT: list(assignments),
        ROUTE: list(routes),
        SECRET: secrets,
    }
    for items in out.values():
        items.sort(key=resource_name)
    return out


def resources_digest(resources: dict[str, list[Any]]) -> str:
    """Content hash of a resource set, e.g. to decide whether a snapshot really changed."""
    chunks: list[bytes] = []
    for type_url in sorted(resources):
        chunks.append(type_url.encode())
        for r in resources[type_url]:
            chunks.append(r.SerializeToString(deterministic=True))
    return digest(chunks)
