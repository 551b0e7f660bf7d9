"""The per-proxy snapshot: everything one Envoy needs, with no reference to Raft or the catalog.

The agent fills these from its watches; `proxy.resources.build_resources` turns one into xDS
resources. Keeping the model plain dataclasses lets the translation stay a pure function that
unit tests can drive without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshd.intentions import RBACPlan
from meshd.proxy_observability import AccessLogs, Tracing
from meshd.spiffe import spiffe_service_id

#: Protocols for which Envoy runs an HTTP connection manager (and so L7 intentions apply).
HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc"})
#: Protocols that must be spoken as HTTP/2 towards the app and between sidecars.
H2_PROTOCOLS = frozenset({"http2", "grpc"})
PROTOCOLS = HTTP_PROTOCOLS | {"tcp"}


@dataclass
class Endpoint:
    """One instance of an upstream: the address of its sidecar's public listener."""

    address: str
    port: int
    healthy: bool = True
    weight: int = 1


@dataclass
class Upstream:
    """A local port on which the app reaches `destination_name` through the mesh."""

    destination_name: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"
    protocol: str = "tcp"
    endpoints: list[Endpoint] = field(default_factory=list)
    #: Expected URI SAN of the destination's sidecars; empty means "derive from the snapshot",
    #: which is what callers want unless the destination lives in another trust domain.
    spiffe_id: str = ""
    #: Datacenter of the destination; empty means the proxy's own.
    datacenter: str = ""
    #: The compiled discovery chain (`meshd.chain`); None keeps the plain one-cluster upstream.
    chain: dict[str, Any] | None = None
    #: Endpoints per chain target id, already filtered by the target's subset.
    target_endpoints: dict[str, list[Endpoint]] = field(default_factory=dict)
    #: The calling service's UpstreamConfig for this upstream (Defaults merged with Overrides).
    config: dict[str, Any] = field(default_factory=dict)


def _deny_all() -> RBACPlan:
    """A snapshot built before intentions are known must not open the door."""
    return RBACPlan(mode="ALLOW", rules=[])


@dataclass(kw_only=True)
class ProxySnapshot:
    """All inputs for one sidecar. `version` is bumped by the builder on any change."""

    proxy_id: str
    service: str
    trust_domain: str
    datacenter: str
    public_listener_address: str
    public_listener_port: int
    local_app_address: str = "127.0.0.1"
    local_app_port: int
    protocol: str = "tcp"
    upstreams: list[Upstream] = field(default_factory=list)
    rbac: RBACPlan = field(default_factory=_deny_all)
    leaf_cert_pem: str = ""
    leaf_key_pem: str = ""
    roots_pem: list[str] = field(default_factory=list)
    #: proxy-defaults / the proxy's AccessLogs, and its tracing (proxy/observability.py)
    access_logs: AccessLogs | None = None
    tracing: Tracing | None = None
    listener_tracing_json: str = ""
    bootstrap_tracing: bool = False
    version: int = 0

    def spiffe_for(self, service: str, datacenter: str | None = None) -> str:
        """Consul's SPIFFE id layout; the datacenter defaults to this proxy's."""
        return spiffe_service_id(self.trust_domain, datacenter or self.datacenter, service)

    @property
    def spiffe_id(self) -> str:
        return self.spiffe_for(self.service)

    def upstream_spiffe(self, up: Upstream) -> str:
        return up.spiffe_id or self.spiffe_for(up.destination_name, up.datacenter or None)

    def upstream_cluster(self, up: Upstream) -> str:
        """Consul's cluster naming, also used as the SNI towards the destination's sidecars."""
        dc = up.datacenter or self.datacenter
        return f"{up.destination_name}.default.{dc}.internal.{self.trust_domain}"
