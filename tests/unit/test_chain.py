"""The discovery-chain compiler (Consul's shape) and the servers' write-time chain check."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.chain import ChainError, compile_chain
from meshd.config_entries import normalize_entry
from meshd.server.authority import Origin, admit
from meshd.server.store import CommandError, Store
from meshd.structs import ConfigEntryOp

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
}
SPLITTER = {
    "Kind": "service-splitter",
    "Name": "api",
    "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}],
}
ROUTER = {
    "Kind": "service-router",
    "Name": "api",
    "Routes": [
        {
            "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
            "Destination": {"ServiceSubset": "v2"},
        }
    ],
}


def entries(*raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for r in raw:
        e = normalize_entry(r)
        out[(e["Kind"], e["Name"])] = e
    return out


def compiled(*raw: dict[str, Any], service: str = "api") -> dict[str, Any]:
    table = entries(*raw)
    return compile_chain(
        service, lambda k, n: table.get((k, n)), datacenter="dc1", trust_domain="td.consul"
    )


def test_default_chain_is_one_resolver_of_the_service() -> None:
    chain = compiled()
    assert chain["StartNode"] == "resolver:api.default.default.dc1"
    assert chain["Protocol"] == "tcp" and chain["Default"] is True
    target = chain["Targets"]["api.default.default.dc1"]
    assert target["SNI"] == "api.default.dc1.internal.td.consul"
    assert chain["Nodes"][chain["StartNode"]]["Resolver"] == {
        "Default": True,
        "ConnectTimeout": "5s",
        "Target": "api.default.default.dc1",
    }


def test_router_splitter_resolver_chain_in_consuls_shape() -> None:
    chain = compiled(HTTP, RESOLVER, SPLITTER, ROUTER)
    assert chain["StartNode"] == "router:api.default.default"
    router = chain["Nodes"]["router:api.default.default"]
    assert [r["NextNode"] for r in router["Routes"]] == [
        "resolver:v2.api.default.default.dc1",
        "splitter:api.default.default",  # the catch-all route Consul appends
    ]
    assert router["Routes"][-1]["Definition"]["Match"] == {"HTTP": {"PathPrefix": "/"}}
    splitter = chain["Nodes"]["splitter:api.default.default"]
    assert splitter["Splits"] == [
        {"Weight": 90.0, "NextNode": "resolver:v1.api.default.default.dc1"},
        {"Weight": 10.0, "NextNode": "resolver:v2.api.default.default.dc1"},
    ]
    v2 = chain["Nodes"]["resolver:v2.api.default.default.dc1"]["Resolver"]
    assert v2["Failover"] == {"Targets": ["v1.api.default.default.dc1"]}
    assert chain["Targets"]["v2.api.default.default.dc1"]["Subset"] == {
        "Filter": "Service.Meta.version == v2"
    }


def test_nested_splitters_are_flattened_with_scaled_weights() -> None:
    other = {**HTTP, "Name": "other"}
    outer = {
        "Kind": "service-splitter",
        "Name": "api",
        "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "other"}],
    }
    inner = {
        "Kind": "service-splitter",
        "Name": "other",
        "Splits": [{"Weight": 20, "Service": "a"}, {"Weight": 80, "Service": "b"}],
    }
    a, b = {**HTTP, "Name": "a"}, {**HTTP, "Name": "b"}
    chain = compiled(HTTP, other, a, b, outer, inner)
    splits = chain["Nodes"]["splitter:api.default.default"]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [
        (50.0, "resolver:api.default.default.dc1"),
        (10.0, "resolver:a.default.default.dc1"),
        (40.0, "resolver:b.default.default.dc1"),
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ((SPLITTER,), "uses a protocol 'tcp' that does not permit advanced routing"),
        ((HTTP, SPLITTER), "service 'api' does not have a subset named 'v1'"),
        (
            (
                HTTP,
                {"Kind": "service-resolver", "Name": "api", "Redirect": {"Service": "b"}},
                {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "api"}},
                {**HTTP, "Name": "b"},
            ),
            "detected circular resolver redirect: api -> b -> api",
        ),
        (
            (
                HTTP,
                {
                    "Kind": "service-splitter",
                    "Name": "api",
                    "Splits": [{"Weight": 100, "Service": "web"}],
                },
            ),
            "inconsistent protocols; service 'web' has 'tcp'",
        ),
    ],
)
def test_invalid_chains_do_not_compile(raw: tuple[dict[str, Any], ...], error: str) -> None:
    with pytest.raises(ChainError, match=error):
        compiled(*raw)


def write(store: Store, raw: dict[str, Any], index: int) -> None:
    e = normalize_entry(raw)
    cmd = admit(
        ConfigEntryOp(Op="set", Kind=e["Kind"], Name=e["Name"], Entry=e), Origin.AGENT, store
    )
    store.apply(cmd, index)


def test_server_refuses_an_entry_that_breaks_a_chain_and_changes_nothing() -> None:
    store = Store()
    write(store, HTTP, 1)
    write(store, RESOLVER, 2)
    write(store, SPLITTER, 3)
    before = store.dump()
    # a resolver without subset v2 would strand the splitter's 10%
    narrowed = {**RESOLVER, "Subsets": {"v1": RESOLVER["Subsets"]["v1"]}, "Failover": {}}
    with pytest.raises(CommandError, match="does not have a subset named 'v2'"):
        write(store, narrowed, 4)
    # the protocol cannot drop to tcp under a splitter
    with pytest.raises(CommandError, match="does not permit advanced routing"):
        write(store, {**HTTP, "Protocol": "tcp"}, 4)
    # deleting the resolver is refused for the same reason
    with pytest.raises(CommandError, match="does not have a subset"):
        admit(ConfigEntryOp(Op="delete", Kind="service-resolver", Name="api"), Origin.AGENT, store)
    # weights not summing to 100 never get as far as the chain check
    with pytest.raises(CommandError, match="must be 100"):
        bad = {
            "Kind": "service-splitter",
            "Name": "api",
            "Splits": [{"Weight": 50, "ServiceSubset": "v1"}],
        }
        admit(
            ConfigEntryOp(Op="set", Kind="service-splitter", Name="api", Entry=bad),
            Origin.AGENT,
            store,
        )
    assert store.dump() == before


def test_overridden_tcp_protocol_drops_routers_and_splitters() -> None:
    table = entries(HTTP, RESOLVER, SPLITTER, ROUTER)
    chain = compile_chain(
        "api",
        lambda k, n: table.get((k, n)),
        datacenter="dc1",
        overrides={"Protocol": "tcp", "ConnectTimeout": "7s"},
    )
    assert chain["Protocol"] == "tcp"
    assert chain["StartNode"] == "resolver:v1.api.default.default.dc1"
    assert {n["Type"] for n in chain["Nodes"].values()} == {"resolver"}
    assert chain["Targets"]["v1.api.default.default.dc1"]["ConnectTimeout"] == "7s"
    l7 = compile_chain(
        "api", lambda k, n: table.get((k, n)), datacenter="dc1", overrides={"Protocol": "grpc"}
    )
    assert l7["Protocol"] == "grpc" and l7["StartNode"] == "router:api.default.default"
