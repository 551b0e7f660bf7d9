"""The CLI's text formats, which scripts parse: tables, `info` sections, member and node rows."""

from __future__ import annotations

import json

import pytest

from meshd.cli.output import (
    format_json,
    format_kv_detail,
    format_sections,
    format_table,
    kv_display,
    member_rows,
    member_status,
    member_type,
    node_rows,
    parse_pairs,
    service_lines,
    short_id,
    text,
)


def test_table_aligns_columns_two_spaces_apart_without_trailing_blanks() -> None:
    out = format_table(
        ["Node", "Address", "DC"], [["a", "10.0.0.1:8301", "dc1"], ["longer-name", "", "dc2"]]
    )
    assert out.splitlines() == [
        "Node         Address        DC",
        "a            10.0.0.1:8301  dc1",
        "longer-name                 dc2",
    ]
    assert all(line == line.rstrip() for line in out.splitlines())


def test_table_without_headers_and_ragged_rows() -> None:
    assert format_table(None, [["web", "v1,v2"], ["db"]]) == "web  v1,v2\ndb"
    assert format_table(None, []) == ""
    assert format_table(["A", "B"], []) == "A  B"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        ("x", "x"),
        (["a", "b"], "a,b"),
        ({"b": 2, "a": True}, "a=true,b=2"),
    ],
)
def test_text_uses_consul_spellings(value: object, expected: str) -> None:
    assert text(value) == expected


def test_json_is_indented_and_round_trips() -> None:
    obj = {"Name": "n1", "Tags": {"role": "consul"}, "Status": 1, "Ünï": "ç"}
    out = format_json(obj)
    assert "\n  " in out
    assert json.loads(out) == obj


def test_sections_are_sorted_and_tab_indented() -> None:
    out = format_sections(
        {
            "raft": {"leader": "10.0.0.1:8300", "num_peers": 3},
            "agent": {"server": True, "node_name": "n1"},
        }
    )
    assert out.splitlines() == [
        "agent:",
        "\tnode_name = n1",
        "\tserver = true",
        "raft:",
        "\tleader = 10.0.0.1:8300",
        "\tnum_peers = 3",
    ]


def test_kv_detail_is_sorted_and_aligned() -> None:
    out = format_kv_detail({"Key": "app/x", "Flags": 0, "ModifyIndex": 12, "Value": "v"})
    assert out.splitlines() == [
        "Flags        0",
        "Key          app/x",
        "ModifyIndex  12",
        "Value        v",
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, "none"),
        (1, "alive"),
        (2, "leaving"),
        (3, "left"),
        (4, "failed"),
        (9, "9"),
        ("alive", "alive"),
        (None, "none"),
    ],
)
def test_member_status_names(status: object, expected: str) -> None:
    assert member_status(status) == expected


def test_member_type_from_role_tag() -> None:
    assert member_type({"role": "consul"}) == "server"
    assert member_type({"role": "node"}) == "client"
    assert member_type({}) == "client"
    assert member_type(None) == "client"


def _member(name: str, role: str, status: int = 1, **extra: object) -> dict[str, object]:
    return {
        "Name": name,
        "Addr": "10.0.0.1",
        "Port": 8301,
        "Status": status,
        "Tags": {"role": role, "dc": "dc1", "build": "0.1.0", "vsn": "2"},
        **extra,
    }


def test_member_rows_put_servers_first_like_consul() -> None:
    headers, rows = member_rows(
        [_member("c1", "node"), _member("s2", "consul", 4), _member("s1", "consul")]
    )
    assert headers == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
    assert rows == [
        ["s1", "10.0.0.1:8301", "alive", "server", "0.1.0", "2", "dc1"],
        ["s2", "10.0.0.1:8301", "failed", "server", "0.1.0", "2", "dc1"],
        ["c1", "10.0.0.1:8301", "alive", "client", "0.1.0", "2", "dc1"],
    ]


def test_member_rows_detailed_and_ipv6_address() -> None:
    member = _member("s1", "consul", Addr="::1")
    headers, rows = member_rows([member], detailed=True)
    assert headers == ["Node", "Address", "Status", "Tags"]
    assert rows == [["s1", "[::1]:8301", "alive", "build=0.1.0,dc=dc1,role=consul,vsn=2"]]


def test_member_rows_fall_back_to_protocol_cur() -> None:
    _, rows = member_rows(
        [{"Name": "x", "Addr": "1.2.3.4", "Port": 0, "Status": 3, "ProtocolCur": 2, "Tags": {}}]
    )
    assert rows == [["x", "1.2.3.4", "left", "client", "", "2", ""]]


NODE_ID = "518708c0-a4e2-4f2a-8991-e2b2479a8908"


def test_node_rows_short_id_sorted_and_deduplicated() -> None:
    nodes = [
        {"Node": "web-2", "ID": NODE_ID, "Address": "10.0.0.2", "Datacenter": "dc1"},
        {"Node": "web-1", "ID": "abc", "Address": "10.0.0.1", "Datacenter": "dc1"},
        {"Node": "web-2", "ID": NODE_ID, "Address": "10.0.0.2", "Datacenter": "dc1"},
    ]
    headers, rows = node_rows(nodes)
    assert headers == ["Node", "ID", "Address", "DC"]
    assert rows == [["web-1", "abc", "10.0.0.1", "dc1"], ["web-2", "518708c0", "10.0.0.2", "dc1"]]


def test_node_rows_detailed_reads_meta_from_either_shape() -> None:
    catalog_node = {
        "Node": "a",
        "ID": NODE_ID,
        "Address": "1.1.1.1",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "1.1.1.1"},
        "Meta": {"k": "v"},
    }
    service_node = {
        "Node": "b",
        "ID": "",
        "Address": "2.2.2.2",
        "Datacenter": "dc1",
        "TaggedAddresses": {},
        "NodeMeta": {"rack": "r1"},
        "ServiceID": "web-1",
    }
    headers, rows = node_rows([catalog_node, service_node], detailed=True)
    assert headers[-2:] == ["TaggedAddresses", "Meta"]
    assert rows == [
        ["a", NODE_ID, "1.1.1.1", "dc1", "lan=1.1.1.1", "k=v"],
        ["b", "", "2.2.2.2", "dc1", "", "rack=r1"],
    ]


def test_short_id() -> None:
    assert short_id(NODE_ID) == "518708c0"
    assert short_id(None) == ""
    assert short_id("abc", 2) == "ab"


def test_service_lines_sorted_with_optional_tags() -> None:
    services = {"web": ["v2", "v1", "v1"], "consul": [], "db": None}
    assert service_lines(services) == "consul\ndb\nweb"
    assert service_lines(services, tags=True).splitlines() == ["consul", "db", "web     v1,v2"]
    assert service_lines({}) == ""


def test_kv_display_text_binary_and_base64() -> None:
    assert kv_display(b"hello") == "hello"
    assert kv_display(b"\xff") == "\ufffd"
    assert kv_display(b"\x00\xff\x01", as_base64=True) == "AP8B"


def test_parse_pairs() -> None:
    assert parse_pairs(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    assert parse_pairs(["rack:r1"], ":") == {"rack": "r1"}
    with pytest.raises(ValueError, match="expected key=value"):
        parse_pairs(["novalue"], what="-meta")
    with pytest.raises(ValueError):
        parse_pairs(["=v"])
