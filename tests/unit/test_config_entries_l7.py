"""service-resolver / service-splitter / service-router and UpstreamConfig: Consul's schema."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.config_entries import ConfigEntryError, normalize_entry

SUBSETS = {
    "v1": {"Filter": "Service.Meta.version == v1"},
    "v2": {"Filter": "Service.Meta.version == v2"},
}


def resolver(**fields: Any) -> dict[str, Any]:
    return {"Kind": "service-resolver", "Name": "api", **fields}


def test_resolver_normalises_keys_and_durations() -> None:
    e = normalize_entry(
        {
            "kind": "service-resolver",
            "name": "api",
            "default_subset": "v1",
            "subsets": {"v1": {"filter": "Service.Meta.version == v1", "only_passing": True}},
            "connect_timeout": "15s",
            "request_timeout": "0.2s",
            "failover": {"*": {"service": "backup"}},
            "load_balancer": {
                "policy": "ring_hash",
                "hash_policies": [
                    {"field": "header", "field_value": "x-user"},
                    {"source_ip": True},
                ],
            },
        }
    )
    assert e["ConnectTimeout"] == "15s" and e["RequestTimeout"] == "200ms"
    assert e["Subsets"] == {"v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": True}}
    assert e["Failover"] == {"*": {"Service": "backup"}}
    assert e["LoadBalancer"]["HashPolicies"] == [
        {"Field": "header", "FieldValue": "x-user"},
        {"SourceIP": True},
    ]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"DefaultSubset": "v3", "Subsets": SUBSETS}, "DefaultSubset 'v3' is not a valid subset"),
        ({"Subsets": {"V_1": {"Filter": ""}}}, "must be a valid DNS label"),
        ({"Subsets": {"v1": {"Filter": "Service.Meta.version =="}}}, "bad filter expression"),
        ({"Redirect": {"Service": "x"}, "Subsets": SUBSETS}, "Redirect and Subsets"),
        ({"Redirect": {"ServiceSubset": "v1"}}, "without Redirect.Service"),
        ({"Failover": {"v9": {"Service": "b"}}, "Subsets": SUBSETS}, "not a valid subset"),
        ({"Failover": {"*": {}}}, "one of Service, ServiceSubset"),
        ({"ConnectTimeout": "-1s"}, "Bad ConnectTimeout"),
        ({"LoadBalancer": {"Policy": "fastest"}}, "Bad LoadBalancer policy"),
        (
            {"LoadBalancer": {"Policy": "round_robin", "HashPolicies": [{"SourceIP": True}]}},
            "HashPolicies specified for non-hash-based Policy",
        ),
        (
            {"LoadBalancer": {"Policy": "maglev", "HashPolicies": [{"Field": "header"}]}},
            "without a FieldValue",
        ),
        ({"Subsetz": {}}, "Subsetz: unknown field"),
        ({"Redirect": {"Service": "x", "Datacenter": "dc2"}}, "other datacenters"),
        ({"Failover": {"*": {"Targets": [{"Peer": "p"}]}}}, r"Targets\[0\]\.Peer: not supported"),
        ({"Failover": {"*": {"Datacenters": ["dc2"]}}}, "not supported by meshd"),
        ({"Failover": {"*": {"SamenessGroup": "g"}}}, "SamenessGroup: not supported"),
        ({"Redirect": {"Service": "x", "Peer": "p"}}, "Redirect.Peer: not supported"),
    ],
)
def test_bad_resolvers_are_refused_with_the_reason(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigEntryError, match=error):
        normalize_entry(resolver(**fields))


def test_splitter_weights_must_sum_to_100() -> None:
    ok = normalize_entry(
        {
            "Kind": "service-splitter",
            "Name": "api",
            "Splits": [
                {"Weight": 33.33, "ServiceSubset": "v1"},
                {"Weight": 33.33, "ServiceSubset": "v2"},
                {"Weight": 33.34, "Service": "other", "RequestHeaders": {"Set": {"x-v": "o"}}},
            ],
        }
    )
    assert [s["Weight"] for s in ok["Splits"]] == [33.33, 33.33, 33.34]
    assert ok["Splits"][2]["RequestHeaders"] == {"Set": {"x-v": "o"}}
    with pytest.raises(ConfigEntryError, match=r"must be 100, not 95\.00"):
        normalize_entry(
            {
                "Kind": "service-splitter",
                "Name": "api",
                "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 5}],
            }
        )
    with pytest.raises(ConfigEntryError, match="no splits configured"):
        normalize_entry({"Kind": "service-splitter", "Name": "api", "Splits": []})
    with pytest.raises(ConfigEntryError, match="occurs more than once"):
        normalize_entry(
            {
                "Kind": "service-splitter",
                "Name": "api",
                "Splits": [
                    {"Weight": 50, "ServiceSubset": "v1"},
                    {"Weight": 50, "ServiceSubset": "v1"},
                ],
            }
        )


def router(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-router", "Name": "api", "Routes": list(routes)}


def test_router_keeps_matches_and_destination_policy() -> None:
    e = normalize_entry(
        router(
            {
                "Match": {
                    "HTTP": {
                        "PathPrefix": "/admin",
                        "Header": [{"Name": "x-canary", "Exact": "1"}],
                        "QueryParam": [{"Name": "debug", "Present": True}],
                        "Methods": ["get"],
                    }
                },
                "Destination": {
                    "ServiceSubset": "v2",
                    "PrefixRewrite": "/",
                    "RequestTimeout": "2s",
                    "NumRetries": 3,
                    "RetryOnConnectFailure": True,
                    "RetryOn": ["reset"],
                    "RetryOnStatusCodes": [503],
                    "Fault": {"AbortStatus": 503, "AbortPercent": 50},
                },
            }
        )
    )
    route = e["Routes"][0]
    assert route["Match"]["HTTP"]["Methods"] == ["GET"]
    assert route["Destination"]["RequestTimeout"] == "2s"
    assert route["Destination"]["Fault"] == {"AbortStatus": 503, "AbortPercent": 50.0}


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ({"Match": {"HTTP": {"PathPrefix": "admin"}}}, "doesn't start with '/'"),
        ({"Match": {"HTTP": {"PathExact": "/a", "PathPrefix": "/b"}}}, "at most one of"),
        ({"Destination": {"PrefixRewrite": "/x"}}, "cannot make use of PrefixRewrite"),
        (
            {"Match": {"HTTP": {"Header": [{"Name": "a", "Exact": "1", "Prefix": "x"}]}}},
            "only contain one",
        ),
        (
            {"Match": {"HTTP": {"QueryParam": [{"Name": "a", "Present": True, "Exact": "1"}]}}},
            "only contain one",
        ),
        ({"Match": {"HTTP": {"Methods": ["FETCH"]}}}, "invalid method"),
        ({"Destination": {"RetryOn": ["sometimes"]}}, "invalid retry condition"),
        ({"Destination": {"RetryOnStatusCodes": [42]}}, "HTTP status codes"),
        ({"Destination": {"NumRetries": -1}}, "non-negative integer"),
        ({"Destination": {"Fault": {"AbortStatus": 503, "AbortPercent": 150}}}, "percentage"),
        ({"Match": {"HTTP": {"PathRegex": "(?=x)"}}}, "look-around"),
        ({"Match": {"HTTP": {"PathRegex": "/a", "CaseInsensitive": True}}}, "CaseInsensitive"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(route: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigEntryError, match=error):
        normalize_entry(router(route))


def test_upstream_config_limits_and_passive_health_check() -> None:
    e = normalize_entry(
        {
            "Kind": "service-defaults",
            "Name": "web",
            "UpstreamConfig": {
                "Defaults": {"Limits": {"MaxConcurrentRequests": 2, "MaxPendingRequests": 1}},
                "Overrides": [
                    {
                        "Name": "api",
                        "PassiveHealthCheck": {
                            "Interval": "1s",
                            "MaxFailures": 3,
                            "BaseEjectionTime": "5s",
                        },
                    }
                ],
            },
        }
    )
    assert e["UpstreamConfig"]["Defaults"]["Limits"] == {
        "MaxConcurrentRequests": 2,
        "MaxPendingRequests": 1,
    }
    assert e["UpstreamConfig"]["Overrides"][0]["PassiveHealthCheck"]["BaseEjectionTime"] == "5s"
    for bad, error in (
        ({"Overrides": [{"Limits": {}}]}, "Name is required"),
        ({"Defaults": {"Limits": {"MaxConnections": -1}}}, "non-negative integer"),
        ({"Defaults": {"PassiveHealthCheck": {"MaxEjectionPercent": 101}}}, "<= 100"),
        ({"Defaults": {"Limitz": {}}}, "Limitz: unknown field"),
    ):
        with pytest.raises(ConfigEntryError, match=error):
            normalize_entry({"Kind": "service-defaults", "Name": "web", "UpstreamConfig": bad})
