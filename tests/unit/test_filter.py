"""The ?filter= language against the row shapes Consul's listing endpoints actually return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshd.filter import FilterError, apply_filter, compile_filter

HEALTH_ROOTS = frozenset({"Node", "Service", "Checks"})


def health_entry(
    node: str = "node-1",
    service: str = "web",
    tags: list[str] | None = None,
    statuses: tuple[str, ...] = ("passing",),
    port: int = 8080,
    meta: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One /v1/health/service/<name> row."""
    return {
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
            "Node": node,
            "Address": "10.0.1.7",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.1.7", "wan": "203.0.113.7"},
            "Meta": {"rack": "r1", "consul-network-segment": ""},
        },
        "Service": {
            "ID": f"{service}-1",
            "Service": service,
            "Tags": ["primary", "v2"] if tags is None else tags,
            "Address": "",
            "Meta": {"env": "prod", "my-key": "x"} if meta is None else meta,
            "Port": port,
            "EnableTagOverride": False,
            "Weights": {"Passing": 1, "Warning": 1},
        },
        "Checks": [
            {
                "Node": node,
                "CheckID": f"check-{i}",
                "Name": f"check {i}",
                "Status": status,
                "ServiceID": f"{service}-1",
                "ServiceTags": [],
                "Output": "",
            }
            for i, status in enumerate(statuses)
        ],
    }


def catalog_row(**overrides: Any) -> dict[str, Any]:
    """One /v1/catalog/service/<name> row (flat ServiceX fields)."""
    row: dict[str, Any] = {
        "Node": "node-1",
        "Address": "10.0.1.7",
        "Datacenter": "dc1",
        "NodeMeta": {"rack": "r1"},
        "ServiceName": "web",
        "ServiceTags": ["primary", "v2"],
        "ServiceMeta": {"env": "prod", "my-key": "x"},
        "ServicePort": 8080,
        "ServiceEnableTagOverride": False,
        "ServiceProxy": None,
    }
    row.update(overrides)
    return row


def matches(expr: str, obj: Any, roots: frozenset[str] | None = None) -> bool:
    return compile_filter(expr, roots)(obj)


ENTRY = health_entry()
ROW = catalog_row()


# -- match operators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('Service.Service == "web"', True),
        ('Service.Service == "db"', False),
        ('Service.Service != "db"', True),
        ('Service.Service != "web"', False),
        ("Service.Address is empty", True),
        ("Service.Service is empty", False),
        ("Service.Address is not empty", False),
        ("Service.Service is not empty", True),
        ('"primary" in Service.Tags', True),
        ('"canary" in Service.Tags', False),
        ('"canary" not in Service.Tags', True),
        ('"primary" not in Service.Tags', False),
        ('Service.Tags contains "v2"', True),
        ('Service.Tags contains "v3"', False),
        ('Service.Tags not contains "v3"', True),
        ('Service.Tags not contains "v2"', False),
        ('Node.Node matches "^node-[0-9]+$"', True),
        ('Node.Node matches "^db-"', False),
        ('Node.Node not matches "^db-"', True),
        ('Node.Node not matches "^node"', False),
    ],
)
def test_each_operator_and_its_negation(expr: str, expected: bool) -> None:
    assert matches(expr, ENTRY) is expected


def test_matches_is_unanchored_search_like_go_regexp() -> None:
    assert matches('Node.Address matches "1\\\\.7"', ENTRY)
    assert matches("Node.Address matches `0\\.1\\.`", ENTRY)


def test_in_and_contains_on_strings_test_substrings() -> None:
    assert matches('"od" in Node.Node', ENTRY)
    assert matches('Node.Node contains "de-1"', ENTRY)
    assert not matches('Node.Node contains "db"', ENTRY)


def test_in_and_contains_on_maps_test_keys_not_values() -> None:
    assert matches('"env" in Service.Meta', ENTRY)
    assert matches('ServiceMeta contains "my-key"', ROW)
    assert not matches('"prod" in Service.Meta', ENTRY)
    assert matches('"lan" in Node.TaggedAddresses', ENTRY)


def test_contains_on_scalars_and_missing_fields_is_false() -> None:
    assert not matches('Service.Port contains "80"', ENTRY)
    assert not matches('Service.Nope contains "x"', ENTRY)
    assert matches('Service.Nope not contains "x"', ENTRY)


