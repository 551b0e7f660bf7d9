"""Resources for proxyless gRPC clients (gRFC A27): `xds:///NAME` resolved straight from meshd.

A gRPC client asks for the listener NAME; it must be an API listener whose HTTP connection
manager carries an inline route to a cluster of type EDS, whose endpoints are the service's
healthy instances. No sidecar is involved, so these endpoints are the instances themselves.
Pure translation; the agent decides which services and endpoints go in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from .chain_clusters import aggregate_cluster, failover_groups
from .chain_routes import FAULT_FILTER, chain_has_faults, chain_routes
from .common import CLUSTER, ENDPOINT, LISTENER, ads_source, pack, socket_address
from .snapshot import Endpoint

ROUTER = "envoy.filters.http.router"


def _listener(name: str) -> listener_pb2.Listener:
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[
                rc.VirtualHost(
                    name=name,
                    domains=["*"],
                    routes=[
                        rc.Route(match=rc.RouteMatch(prefix=""), route=rc.RouteAction(cluster=name))
                    ],
                )
            ],
        ),
        http_filters=[hcm.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager))
    )


def _cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )


def _assignment(name: str, endpoints: list[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    lb = []
    for e in sorted(endpoints, key=lambda e: (e.address, e.port)):
        ep = ec.LbEndpoint(endpoint=ec.Endpoint(address=socket_address(e.address, e.port)))
        ep.load_balancing_weight.value = max(1, e.weight)
        lb.append(ep)
    locality = ec.LocalityLbEndpoints(lb_endpoints=lb, locality=base_pb2.Locality(zone="meshd"))
    locality.load_balancing_weight.value = 1  # gRPC ignores localities without a weight
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=[locality] if lb else [])


def _chain_listener(name: str, chain: dict[str, Any]) -> listener_pb2.Listener:
    """gRFC A28 routing from the compiled chain; a request timeout travels as the route's
    max_stream_duration, which is what gRPC reads (A31), retries as A44 policies, and fault
    injection through the fault filter gRPC implements (A33)."""
    routes = chain_routes(chain)
    for route in routes:
        action = route.route
        if action.HasField("timeout") and action.timeout.ToNanoseconds() > 0:
            action.max_stream_duration.max_stream_duration.CopyFrom(action.timeout)
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        route_config=route_pb2.RouteConfiguration(
            name=name, virtual_hosts=[rc.VirtualHost(name=name, domains=["*"], routes=routes)]
        ),
        http_filters=[hcm.HttpFilter(name=ROUTER, typed_config=pack(router_pb2.Router()))],
    )
    if chain_has_faults(chain):
        fault = hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault()))
        manager.http_filters.insert(0, fault)
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(manager))
    )


def _chain_clusters(chain: dict[str, Any]) -> list[cluster_pb2.Cluster]:
    """One EDS cluster per target (no TLS: proxyless clients talk to instances directly) and
    an aggregate cluster per failover group (gRFC A37)."""
    out = [aggregate_cluster(name, members) for name, members in failover_groups(chain)]
    out.extend(_cluster(t["Name"]) for t in chain["Targets"].values())
    return out


def proxyless_resources(
    services: dict[str, list[Endpoint]],
    chains: Mapping[str, dict[str, Any]] | None = None,
    targets: Mapping[str, list[Endpoint]] | None = None,
) -> dict[str, list[object]]:
    """`chains`: the compiled chains of services that have one beyond the default (routes,
    splits, subsets); `targets`: endpoints per chain target name, subset-filtered."""
    chains, targets = chains or {}, targets or {}
    names = sorted(services)
    listeners: dict[str, object] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for n in names:
        chain = chains.get(n)
        if chain is None:
            listeners[n] = _listener(n)
            clusters[n] = _cluster(n)
            assignments[n] = _assignment(n, services[n])
            continue
        listeners[n] = _chain_listener(n, chain)
        for c in _chain_clusters(chain):
            clusters.setdefault(c.name, c)
        for t in chain["Targets"].values():
            assignments.setdefault(t["Name"], _assignment(t["Name"], targets.get(t["Name"], [])))
    return {
        LISTENER: [listeners[n] for n in sorted(listeners)],
        CLUSTER: [clusters[n] for n in sorted(clusters)],
        ENDPOINT: [assignments[n] for n in sorted(assignments)],
    }
