"""A compiled discovery chain -> Envoy resources, compared with the expected resources as JSON."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from meshd.chain import compile_chain
from meshd.config_entries import normalize_entry
from meshd.proxy.common import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshd.proxy.resources import build_resources
from meshd.proxy.snapshot import Endpoint, ProxySnapshot, Upstream

TD = "abc.consul"
HTTP = {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
RESOLVER = {
    "Kind": "service-resolver",
    "Name": "api",
    "DefaultSubset": "v1",
    "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2"},
    },
    "Failover": {"v2": {"ServiceSubset": "v1"}},
    "RequestTimeout": "3s",
    "LoadBalancer": {
        "Policy": "ring_hash",
        "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}],
    },
}
SPLITTER = {
    "Kind": "service-splitter",
    "Name": "api",
    "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"},
        {"Weight": 10, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-split": "v2"}}},
    ],
}
ROUTER = {
    "Kind": "service-router",
    "Name": "api",
    "Routes": [
        {
            "Match": {
                "HTTP": {
                    "PathPrefix": "/admin",
                    "CaseInsensitive": True,
                    "Header": [{"Name": "x-canary", "Exact": "1"}],
                    "QueryParam": [{"Name": "debug", "Present": True}],
                    "Methods": ["GET", "PUT"],
                }
            },
            "Destination": {
                "ServiceSubset": "v2",
                "PrefixRewrite": "/",
                "RequestTimeout": "200ms",
                "NumRetries": 3,
                "RetryOnConnectFailure": True,
                "RetryOnStatusCodes": [503],
                "Fault": {"AbortStatus": 503, "AbortPercent": 50, "Delay": "1s"},
            },
        }
    ],
}
V1 = [Endpoint("10.0.0.1", 21000)]
V2 = [Endpoint("10.0.0.2", 21000)]


def chain(*raw: dict[str, Any]) -> dict[str, Any]:
    table = {}
    for r in raw:
        e = normalize_entry(r)
        table[(e["Kind"], e["Name"])] = e
    return compile_chain("api", lambda k, n: table.get((k, n)), datacenter="dc1", trust_domain=TD)


def resources(compiled: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    up = Upstream(
        "api",
        9191,
        protocol=compiled["Protocol"],
        chain=compiled,
        target_endpoints={"v1.api.default.default.dc1": V1, "v2.api.default.default.dc1": V2},
        config=config or {},
    )
    snap = ProxySnapshot(
        proxy_id="web-sidecar-proxy",
        service="web",
        trust_domain=TD,
        datacenter="dc1",
        public_listener_address="10.0.0.5",
        public_listener_port=21000,
        local_app_port=8080,
        upstreams=[up],
    )
    return build_resources(snap)


def as_json(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def by_name(res: dict[str, Any], type_url: str) -> dict[str, Any]:
    key = "cluster_name" if type_url == ENDPOINT else "name"
    return {getattr(r, key): r for r in res[type_url]}


def test_router_splitter_resolver_become_routes_and_weighted_clusters() -> None:
    res = resources(chain(HTTP, RESOLVER, SPLITTER, ROUTER))
    route = by_name(res, ROUTE)["api.default.dc1.internal.abc.consul"]
    assert isinstance(route, route_pb2.RouteConfiguration)
    canary, default = as_json(route)["virtualHosts"][0]["routes"]
    assert canary["match"] == {
        "prefix": "/admin",
        "caseSensitive": False,
        "headers": [
            {"name": "x-canary", "stringMatch": {"exact": "1"}},
            {"name": ":method", "stringMatch": {"safeRegex": {"regex": "GET|PUT"}}},
        ],
        "queryParameters": [{"name": "debug", "presentMatch": True}],
    }
    assert canary["route"] == {
        "cluster": "failover-target~v2.api.default.dc1.internal.abc.consul",
        "prefixRewrite": "/",
        "timeout": "0.200s",
        "retryPolicy": {
            "retryOn": "connect-failure,retriable-status-codes",
            "numRetries": 3,
            "retriableStatusCodes": [503],
        },
        "hashPolicy": [{"header": {"headerName": "x-user"}}],
    }
    fault = canary["typedPerFilterConfig"]["envoy.filters.http.fault"]
    assert fault["abort"] == {
        "httpStatus": 503,
        "percentage": {"numerator": 500000, "denominator": "MILLION"},
    }
    assert fault["delay"]["fixedDelay"] == "1s"
    assert default["match"] == {"prefix": "/"}
    assert default["route"] == {
        "weightedClusters": {
            "clusters": [
                {"name": "v1.api.default.dc1.internal.abc.consul", "weight": 9000},
                {
                    "name": "failover-target~v2.api.default.dc1.internal.abc.consul",
                    "weight": 1000,
                    "requestHeadersToAdd": [
                        {
                            "header": {"key": "x-split", "value": "v2"},
                            "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    ],
                },
            ]
        },
    }


def test_the_fault_filter_is_only_on_listeners_whose_routes_use_it() -> None:
    def http_filters(res: dict[str, Any]) -> list[str]:
        listener = by_name(res, LISTENER)["api:127.0.0.1:9191"]
        assert isinstance(listener, listener_pb2.Listener)
        manager = hcm.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        return [f.name for f in manager.http_filters]

    assert http_filters(resources(chain(HTTP, RESOLVER, ROUTER))) == [
        "envoy.filters.http.fault",
        "envoy.filters.http.router",
    ]
    assert http_filters(resources(chain(HTTP, RESOLVER, SPLITTER))) == ["envoy.filters.http.router"]


def test_subset_clusters_failover_breakers_and_outlier_detection() -> None:
    config = {
        "Limits": {"MaxConcurrentRequests": 2, "MaxPendingRequests": 1},
        "PassiveHealthCheck": {"Interval": "1s", "MaxFailures": 3, "BaseEjectionTime": "5s"},
    }
    res = resources(chain(HTTP, RESOLVER, SPLITTER), config)
    clusters = by_name(res, CLUSTER)
    v1 = clusters["v1.api.default.dc1.internal.abc.consul"]
    assert isinstance(v1, cluster_pb2.Cluster)
    got = as_json(v1)
    assert got["lbPolicy"] == "RING_HASH"
    assert got["circuitBreakers"] == {"thresholds": [{"maxPendingRequests": 1, "maxRequests": 2}]}
    assert got["outlierDetection"] == {
        "consecutive5xx": 3,
        "interval": "1s",
        "baseEjectionTime": "5s",
    }
    assert got["type"] == "EDS" and got["connectTimeout"] == "5s"
    aggregate = as_json(clusters["failover-target~v2.api.default.dc1.internal.abc.consul"])
    assert aggregate["clusterType"]["name"] == "envoy.clusters.aggregate"
    assert aggregate["clusterType"]["typedConfig"]["clusters"] == [
        "v2.api.default.dc1.internal.abc.consul",
        "v1.api.default.dc1.internal.abc.consul",
    ]
    assert aggregate["lbPolicy"] == "CLUSTER_PROVIDED"
    loads = by_name(res, ENDPOINT)
    addresses = {
        name: [
            e.endpoint.address.socket_address.address
            for group in cla.endpoints
            for e in group.lb_endpoints
        ]
        for name, cla in loads.items()
    }
    assert addresses == {
        "v1.api.default.dc1.internal.abc.consul": ["10.0.0.1"],
        "v2.api.default.dc1.internal.abc.consul": ["10.0.0.2"],
    }


def test_default_chain_keeps_the_plain_upstream_cluster() -> None:
    res = resources(chain())
    assert set(by_name(res, CLUSTER)) == {"local_app", "api.default.dc1.internal.abc.consul"}
    assert ROUTE not in res or not res[ROUTE]  # tcp: no route configuration


def test_proxyless_chain_routes_split_and_time_out_as_grpc_reads_them() -> None:
    from envoy.config.listener.v3 import listener_pb2 as lpb

    from meshd.proxy.proxyless import proxyless_resources

    timeout_router = {
        "Kind": "service-router",
        "Name": "api",
        "Routes": [
            {
                "Match": {"HTTP": {"PathPrefix": "/pkg.Api/"}},
                "Destination": {
                    "ServiceSubset": "v2",
                    "RequestTimeout": "250ms",
                    "Fault": {"AbortStatus": 503, "AbortPercent": 10},
                },
            }
        ],
    }
    compiled = chain(HTTP, RESOLVER, SPLITTER, timeout_router)
    v1, v2 = (f"{s}.api.default.dc1.internal.abc.consul" for s in ("v1", "v2"))
    res = proxyless_resources({"api": [], "web": V1}, {"api": compiled}, {v1: V1, v2: V2})
    listeners = {x.name: x for x in res[LISTENER] if isinstance(x, lpb.Listener)}
    manager = hcm.HttpConnectionManager()
    listeners["api"].api_listener.api_listener.Unpack(manager)
    routes = as_json(manager.route_config)["virtualHosts"][0]["routes"]
    assert routes[0]["route"]["maxStreamDuration"] == {"maxStreamDuration": "0.250s"}
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.fault",  # gRFC A33: gRPC applies the route's fault config
        "envoy.filters.http.router",
    ]
    assert "envoy.filters.http.fault" in routes[0]["typedPerFilterConfig"]
    assert routes[0]["route"]["cluster"] == f"failover-target~{v2}"
    assert [c["weight"] for c in routes[1]["route"]["weightedClusters"]["clusters"]] == [9000, 1000]
    clusters = {as_json(c)["name"] for c in res[CLUSTER]}  # type: ignore[arg-type]
    assert clusters == {"web", v1, v2, f"failover-target~{v2}"}
    endpoints = {c.cluster_name: c for c in res[ENDPOINT]}  # type: ignore[attr-defined]
    assert set(endpoints) == {"web", v1, v2}