def test_is_empty_covers_missing_none_and_empty_containers() -> None:
    assert matches("ServiceProxy is empty", ROW)  # JSON null
    assert matches("Service.Missing is empty", ENTRY)
    assert matches("Service.Tags is empty", health_entry(tags=[]))
    assert matches("Service.Meta is empty", health_entry(meta={}))
    assert matches("Service.Weights is not empty", ENTRY)
    assert matches('Node.Meta["consul-network-segment"] is empty', ENTRY)
    assert not matches("Service.Port is empty", ENTRY)  # a number is never empty


def test_missing_fields_behave_as_empty_without_roots() -> None:
    assert not matches('Bogus.Field == "x"', ENTRY)
    assert matches('Bogus.Field != "x"', ENTRY)
    assert not matches('Bogus matches "."', ENTRY)
    assert matches('Bogus not matches "."', ENTRY)
    assert not matches('Service.Service.Deeper == "web"', ENTRY)  # stepping into a string


# -- values ------------------------------------------------------------------------------------


def test_bare_identifiers_are_values() -> None:
    assert matches("Service.Service == web", ENTRY)
    assert matches("ServiceName == web and Node == node-1", ROW)
    assert matches("primary in ServiceTags", ROW)
    assert matches("canary not in ServiceTags", ROW)
    assert matches("ServiceTags contains v2", ROW)


def test_a_dotted_bare_value_is_its_own_text() -> None:
    assert matches("Service.Service == web.v2", health_entry(service="web.v2"))
    assert not matches("Service.Service == web.v2", ENTRY)


def test_numbers_compare_numerically_and_as_literals() -> None:
    assert matches("ServicePort == 8080", ROW)
    assert matches('ServicePort == "8080"', ROW)
    assert matches("ServicePort == 8080.0", ROW)
    assert not matches("ServicePort == 80", ROW)
    assert matches("ServicePort != 80", ROW)
    assert matches("Service.Weights.Passing == 1", ENTRY)
    assert matches("Offset == -3", {"Offset": -3})
    assert matches("Ratio == 0.25", {"Ratio": 0.25})
    assert not matches("ServicePort == web", ROW)
    assert matches("ServicePort matches `^80`", ROW)


def test_string_fields_do_not_coerce_numbers() -> None:
    assert matches("Code == 42", {"Code": "42"})
    assert not matches("Code == 42.0", {"Code": "42"})


def test_booleans_compare_with_true_and_false() -> None:
    assert matches("ServiceEnableTagOverride == false", ROW)
    assert matches('ServiceEnableTagOverride == "false"', ROW)
    assert not matches("ServiceEnableTagOverride == true", ROW)
    assert matches("ServiceEnableTagOverride != true", ROW)
    assert matches("ServiceEnableTagOverride matches `^f`", ROW)
    assert not matches("ServiceEnableTagOverride == 0.0", ROW)


def test_raw_strings_keep_backslashes_and_quotes() -> None:
    assert matches(r"Path == `C:\dir\"x\"`", {"Path": r"C:\dir\"x\""})
    assert matches("Path == `multi\nline`", {"Path": "multi\nline"})
    assert matches("Path == ``", {"Path": ""})


@pytest.mark.parametrize(
    ("literal", "decoded"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"tab\there"', "tab\there"),
        (r'"new\nline"', "new\nline"),
        (r'"\x41\u00e9\U0001F600"', "Aé😀"),
        (r'"a\/b"', "a/b"),
        ('"and or not in ( ) == !="', "and or not in ( ) == !="),
    ],
)
def test_double_quoted_escapes_are_decoded(literal: str, decoded: str) -> None:
    assert matches(f"Value == {literal}", {"Value": decoded})


def test_keywords_are_allowed_after_a_dot() -> None:
    assert matches('Meta.in == "x" and Meta.not is not empty', {"Meta": {"in": "x", "not": "y"}})


# -- selectors ---------------------------------------------------------------------------------


def test_bracket_selectors_reach_keys_that_are_not_identifiers() -> None:
    assert matches('ServiceMeta["my-key"] == "x"', ROW)
    assert matches('Service.Meta["my-key"] == x', ENTRY)
    assert matches('Node.Meta[ "rack" ] == r1', ENTRY)
    labels = {"Labels": {"app.kubernetes.io/name": "api"}}
    assert matches('Labels["app.kubernetes.io/name"] == api', labels)
    assert matches("Labels[`a b`].Inner == y", {"Labels": {"a b": {"Inner": "y"}}})
    assert not matches('ServiceMeta["absent"] == "x"', ROW)


