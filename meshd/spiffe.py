"""SPIFFE identities of the mesh (Consul's URI forms).

Lives outside `server` and `agent` because both sides must build the exact same string: the
agent puts it in its CSR and the server refuses to sign any other, so one definition avoids a
drift that would make every signing request fail.
"""

from __future__ import annotations

from typing import NamedTuple


class ServiceID(NamedTuple):
    trust_domain: str
    namespace: str
    datacenter: str
    service: str


def _segment(kind: str, value: str) -> str:
    """Reject values that would change the shape of the URI (and so the identity it names)."""
    if not value or "/" in value or any(c.isspace() for c in value) or value in (".", ".."):
        raise ValueError(f"invalid {kind} for a SPIFFE ID: {value!r}")
    return value


def trust_domain(cluster_id: str) -> str:
    """Consul derives the trust domain from the cluster ID, so every DC of a cluster shares it."""
    return f"{_segment('cluster id', cluster_id)}.consul"


def spiffe_service_id(trust_domain: str, dc: str, service: str, ns: str = "default") -> str:
    return (
        f"spiffe://{_segment('trust domain', trust_domain)}/ns/{_segment('namespace', ns)}"
        f"/dc/{_segment('datacenter', dc)}/svc/{_segment('service', service)}"
    )


def spiffe_agent_id(trust_domain: str, dc: str, node: str) -> str:
    return (
        f"spiffe://{_segment('trust domain', trust_domain)}/agent/client"
        f"/dc/{_segment('datacenter', dc)}/id/{_segment('node', node)}"
    )


def parse_service_id(uri: str) -> ServiceID:
    """Intentions are matched on the service name, which must come from the verified URI only."""
    prefix = "spiffe://"
    if not uri.startswith(prefix):
        raise ValueError(f"not a SPIFFE ID: {uri!r}")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 7 or parts[1] != "ns" or parts[3] != "dc" or parts[5] != "svc":
        raise ValueError(f"not a SPIFFE service ID: {uri!r}")
    td, _, ns, _, dc, _, svc = parts
    for kind, value in (
        ("trust domain", td),
        ("namespace", ns),
        ("datacenter", dc),
        ("service", svc),
    ):
        _segment(kind, value)
    return ServiceID(td, ns, dc, svc)
