"""Clusters and endpoints: `local_app` plus one EDS cluster per upstream."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from .common import LOCAL_APP_CLUSTER, ads_source, pack, seconds, socket_address, upstream_tls
from .snapshot import H2_PROTOCOLS, Endpoint, ProxySnapshot, Upstream

_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CONNECT_TIMEOUT_S = 5.0


def h2_options(cluster: cluster_pb2.Cluster) -> None:
    """The typed form; the old `Cluster.http2_protocol_options` is deprecated in v3."""
    opts = hpo.HttpProtocolOptions(
        explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster.typed_extension_protocol_options[_HTTP_OPTIONS].CopyFrom(pack(opts))


def lb_endpoint(address: str, port: int, weight: int) -> ec.LbEndpoint:
    ep = ec.LbEndpoint(
        endpoint=ec.Endpoint(address=socket_address(address, port)),
        health_status=health_check_pb2.HEALTHY,
    )
    ep.load_balancing_weight.value = max(1, int(weight))
    return ep


def local_app_cluster(snap: ProxySnapshot) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=LOCAL_APP_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=LOCAL_APP_CLUSTER,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[lb_endpoint(snap.local_app_address, snap.local_app_port, 1)]
                )
            ],
        ),
    )
    if snap.protocol in H2_PROTOCOLS:
        h2_options(c)
    return c


def upstream_cluster(snap: ProxySnapshot, up: Upstream) -> cluster_pb2.Cluster:
    name = snap.upstream_cluster(up)
    h2 = up.protocol in H2_PROTOCOLS
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        transport_socket=upstream_tls(name, snap.upstream_spiffe(up), ["h2"] if h2 else []),
    )
    if h2:
        h2_options(c)
    return c


def load_assignment(snap: ProxySnapshot, up: Upstream) -> endpoint_pb2.ClusterLoadAssignment:
    return assignment(snap.upstream_cluster(up), up.endpoints)


def assignment(name: str, endpoints: list[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    """Only healthy endpoints, sorted, so an unchanged set gives unchanged bytes."""
    healthy = sorted({(e.address, e.port, max(1, e.weight)) for e in endpoints if e.healthy})
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if healthy:
        cla.endpoints.append(
            ec.LocalityLbEndpoints(lb_endpoints=[lb_endpoint(a, p, w) for a, p, w in healthy])
        )
    return cla


def build_clusters(
    snap: ProxySnapshot,
) -> tuple[list[cluster_pb2.Cluster], list[endpoint_pb2.ClusterLoadAssignment]]:
    # Two upstreams may target one destination on different local ports: one cluster serves
    # both, and a duplicate name would make Envoy reject the whole CDS response.
    from .chain_clusters import chain_clusters

    by_name = {snap.upstream_cluster(u): u for u in reversed(snap.upstreams)}
    ups = [by_name[n] for n in sorted(by_name)]
    clusters = {LOCAL_APP_CLUSTER: local_app_cluster(snap)}
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for u in ups:
        if u.chain is None:
            clusters.setdefault(snap.upstream_cluster(u), upstream_cluster(snap, u))
            assignments.setdefault(snap.upstream_cluster(u), load_assignment(snap, u))
            continue
        # chains of two upstreams may share targets (a common failover service): once each
        found, loads = chain_clusters(snap, u)
        for c in found:
            clusters.setdefault(c.name, c)
        for a in loads:
            assignments.setdefault(a.cluster_name, a)
    return list(clusters.values()), list(assignments.values())
