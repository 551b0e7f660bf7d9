"""The authorizer over a table of rules and requests: Consul's precedence, and rules errors."""

from __future__ import annotations

import pytest

from meshd.acl import (
    MANAGEMENT,
    Access,
    PermissionDeniedError,
    RulesError,
    build_authorizer,
    parse_rules,
)

R, L, W = Access.READ, Access.LIST, Access.WRITE

POLICY_A = """
key_prefix "" { policy = "read" }
key_prefix "app/" { policy = "write" }
key_prefix "app/secret/" { policy = "deny" }
key "app/secret/public" { policy = "read" }
service_prefix "" { policy = "read" }
service "web" {
  policy = "write"
  intentions = "write"
}
service "db" { policy = "deny" }
node_prefix "n" { policy = "write" }
node "nx" { policy = "read" }
operator = "read"
"""
# a second policy on the same token: deny wins a tie, otherwise the most permissive
POLICY_B = """
service "api" { policy = "write" }
service "web" { policy = "read" }
key "app/x" { policy = "deny" }
key_prefix "lst/" { policy = "list" }
"""

CASES = [
    # (resource, name, access, expected)
    ("key", "other", R, True),  # the empty prefix matches everything
    ("key", "other", W, False),
    ("key", "app/a", W, True),  # longer prefix beats shorter
    ("key", "app/secret/k", R, False),  # the longest prefix is a deny
    ("key", "app/secret/public", R, True),  # exact beats every prefix
    ("key", "app/secret/public", W, False),
    ("key", "app/x", R, False),  # deny from policy B beats write from A's prefix (exact wins)
    ("key", "lst/a", L, True),
    ("key", "lst/a", R, True),  # list implies read
    ("key", "lst/a", W, False),
    ("key", "app/a", L, True),  # write implies list
    ("key", "other", L, False),  # read does not imply list
    ("service", "web", W, True),  # write (A) and read (B) merge to write
    ("service", "api", W, True),
    ("service", "db", R, False),  # exact deny beats the read prefix
    ("service", "anything", R, True),
    ("service", "anything", W, False),
    ("intention", "web", W, True),
    ("intention", "anything", R, True),  # service read implies intentions read
    ("intention", "anything", W, False),
    ("intention", "db", R, False),
    ("node", "n1", W, True),
    ("node", "nx", W, False),  # exact read beats the write prefix
    ("node", "nx", R, True),
    ("node", "m1", R, False),  # nothing matches: default deny
    ("operator", "", R, True),
    ("operator", "", W, False),
    ("mesh", "", R, True),  # mesh falls back to operator
    ("acl", "", R, False),
    ("session", "n1", R, False),
]


@pytest.mark.parametrize(("resource", "name", "access", "expected"), CASES)
def test_precedence(resource: str, name: str, access: Access, expected: bool) -> None:
    authz = build_authorizer(parse_rules(POLICY_A) + parse_rules(POLICY_B), "deny", "acc-1")
    assert authz.allowed(resource, name, access) is expected


def test_deny_wins_a_tie_between_policies() -> None:
    a = parse_rules('service "web" { policy = "write" }')
    b = parse_rules('service "web" { policy = "deny" }')
    for rules in (a + b, b + a):
        assert not build_authorizer(rules).allowed("service", "web", Access.READ)


def test_json_rules_equal_hcl() -> None:
    hcl = parse_rules('key_prefix "a/" { policy = "write" }\nacl = "read"')
    js = parse_rules('{"key_prefix": {"a/": {"policy": "write"}}, "acl": "read"}')
    assert hcl == js


def test_default_allow_never_grants_acl() -> None:
    authz = build_authorizer([], "allow")
    assert authz.allowed("service", "x", Access.WRITE)
    assert not authz.allowed("acl", "", Access.READ)
    assert MANAGEMENT.allowed("acl", "", Access.WRITE)


def test_denied_error_in_consul_format() -> None:
    authz = build_authorizer([], "deny", "1c2d")
    with pytest.raises(PermissionDeniedError) as e:
        authz.check("service", "web", Access.WRITE)
    assert str(e.value) == (
        "Permission denied: token with AccessorID '1c2d' "
        "lacks permission 'service:write' on \"web\""
    )
    with pytest.raises(PermissionDeniedError) as e:
        authz.check("operator", "", Access.READ)
    assert str(e.value).endswith("lacks permission 'operator:read'")


@pytest.mark.parametrize(
    ("rules", "names"),
    [
        ('key "a" { policy = "sup" }', 'key "a"'),
        ('foo "a" { policy = "read" }', "foo"),
        ('key "a" { polcy = "read" }', 'key "a"'),
        ('service "x" {', "parse"),
        ('operator = "list"', "operator"),
        ('service "web" { policy = "read" intentions = "all" }', 'service "web"'),
        ('node "a" { policy = "list" }', 'node "a"'),
        ('{"key": {"a": {"policy": 1}}}', 'key "a"'),
        ("[1, 2]", "parse"),
    ],
)
def test_malformed_rules_name_the_resource(rules: str, names: str) -> None:
    with pytest.raises(RulesError) as e:
        parse_rules(rules)
    assert names in str(e.value)


def test_repeated_blocks_all_count() -> None:
    rules = parse_rules(
        'service "a" { policy = "write" }\nservice "b" { policy = "read" }\n'
        'key "k" { policy = "read" }\nservice "c" { policy = "deny" }'
    )
    assert {(r.resource, r.name, r.policy) for r in rules} == {
        ("service", "a", "write"),
        ("service", "b", "read"),
        ("service", "c", "deny"),
        ("key", "k", "read"),
    }


@pytest.mark.parametrize(
    ("rules", "default", "resource", "expected"),
    [
        ('node_prefix "" { policy = "read" }', "deny", "node", True),
        ('node_prefix "" { policy = "read" }\nnode "x" { policy = "deny" }', "deny", "node", False),
        ('node_prefix "a" { policy = "read" }', "deny", "node", False),  # "b..." is not covered
        ('node_prefix "a" { policy = "read" }', "allow", "node", True),
        ('node "x" { policy = "deny" }', "allow", "node", False),
        ('service_prefix "" { policy = "write" }', "deny", "service", True),
        ("", "deny", "service", False),
        ("", "allow", "acl", False),
        ('operator = "read"', "deny", "mesh", True),
    ],
)
def test_reads_all_lets_lists_skip_filtering(
    rules: str, default: str, resource: str, expected: bool
) -> None:
    """A wrong True here would leak rows a token may not read: each case is checked both ways."""
    assert build_authorizer(parse_rules(rules), default).reads_all(resource) is expected
