"""Clusters of a compiled discovery chain: one EDS cluster per target, aggregate failover.

Each chain target (a service, or one subset of it) is its own cluster, named by its SNI as
Consul does, with only the endpoints its subset filter selected (the agent filters; this module
only translates). A resolver with failover becomes an Envoy aggregate cluster listing the primary
target then its failover targets: Envoy sends to the first member with healthy hosts, so when
every primary instance turns critical (and drops out of EDS) traffic moves on, and comes back
when they recover. `UpstreamConfig` of the calling service sets the circuit breakers (Limits)
and outlier detection (PassiveHealthCheck) on every cluster of that upstream.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2

from meshd.durations import parse_duration_seconds

from .clusters import CONNECT_TIMEOUT_S, assignment, h2_options
from .common import ads_source, pack, seconds, upstream_tls
from .snapshot import H2_PROTOCOLS, ProxySnapshot, Upstream

AGGREGATE = "envoy.clusters.aggregate"
_LB = {
    "": cluster_pb2.Cluster.ROUND_ROBIN,
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
    "maglev": cluster_pb2.Cluster.MAGLEV,
}


def failover_cluster_name(target_name: str) -> str:
    return f"failover-target~{target_name}"


def resolver_cluster(chain: dict[str, Any], node: dict[str, Any]) -> str:
    """The cluster a route to this resolver node names: its target, or its failover group."""
    target = chain["Targets"][node["Resolver"]["Target"]]
    if node["Resolver"].get("Failover"):
        return failover_cluster_name(target["Name"])
    return str(target["Name"])


def _limits(limits: dict[str, Any]) -> circuit_breaker_pb2.CircuitBreakers | None:
    if not limits:
        return None
    threshold = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for field, proto in (
        ("MaxConnections", "max_connections"),
        ("MaxPendingRequests", "max_pending_requests"),
        ("MaxConcurrentRequests", "max_requests"),
    ):
        if limits.get(field):
            getattr(threshold, proto).value = int(limits[field])
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[threshold])


def _outlier(phc: dict[str, Any]) -> outlier_detection_pb2.OutlierDetection | None:
    """Consul's PassiveHealthCheck: consecutive 5xx ejection; unset fields keep Envoy's
    defaults (10 s interval, 5 failures, 30 s base ejection, 10 % max ejected)."""
    if not phc:
        return None
    od = outlier_detection_pb2.OutlierDetection()
    if phc.get("Interval"):
        od.interval.CopyFrom(seconds(parse_duration_seconds(phc["Interval"])))
    if phc.get("BaseEjectionTime"):
        od.base_ejection_time.CopyFrom(seconds(parse_duration_seconds(phc["BaseEjectionTime"])))
    if phc.get("MaxFailures"):
        od.consecutive_5xx.value = int(phc["MaxFailures"])
    if "EnforcingConsecutive5xx" in phc:
        od.enforcing_consecutive_5xx.value = int(phc["EnforcingConsecutive5xx"])
    if phc.get("MaxEjectionPercent"):
        od.max_ejection_percent.value = int(phc["MaxEjectionPercent"])
    return od


def _load_balancer(cluster: cluster_pb2.Cluster, lb: dict[str, Any]) -> None:
    policy = lb.get("Policy", "")
    cluster.lb_policy = _LB[policy]
    if policy == "least_request" and lb.get("LeastRequestConfig", {}).get("ChoiceCount"):
        cluster.least_request_lb_config.choice_count.value = int(
            lb["LeastRequestConfig"]["ChoiceCount"]
        )
    if policy == "ring_hash" and lb.get("RingHashConfig"):
        ring = lb["RingHashConfig"]
        if ring.get("MinimumRingSize"):
            cluster.ring_hash_lb_config.minimum_ring_size.value = int(ring["MinimumRingSize"])
        if ring.get("MaximumRingSize"):
            cluster.ring_hash_lb_config.maximum_ring_size.value = int(ring["MaximumRingSize"])


def _connect_timeout(target: dict[str, Any], config: dict[str, Any]) -> float:
    """The resolver's ConnectTimeout when it set one, else UpstreamConfig's, else 5 s."""
    if target.get("ConnectTimeout") and target["ConnectTimeout"] != "5s":
        return parse_duration_seconds(target["ConnectTimeout"])
    if config.get("ConnectTimeoutMs"):
        return int(config["ConnectTimeoutMs"]) / 1000
    return CONNECT_TIMEOUT_S


def _target_cluster(
    snap: ProxySnapshot, up: Upstream, target: dict[str, Any], lb: dict[str, Any]
) -> cluster_pb2.Cluster:
    name = target["Name"]
    h2 = (up.chain or {}).get("Protocol") in H2_PROTOCOLS
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=seconds(_connect_timeout(target, up.config)),
        transport_socket=upstream_tls(
            name, snap.spiffe_for(target["Service"], target["Datacenter"]), ["h2"] if h2 else []
        ),
    )
    _load_balancer(c, lb)
    breakers = _limits(up.config.get("Limits") or {})
    if breakers is not None:
        c.circuit_breakers.CopyFrom(breakers)
    outlier = _outlier(up.config.get("PassiveHealthCheck") or {})
    if outlier is not None:
        c.outlier_detection.CopyFrom(outlier)
    if h2:
        h2_options(c)
    return c


def aggregate_cluster(name: str, members: list[str]) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
    )
    c.cluster_type.name = AGGREGATE
    c.cluster_type.typed_config.CopyFrom(pack(aggregate_pb2.ClusterConfig(clusters=members)))
    return c


def failover_groups(chain: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(aggregate cluster name, member clusters in order) per resolver node with failover."""
    out = []
    for node in chain["Nodes"].values():
        failover = node["Resolver"].get("Failover") if node["Type"] == "resolver" else None
        if failover:
            primary = chain["Targets"][node["Resolver"]["Target"]]["Name"]
            members = [primary, *(chain["Targets"][t]["Name"] for t in failover["Targets"])]
            out.append((failover_cluster_name(primary), members))
    return out


def chain_clusters(
    snap: ProxySnapshot, up: Upstream
) -> tuple[list[cluster_pb2.Cluster], list[endpoint_pb2.ClusterLoadAssignment]]:
    """Every cluster (and EDS assignment) the chain of `up` routes to."""
    chain = up.chain or {}
    lb_of = {
        node["Resolver"]["Target"]: node.get("LoadBalancer") or {}
        for node in chain["Nodes"].values()
        if node["Type"] == "resolver"
    }
    clusters = [aggregate_cluster(name, members) for name, members in failover_groups(chain)]
    assignments = []
    for tid, target in chain["Targets"].items():
        clusters.append(_target_cluster(snap, up, target, lb_of.get(tid, {})))
        assignments.append(assignment(target["Name"], up.target_endpoints.get(tid, [])))
    return clusters, assignments