def test_dashed_dotted_segments_and_nested_maps() -> None:
    assert matches("ServiceMeta.my-key == x", ROW)
    assert matches('Node.Meta.rack == "r1"', ENTRY)
    assert matches('Node.TaggedAddresses.wan == "203.0.113.7"', ENTRY)


def test_numeric_segments_index_lists() -> None:
    entry = health_entry(statuses=("passing", "critical"))
    assert matches("Checks.0.Status == passing", entry)
    assert matches("Checks[1].Status == critical", entry)
    assert matches("Checks.1.Status != passing", entry)
    assert matches("Checks.7.Status is empty", entry)
    assert matches("Service.Tags.0 == primary", entry)


# -- list-any semantics ------------------------------------------------------------------------


def test_collection_steps_match_if_any_element_matches() -> None:
    mixed = health_entry(statuses=("passing", "warning", "critical"))
    healthy = health_entry(statuses=("passing", "passing"))
    assert matches('Checks.Status == "critical"', mixed)
    assert not matches('Checks.Status == "critical"', healthy)
    assert matches('Checks.Status contains "warn"', mixed)
    assert matches('"critical" in Checks.Status', mixed)
    assert matches('Checks.Status matches "^crit"', mixed)
    assert not matches('Checks.Status matches "^crit"', healthy)


def test_negated_collection_operators_mean_no_element_matches() -> None:
    mixed = health_entry(statuses=("passing", "critical"))
    healthy = health_entry(statuses=("passing", "passing"))
    assert matches('Checks.Status != "critical"', healthy)
    assert not matches('Checks.Status != "critical"', mixed)
    assert not matches('Checks.Status != "passing"', healthy)
    assert not matches('Checks.Status not matches "^crit"', mixed)
    assert matches('"critical" not in Checks.Status', healthy)


def test_empty_collections_have_no_matching_element() -> None:
    no_checks = health_entry(statuses=())
    assert not matches('Checks.Status == "passing"', no_checks)
    assert matches('Checks.Status != "critical"', no_checks)
    assert matches("Checks.Status is empty", no_checks)
    assert matches("Checks is empty", no_checks)
    assert not matches("Checks.Status is empty", ENTRY)


def test_equality_against_a_list_field_checks_its_elements() -> None:
    assert matches('Service.Tags == "primary"', ENTRY)
    assert not matches('Service.Tags == "canary"', ENTRY)


def test_fan_out_through_nested_lists() -> None:
    node_info = {
        "Node": {"Node": "n1"},
        "Services": [
            {"Service": "web", "Tags": ["a"]},
            {"Service": "db", "Tags": ["primary", "b"]},
        ],
    }
    assert matches('Services.Service == "db"', node_info)
    assert matches('"primary" in Services.Tags', node_info)
    assert not matches('"c" in Services.Tags', node_info)
    assert matches("Services.Tags is not empty", node_info)


# -- logic -------------------------------------------------------------------------------------


def test_and_or_not() -> None:
    assert matches("Service.Service == web and Service.Port == 8080", ENTRY)
    assert not matches("Service.Service == web and Service.Port == 9090", ENTRY)
    assert matches("Service.Service == db or Service.Port == 8080", ENTRY)
    assert not matches("Service.Service == db or Service.Port == 9090", ENTRY)
    assert matches("not Service.Service == db", ENTRY)
    assert matches("not not Service.Service == web", ENTRY)
    assert matches('not "canary" in Service.Tags', ENTRY)


def test_precedence_is_not_then_and_then_or() -> None:
    # Parsed as `(a and (not b)) or c` per Consul's docs.
    true, false = "Service.Service == web", "Service.Service == db"
    assert matches(f"{false} and {false} or {true}", ENTRY)
    assert matches(f"{true} or {true} and {false}", ENTRY)
    assert not matches(f"not {true} and {true}", ENTRY)  # (not T) and T
    assert matches(f"not {false} and {true}", ENTRY)
    assert matches(f"{true} and not {false} or {false}", ENTRY)


def test_parentheses_override_precedence() -> None:
    true, false = "Service.Service == web", "Service.Service == db"
    assert not matches(f"({true} or {true}) and {false}", ENTRY)
    assert not matches(f"not ({false} or {true})", ENTRY)
    assert matches(f"((({true})))", ENTRY)
    assert matches(f"( {false} or ({true} and not ({false})) )", ENTRY)


