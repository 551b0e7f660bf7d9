"""Intentions and config entries as pure logic: validation, precedence, checks, RBAC plans.

The RBAC tests are the important ones: Envoy evaluates the plan, `/v1/connect/intentions/check`
evaluates `check()`, and a mesh where the two disagree lets through (or drops) traffic that
the operator's own tooling says it shouldn't. So they are compared exhaustively.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from meshd.config_entries import ConfigEntryError, normalize_entry
from meshd.intentions import (
    Intention,
    RBACPlan,
    RBACRule,
    check,
    covering_rules,
    evaluate_plan,
    flatten,
    intention_id,
    match,
    precedence,
    rbac_for_destination,
)

GET_API = {"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["GET"]}}


def l4(name: str, action: str) -> dict[str, Any]:
    return {"Name": name, "Action": action}


def l7(name: str, *perms: dict[str, Any]) -> dict[str, Any]:
    return {"Name": name, "Permissions": list(perms) or [GET_API]}


def entry(dest: str, *sources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return normalize_entry(
        {"Kind": "service-intentions", "Name": dest, "Sources": list(sources), **extra}
    )


def pairs(ixns: list[Intention]) -> list[tuple[str, str]]:
    return [(i.SourceName, i.DestinationName) for i in ixns]


# --- precedence ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "expected"),
    [("web", "api", 9), ("*", "api", 8), ("web", "*", 6), ("*", "*", 5)],
)
def test_precedence_table(source: str, destination: str, expected: int) -> None:
    assert precedence(source, destination) == expected


def test_normalize_computes_precedence_ignores_input_and_orders_sources() -> None:
    e = entry("api", {"Name": "*", "Action": "deny", "Precedence": 99}, l4("web", "allow"))
    assert [(s["Name"], s["Precedence"]) for s in e["Sources"]] == [("web", 9), ("*", 8)]


# --- check -----------------------------------------------------------------------------------


def test_exact_source_beats_wildcard_source() -> None:
    ixns = flatten([entry("api", l4("web", "deny"), l4("*", "allow"))])
    assert check(ixns, "web", "api", default_allow=True).allowed is False
    other = check(ixns, "other", "api", default_allow=False)
    assert other.allowed is True and other.intention is not None
    assert other.intention.SourceName == "*"


def test_exact_destination_outranks_exact_source() -> None:
    """Consul: `* -> api` (8) beats `web -> *` (6), even for web."""
    ixns = flatten([entry("api", l4("*", "deny")), entry("*", l4("web", "allow"))])
    assert check(ixns, "web", "api", default_allow=True).allowed is False
    assert check(ixns, "web", "db", default_allow=False).allowed is True


def test_deny_wins_a_tie() -> None:
    for order in ((0, 1), (1, 0)):
        entries = [entry("api", l4("web", "allow")), entry("api", l4("web", "deny"))]
        ixns = flatten([entries[i] for i in order])
        assert [i.Action for i in ixns] == ["deny", "allow"]
        d = check(ixns, "web", "api", default_allow=True)
        assert d.allowed is False and "DENY" in d.reason


@pytest.mark.parametrize("default_allow", [True, False])
def test_check_without_match_uses_default(default_allow: bool) -> None:
    ixns = flatten([entry("db", l4("web", "allow"))])
    d = check(ixns, "api", "web", default_allow)
    assert (d.allowed, d.intention, d.has_permissions) == (default_allow, None, False)
    assert ("allow" if default_allow else "deny") in d.reason


def test_check_l7_intention_is_deny_at_l4() -> None:
    ixns = flatten([entry("api", l7("web"), l4("*", "allow"))])
    d = check(ixns, "web", "api", default_allow=True)
    assert d.allowed is False and d.has_permissions is True
    assert d.intention is not None and d.intention.Permissions
    assert check(ixns, "web", "api", True, allow_permissions=True).allowed is True
    assert check(ixns, "db", "api", default_allow=False).allowed is True


# --- match -----------------------------------------------------------------------------------


@pytest.fixture
def mixed() -> list[Intention]:
    return flatten(
        [
            entry("*", l4("*", "deny"), l4("web", "allow")),
            entry("db", l4("web", "deny"), l4("api", "allow")),
            entry("api", l4("*", "deny"), l4("web", "allow")),
        ]
    )


def test_match_by_destination_in_precedence_order(mixed: list[Intention]) -> None:
    got = match(mixed, by="destination", name="api")
    assert pairs(got) == [("web", "api"), ("*", "api"), ("web", "*"), ("*", "*")]
    assert [i.Precedence for i in got] == [9, 8, 6, 5]


def test_match_by_source_in_precedence_order(mixed: list[Intention]) -> None:
    got = match(mixed, by="source", name="web")
    assert pairs(got) == [("web", "api"), ("web", "db"), ("*", "api"), ("web", "*"), ("*", "*")]
    assert pairs(match(mixed, by="source", name="db")) == [("*", "api"), ("*", "*")]


def test_match_rejects_unknown_side(mixed: list[Intention]) -> None:
    with pytest.raises(ValueError):
        match(mixed, by="both", name="web")  # type: ignore[arg-type]


# --- flatten / legacy view -------------------------------------------------------------------


def test_flatten_several_entries() -> None:
    api = {
        **entry("api", l4("web", "allow"), l7("admin"), Meta={"team": "a"}),
        "CreateIndex": 7,
        "ModifyIndex": 9,
    }
    db = {**entry("db", l4("*", "deny")), "CreateIndex": 3, "ModifyIndex": 3}
    defaults = normalize_entry({"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    ixns = flatten([db, defaults, api])
    assert pairs(ixns) == [("admin", "api"), ("web", "api"), ("*", "db")]
    assert [i.ID for i in ixns] == [intention_id(s, d) for s, d in pairs(ixns)]
    assert ixns == flatten([api, db])  # deterministic, order-independent
    admin, web, star = ixns
    assert (web.Meta, web.CreateIndex, web.ModifyIndex) == ({"team": "a"}, 7, 9)
    assert star.Action == "deny" and star.Precedence == 8
    assert admin.Action == "" and admin.Permissions[0]["HTTP"]["PathPrefix"] == "/api"

    l4_api, l7_api = web.to_api(), admin.to_api()
    assert l4_api == {
        "ID": web.ID,
        "Description": "",
        "SourceNS": "default",
        "SourceName": "web",
        "DestinationNS": "default",
        "DestinationName": "api",
        "SourceType": "consul",
        "Action": "allow",
        "Precedence": 9,
        "Meta": {"team": "a"},
        "CreateIndex": 7,
        "ModifyIndex": 9,
    }
    assert "Action" not in l7_api and l7_api["Permissions"] == [GET_API]


def test_flatten_legacy_intention_keeps_id_and_legacy_meta() -> None:
    raw = {
        "Kind": "service-intentions",
        "Name": "api",
        "Sources": [
            {
                "name": "web",
                "action": "allow",
                "legacy_id": "abc",
                "legacy_meta": {"k": "v"},
                "description": "from the old API",
            }
        ],
    }
    (ixn,) = flatten([normalize_entry(raw, legacy=True)])
    assert (ixn.ID, ixn.Meta, ixn.Description) == ("abc", {"k": "v"}, "from the old API")
    plain = normalize_entry(
        {**raw, "Sources": [{"Name": "web", "Action": "allow", "LegacyID": "abc"}]}
    )
    assert "LegacyID" not in plain["Sources"][0]  # ordinary writes drop legacy fields


# --- config entry validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("perm", "message"),
    [
        (
            {"Action": "allow", "HTTP": {"PathExact": "/a", "PathPrefix": "/b"}},
            "Sources[0].Permissions[0].HTTP should only contain at most one of PathExact",
        ),
        (
            {"Action": "allow", "HTTP": {"PathRegex": "/v[0-9+"}},
            "Sources[0].Permissions[0].HTTP.PathRegex is not a valid regular expression",
        ),
        ({"Action": "allow", "HTTP": {"PathRegex": "/(?!admin)"}}, "look-around"),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Regex": "a("}]}},
            "HTTP.Header[0].Regex is not a valid regular expression",
        ),
        ({"Action": "allow", "HTTP": {"Methods": "GET"}}, "HTTP.Methods must be a list of strings"),
        (
            {"Action": "allow", "HTTP": {"Methods": ["GET", 1]}},
            "HTTP.Methods must be a list of strings",
        ),
        ({"Action": "allow", "HTTP": {"Methods": ["FETCH"]}}, "invalid method 'FETCH'"),
        ({"Action": "allow", "HTTP": {"Methods": ["GET", "get"]}}, "'GET' more than once"),
        ({"Action": "allow", "HTTP": {"PathExact": "a"}}, "PathExact doesn't start with '/'"),
        (
            {"Action": "maybe", "HTTP": {"PathExact": "/a"}},
            "Sources[0].Permissions[0].Action must be set to 'allow' or 'deny'",
        ),
        ({"Action": "allow"}, "Sources[0].Permissions[0].HTTP is required"),
        ({"Action": "allow", "HTTP": {}}, "Sources[0].Permissions[0].HTTP should not be empty"),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Exact": "1", "Present": True}]}},
            "Header[0] should only contain one of Present",
        ),
        (
            {"Action": "allow", "HTTP": {"Header": [{"Name": "x"}]}},
            "Header[0] should only contain one of Present",
        ),
        ({"Action": "allow", "HTTP": {"Header": [{"Exact": "1"}]}}, "missing required Name"),
        ({"Action": "allow", "HTTP": {"PathExact": "/a", "Host": "x"}}, "HTTP.Host: unknown"),
    ],
)
def test_l7_permission_validation(perm: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigEntryError, match=message.replace("(", r"\(").replace("[", r"\[")):
        entry("api", l7("web", perm))


@pytest.mark.parametrize(
    ("source", "dest", "message"),
    [
        (
            {"Name": "web", "Action": "allow", "Permissions": [GET_API]},
            "api",
            "Sources[0].Action must be omitted if Permissions are specified",
        ),
        ({"Name": "web"}, "api", "Sources[0].Action must be set to 'allow' or 'deny'"),
        ({"Name": "web", "Action": "Allow"}, "api", "Action must be set to 'allow' or 'deny'"),
        ({"Action": "allow"}, "api", "Sources[0].Name is required"),
        ({"Name": "we*", "Action": "allow"}, "api", "Sources[0].Name: wildcard character"),
        (l7("web"), "*", "Permissions cannot be specified on intentions with wildcarded"),
        ({"Name": "web", "Action": "allow", "Type": "external"}, "api", "Type must be set"),
        ({"Name": "web", "Action": "allow", "Namespace": "team"}, "api", "Sources[0].Namespace"),
        ({"Name": "web", "Action": "allow", "Peer": "dc2"}, "api", "Peer: not supported"),
        (
            {"Name": "web", "Action": "allow", "LegacyMeta": {"a": "b"}},
            "api",
            "LegacyMeta must be omitted",
        ),
        ({"Name": "web", "Action": "allow", "Colour": "red"}, "api", "Sources[0].Colour"),
        ({"Name": "web", "Action": "allow", "Description": "x" * 513}, "api", "Description"),
    ],
)
def test_source_validation(source: dict[str, Any], dest: str, message: str) -> None:
    with pytest.raises(ConfigEntryError, match=message.replace("[", r"\[")):
        entry(dest, source)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [l4("web", "allow"), l4("web", "deny")],
            },
            "Sources[1] defines 'web' more than once",
        ),
        ({"Kind": "service-intentions", "Name": "api", "Sources": []}, "At least one source"),
        (
            {"Kind": "service-intentions", "Name": "a*", "Sources": [l4("web", "allow")]},
            "Name: wildcard",
        ),
        (
            {
                "Kind": "service-intentions",
                "Name": "api",
                "JWT": {"Providers": [{"Name": "x"}]},
                "Sources": [l4("web", "allow")],
            },
            "JWT: not supported",
        ),
        ({"Name": "api"}, "Kind is required"),
        ({"Kind": "ingress-gateway", "Name": "api"}, "unsupported config entry kind"),
        ({"Kind": "service-defaults"}, "Name is required"),
        ({"Kind": "service-defaults", "Name": "api", "Protocol": "udp"}, "Protocol: invalid"),
        ({"Kind": "service-defaults", "Name": "api", "Bogus": 1}, "Bogus: unknown field"),
        (
            {"Kind": "service-defaults", "Name": "api", "Protocol": "http", "protocol": "tcp"},
            "Protocol: given more than once",
        ),
        (
            {"Kind": "service-defaults", "Name": "api", "MeshGateway": {"Mode": "far"}},
            "MeshGateway.Mode",
        ),
        ({"Kind": "service-defaults", "Name": "api", "Meta": {"a": 1}}, "Meta must be a map"),
        (
            {"Kind": "service-defaults", "Name": "api", "MaxInboundConnections": -1},
            "MaxInboundConnections must be a non-negative integer",
        ),
        ({"Kind": "proxy-defaults", "Name": "web"}, "only 'global' is supported"),
        ({"Kind": "proxy-defaults", "Config": {"protocol": "smtp"}}, "Config.protocol"),
        ({"Kind": "proxy-defaults", "Protocol": "http"}, "Protocol: unknown field"),
    ],
)
def test_entry_validation(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigEntryError, match=message.replace("[", r"\[")):
        normalize_entry(raw)


def test_legacy_write_requires_legacy_id() -> None:
    raw = {"Kind": "service-intentions", "Name": "api", "Sources": [l4("web", "allow")]}
    with pytest.raises(ConfigEntryError, match=r"Sources\[0\]\.LegacyID is required"):
        normalize_entry(raw, legacy=True)


def test_snake_case_is_folded_but_user_maps_are_not() -> None:
    got = normalize_entry(
        {
            "kind": "service-defaults",
            "name": "api",
            "mesh_gateway": {"mode": "local"},
            "external_sni": "api.example",
            "meta": {"owner_team": "x"},
            "transparent_proxy": {"dialed_directly": True},
        }
    )
    assert got == {
        "Kind": "service-defaults",
        "Name": "api",
        "Protocol": "tcp",
        "MeshGateway": {"Mode": "local"},
        "ExternalSNI": "api.example",
        "Meta": {"owner_team": "x"},
        "TransparentProxy": {"DialedDirectly": True},
    }
    proxy = normalize_entry(
        {"Kind": "proxy-defaults", "Config": {"protocol": "http", "local_connect_timeout_ms": 5}}
    )
    assert proxy["Name"] == "global" and proxy["Config"] == {
        "protocol": "http",
        "local_connect_timeout_ms": 5,
    }
    ixn = normalize_entry(
        {
            "Kind": "service-intentions",
            "Name": "api",
            "CreateIndex": 4,
            "Sources": [
                {
                    "name": "web",
                    "permissions": [
                        {
                            "action": "deny",
                            "http": {
                                "path_prefix": "/admin",
                                "methods": ["post"],
                                "header": [{"name": "x-a", "present": True, "invert": True}],
                            },
                        }
                    ],
                }
            ],
        }
    )
    assert ixn == {
        "Kind": "service-intentions",
        "Name": "api",
        "Meta": {},
        "Sources": [
            {
                "Name": "web",
                "Precedence": 9,
                "Type": "consul",
                "Permissions": [
                    {
                        "Action": "deny",
                        "HTTP": {
                            "PathPrefix": "/admin",
                            "Methods": ["POST"],
                            "Header": [{"Name": "x-a", "Present": True, "Invert": True}],
                        },
                    }
                ],
            }
        ],
    }


# --- RBAC plan -------------------------------------------------------------------------------


def test_rbac_default_allow_wildcard_deny_exact_allow() -> None:
    ixns = flatten([entry("api", l4("*", "deny"), l4("web", "allow"))])
    plan = rbac_for_destination(ixns, "api", default_allow=True)
    assert plan == RBACPlan("DENY", [RBACRule(["*"], ["web"], None)])


def test_rbac_default_deny_drops_redundant_denies() -> None:
    ixns = flatten([entry("api", l4("*", "deny"), l4("web", "allow"))])
    assert rbac_for_destination(ixns, "api", False) == RBACPlan("ALLOW", [RBACRule(["web"])])


def test_rbac_l7_rule_carries_permissions_or_becomes_deny_for_tcp() -> None:
    ixns = flatten([entry("api", l7("web"), l4("*", "allow"))])
    plan = rbac_for_destination(ixns, "api", default_allow=False)
    assert plan == RBACPlan(
        "ALLOW", [RBACRule(["web"], [], [GET_API]), RBACRule(["*"], ["web"], None)]
    )
    tcp = rbac_for_destination(ixns, "api", default_allow=False, http=False)
    assert tcp == RBACPlan("ALLOW", [RBACRule(["*"], ["web"], None)])


def test_rbac_wildcard_destination_rule_shadowed_by_exact_destination() -> None:
    ixns = flatten([entry("api", l4("*", "deny")), entry("*", l4("web", "allow"))])
    plan = rbac_for_destination(ixns, "api", default_allow=False)
    assert plan == RBACPlan("ALLOW", [])
    assert check(ixns, "web", "api", default_allow=False).allowed is False


SOURCES = ("web", "api", "db", "other")
CHOICES_EXACT_DST = (None, "allow", "deny", "l7")
CHOICES_WILD_DST = (None, "allow", "deny")  # Consul refuses L7 on wildcard destinations


def build(slots: dict[tuple[str, str], str | None]) -> list[Intention]:
    by_dest: dict[str, list[dict[str, Any]]] = {}
    for (src, dst), choice in slots.items():
        if choice is not None:
            by_dest.setdefault(dst, []).append(l7(src) if choice == "l7" else l4(src, choice))
    return flatten([entry(dst, *srcs) for dst, srcs in by_dest.items()])


def assert_plan_equals_check(ixns: list[Intention], destination: str) -> None:
    for default_allow, http in itertools.product((True, False), repeat=2):
        plan = rbac_for_destination(ixns, destination, default_allow, http=http)
        for source in SOURCES:
            expected = check(ixns, source, destination, default_allow).allowed
            assert evaluate_plan(plan, source) is expected, (ixns, plan, source, default_allow)
            # Envoy ORs policies: the rules must be disjoint for first-match to be meaningful.
            assert len(covering_rules(plan, source)) <= 1, plan


def test_rbac_plan_equals_check_exhaustive() -> None:
    """Every combination over the four precedence slots (web|* -> api|*)."""
    slots = [("web", "api"), ("*", "api"), ("web", "*"), ("*", "*")]
    choices = [CHOICES_WILD_DST if dst == "*" else CHOICES_EXACT_DST for _, dst in slots]
    count = 0
    for combo in itertools.product(*choices):
        ixns = build(dict(zip(slots, combo, strict=True)))
        for destination in ("api", "db"):
            assert_plan_equals_check(ixns, destination)
        count += 1
    assert count == 144


def test_rbac_plan_equals_check_random_sets() -> None:
    rng = random.Random(20240611)
    names = (*SOURCES, "*")
    for _ in range(300):
        slots: dict[tuple[str, str], str | None] = {}
        for src, dst in itertools.product(names, ("api", "db", "*")):
            choices = CHOICES_WILD_DST if dst == "*" else CHOICES_EXACT_DST
            slots[(src, dst)] = rng.choice(choices) if rng.random() < 0.4 else None
        ixns = build(slots)
        for destination in ("api", "db", "web"):
            assert_plan_equals_check(ixns, destination)
