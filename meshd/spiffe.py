"""SPIFFE identities of the mesh (Consul's URI forms).

Lives outside `server` and `agent` because both sides must build the exact same string: the
agent puts it in its CSR and the server refuses to sign any other, so one definition avoids a
drift that would make every signing request fail.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_SCHEME = "spiffe://"


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


def check_service_name(service: str) -> str:
    """A service name that can stand in a SPIFFE ID, or ValueError naming why it cannot."""
    return _segment("service", service)


def trust_domain(cluster_id: str) -> str:
    """Consul derives the trust domain from the cluster ID, so every DC of a cluster shares it."""
    return f"{_segment('cluster id', cluster_id)}.consul"


def spiffe_service_id(trust_domain: str, dc: str, service: str, ns: str = "default") -> str:
    return (
        f"{_SCHEME}{_segment('trust domain', trust_domain)}/ns/{_segment('namespace', ns)}"
        f"/dc/{_segment('datacenter', dc)}/svc/{_segment('service', service)}"
    )


def spiffe_agent_id(trust_domain: str, dc: str, node: str) -> str:
    return (
        f"{_SCHEME}{_segment('trust domain', trust_domain)}/agent/client"
        f"/dc/{_segment('datacenter', dc)}/id/{_segment('node', node)}"
    )


def parse_service_id(uri: str) -> ServiceID:
    """Intentions are matched on the service name, which must come from the verified URI only."""
    if not uri.startswith(_SCHEME):
        raise ValueError(f"not a SPIFFE ID: {uri!r}")
    parts = uri[len(_SCHEME) :].split("/")
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


def is_spiffe_id(uri: str) -> bool:
    """Whether `uri` is any SPIFFE ID (service, agent or trust domain), by its scheme."""
    return uri.startswith(_SCHEME) and len(uri) > len(_SCHEME)


def trust_domain_uri(trust_domain: str) -> str:
    """The URI SAN of a CA certificate: it names the trust domain alone, with no path."""
    return f"{_SCHEME}{_segment('trust domain', trust_domain)}"


def service_id_regex(trust_domain: str, service: str | None = None) -> str:
    """An RE2 pattern for the service IDs of `trust_domain`, in any namespace and datacenter.

    Intentions name services, not datacenters, so a proxy must accept a caller's certificate
    from any DC of the trust domain (as Consul does). `service=None` accepts every service. A
    name that cannot appear in an ID (one with a "/") is escaped, not refused: the CA signs no
    such ID, so it matches no caller, rather than failing the whole proxy's config.
    """
    svc = "[^/]+" if service is None else re.escape(service)
    td = re.escape(_segment("trust domain", trust_domain))
    return f"^{re.escape(_SCHEME)}{td}/ns/[^/]+/dc/[^/]+/svc/{svc}$"