def test_whitespace_is_insignificant_outside_strings() -> None:
    assert matches("Service.Service==web and(Service.Port!=1)", ENTRY)
    assert matches("\n\tService.Service  ==\r\n  web  ", ENTRY)
    assert not matches('Service.Service == " web"', ENTRY)


def test_realistic_health_query() -> None:
    expr = (
        'Service.Meta.env == "prod" and "primary" in Service.Tags'
        ' and Checks.Status != "critical" and Node.Meta.rack matches "^r[12]$"'
    )
    assert matches(expr, health_entry(statuses=("passing", "warning")), HEALTH_ROOTS)
    assert not matches(expr, health_entry(statuses=("critical",)), HEALTH_ROOTS)
    assert not matches(expr, health_entry(meta={"env": "staging"}), HEALTH_ROOTS)


# -- public API --------------------------------------------------------------------------------


def test_blank_expression_means_no_filter() -> None:
    rows = [catalog_row(), catalog_row(ServiceName="db")]
    assert apply_filter(None, rows) == rows
    assert apply_filter("", rows) == rows
    assert apply_filter("   ", rows) == rows
    assert compile_filter("")(object())


def test_apply_filter_keeps_order_and_uses_to_obj() -> None:
    @dataclass
    class Instance:
        name: str
        port: int

    items = [Instance("a", 80), Instance("b", 8080), Instance("c", 80)]
    kept = apply_filter("Port == 80", items, lambda i: {"Name": i.name, "Port": i.port})
    assert [i.name for i in kept] == ["a", "c"]


def test_apply_filter_checks_roots() -> None:
    with pytest.raises(FilterError, match="unknown selector 'Sevice'"):
        apply_filter("Sevice.Service == web", [ENTRY], allowed_roots=HEALTH_ROOTS)


def test_compiled_filters_are_cached() -> None:
    assert compile_filter("ServiceName == web") is compile_filter("ServiceName == web")


def test_unknown_root_is_a_compile_time_error_when_roots_are_given() -> None:
    with pytest.raises(FilterError) as info:
        compile_filter('Service.Service == "web" and Nodes.Node == "n1"', HEALTH_ROOTS)
    message = str(info.value)
    assert "unknown selector 'Nodes'" in message
    assert "1:30" in message
    assert "Checks, Node, Service" in message
    assert info.value.position == 29
    with pytest.raises(FilterError, match="unknown selector 'Tags'"):
        compile_filter('"x" in Tags', HEALTH_ROOTS)


def test_roots_do_not_apply_to_bare_values() -> None:
    assert matches("primary in Service.Tags and Service.Service == web", ENTRY, HEALTH_ROOTS)


def test_filter_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        compile_filter("Service.Service ==")


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "fragments"),
    [
        ('Service.Service == "web', ["unterminated string", "1:20"]),
        ("Service.Service == `web", ["unterminated raw string", "1:20"]),
        ('Service.Service == "web\\', ["unterminated string"]),
        ("Service.Service ==", ["expected a value after '=='", "end of input", "1:19"]),
        ("Service.Service == and", ["expected a value after '=='", "'and'"]),
        ("Service.Tags contains", ["expected a value after 'contains'"]),
        ('"web" in', ["expected a selector after 'in'", "end of input"]),
        ('"web" in "Tags"', ["expected a selector after 'in'"]),
        ("Service.Service == web and", ["expected a selector", "end of input"]),
        ("or Service.Service == web", ["expected a selector", "'or'"]),
        ("()", ["expected a selector", "')'"]),
        ("Service.Service", ["expected an operator", "end of input"]),
        ("Service.Service equals web", ["expected an operator", "'equals'", "1:17"]),
        ("Service.Service = web", ["unexpected character '='", "did you mean '=='"]),
        ("Service.Port >= 80", ["unexpected character '>'", "1:14"]),
        ("Service.Service == web && Service.Port == 1", ["unexpected character '&'", "'and'"]),
        ("Service.Service ~= web", ["unexpected character '~'"]),
        ("Service.Tags not has x", ["expected 'contains', 'matches' or 'in' after 'not'"]),
        ("Service.Tags is full", ["expected 'empty' after 'is'", "'full'"]),
        ("Service.Tags is not", ["expected 'empty' after 'is not'"]),
        ('"web" == Service.Service', ["expected 'in' or 'not in' after value 'web'"]),
        ('"web" not Service.Tags', ["expected 'in' after value 'web'"]),
        ("Service.Service == web web", ["expected 'and', 'or' or end of input", "'web'", "1:24"]),
        ("Service.Service == web)", ["expected 'and', 'or' or end of input", "')'"]),
        ("(Service.Service == web", ["to close '(' at 1:1", "end of input"]),
        ("Service. == web", ["expected a field name after '.'", "'=='"]),
        ("Service.Meta[env] == x", ["expected a quoted key or an index"]),
        ('Service.Meta["env" == x', ["expected ']'"]),
        ("Service.Port == 80a", ["invalid number literal '80a'"]),
        ('Service.Service matches "(unclosed"', ["invalid regular expression", "1:25"]),
        ("Service.Service not matches `[a-`", ["invalid regular expression"]),
        (r'Service.Service == "\q"', ["unknown escape sequence '\\q'", "1:21"]),
        (r'Service.Service == "\x4"', ["needs 2 hex digits"]),
        (r'Service.Service == "\UFFFFFFFF"', ["not a valid code point"]),
        ("Service.Service == 'web'", ["strings use double quotes or backticks"]),
    ],
)
def test_errors_name_the_position_and_what_was_expected(expr: str, fragments: list[str]) -> None:
    with pytest.raises(FilterError) as info:
        compile_filter(expr)
    message = str(info.value)
    assert message.startswith("invalid filter at ")
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.position is not None


def test_error_positions_count_lines_and_columns() -> None:
    with pytest.raises(FilterError, match=r"at 2:5 \(offset 33\)"):
        compile_filter('Service.Service == "web" and\nNode"')


def test_bad_filters_are_not_cached_as_good_ones() -> None:
    for _ in range(2):
        with pytest.raises(FilterError):
            compile_filter("Service.Service ==")


def test_deep_nesting_is_a_filter_error_not_a_recursion_error() -> None:
    assert matches("(" * 60 + "Service.Service == web" + ")" * 60, ENTRY)
    assert matches("not " * 60 + "Service.Service == web", ENTRY)  # even count
    with pytest.raises(FilterError, match="nested deeper than"):
        compile_filter("(" * 5000 + "Service.Service == web" + ")" * 5000)
    with pytest.raises(FilterError, match="nested deeper than"):
        compile_filter("not " * 5000 + "Service.Service == web")


def test_long_flat_chains_do_not_recurse() -> None:
    expr = " or ".join(f"Service.Port == {port}" for port in range(3000, 9000))
    assert matches(expr, ENTRY)


@pytest.mark.timeout(30)
def test_matches_runs_in_linear_time_on_catastrophic_patterns() -> None:
    """`(a+)+$` backtracks for ages in Python's `re`; RE2 (Go's semantics) answers at once."""
    assert not matches('Node.Node matches "(a+)+$"', health_entry(node="a" * 5000 + "!"))
    assert matches('Node.Node matches "(a+)+$"', health_entry(node="a" * 5000))


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a{4294967296}", "invalid repeat count"),  # RE2 alone reads this as literal text
        ("a{1001}", "invalid repeat count"),
        ("x{2,99999999999}", "invalid repeat count"),
        ("(a)\\\\1", "invalid regular expression"),  # backreferences: not RE2, not Go
        ("(?=a)", "invalid regular expression"),
        ("((a{1000}){1000})", "invalid regular expression"),
        ("a" * 5000, "the limit is 4096"),
    ],
)
def test_regexes_go_refuses_or_too_costly_are_filter_errors(pattern: str, reason: str) -> None:
    with pytest.raises(FilterError, match=reason):
        compile_filter(f'Node.Node matches "{pattern}"')


def test_escaped_or_bracketed_braces_are_literals_not_repeats() -> None:
    assert matches(r'Node.Meta.rack matches "^r\\{5000\\}$"', health_entry(), None) is False
    assert matches('Node.Node matches "^node[{]"', health_entry(node="node{1"))


def test_a_lone_surrogate_in_the_data_does_not_match_instead_of_raising() -> None:
    assert not matches('Node.Node matches "."', health_entry(node="\ud800"))


def test_filter_size_and_term_count_are_bounded() -> None:
    with pytest.raises(FilterError, match="characters long"):
        compile_filter("Service.Service == " + "x" * (300 * 1024))
    too_many = " or ".join("Service.Port == 1" for _ in range(10_001))
    with pytest.raises(FilterError, match="terms in one filter"):
        compile_filter(too_many)
