"""meshd/prepared_query.py: definitions, templates, lookup and filtering."""

from __future__ import annotations

import pytest

from meshd.prepared_query import (
    PreparedQueryError,
    check_unique,
    normalize,
    resolve,
    select,
)
from meshd.structs import CheckServiceNode, HealthCheck, Node, NodeService


def row(node: str, tags: list[str], status: str = "passing", **meta: str) -> CheckServiceNode:
    return CheckServiceNode(
        Node=Node(Node=node, Address="10.0.0.1", Meta={"rack": meta.get("rack", "a")}),
        Service=NodeService(
            ID=f"{node}-svc", Service="db", Tags=tags, Meta={"ver": meta.get("ver", "1")}
        ),
        Checks=[HealthCheck(Node=node, CheckID=f"c-{node}", Name="c", Status=status)],
    )


def q(**service: object) -> dict[str, object]:
    return normalize({"Name": "db-q", "Service": {"Service": "db", **service}}, "id-1")


def test_normalize_fills_consul_fields():
    got = q(Tags=["primary"])
    assert got["ID"] == "id-1" and got["Name"] == "db-q"
    assert got["Service"]["Tags"] == ["primary"] and got["Service"]["OnlyPassing"] is False
    assert got["Template"] == {"Type": "", "Regexp": "", "RemoveEmptyTags": False}
    assert got["DNS"] == {"TTL": ""}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"Name": "x", "Service": {}}, "Must provide a Service name"),
        ({"Name": "x", "Service": {"Service": "db"}, "Bogus": 1}, "unknown prepared query field"),
        ({"Name": "x", "Service": {"Service": "db", "Tags": "a"}}, "Tags must be a list"),
        ({"Service": {"Service": "db"}}, "Must provide a Name"),
        (
            {"Name": "x", "Template": {"Type": "glob"}, "Service": {"Service": "db"}},
            "Bad Template.Type",
        ),
        (
            {
                "Name": "x",
                "Template": {"Type": "regexp", "Regexp": "("},
                "Service": {"Service": "s"},
            },
            "Invalid template regexp",
        ),
        ({"Name": "x", "Service": {"Service": "db"}, "DNS": {"TTL": "soon"}}, "Bad DNS TTL"),
    ],
)
def test_bad_definitions_are_refused(raw, reason):
    with pytest.raises(PreparedQueryError, match=reason):
        normalize(raw, "id")


def test_names_are_unique():
    a = q()
    b = dict(q(), ID="id-2")
    with pytest.raises(PreparedQueryError, match="already exists"):
        check_unique(b, [a])
    check_unique(a, [a])  # updating itself is fine


def test_select_health_tags_and_meta():
    rows = [
        row("n1", ["primary", "v1"]),
        row("n2", ["replica"], status="warning"),
        row("n3", ["primary"], status="critical"),
        row("n4", ["primary", "canary"], rack="b", ver="2"),
    ]
    names = lambda got: [r.Node.Node for r in got]  # noqa: E731
    assert names(select(q(), rows)) == ["n1", "n2", "n4"]
    assert names(select(q(OnlyPassing=True), rows)) == ["n1", "n4"]
    assert names(select(q(Tags=["PRIMARY", "!canary"]), rows)) == ["n1"]
    assert names(select(q(NodeMeta={"rack": "b"}), rows)) == ["n4"]
    assert names(select(q(ServiceMeta={"ver": "1"}), rows)) == ["n1", "n2"]
    assert names(select(q(IgnoreCheckIDs=["c-n3"]), rows)) == ["n1", "n2", "n3", "n4"]


def test_resolve_by_id_name_and_templates():
    plain = q()
    prefix = normalize(
        {
            "Name": "geo-",
            "Template": {"Type": "name_prefix_match"},
            "Service": {"Service": "${name.suffix}", "Tags": ["${name.prefix}x"]},
        },
        "id-2",
    )
    rx = normalize(
        {
            "Name": "rx-",
            "Template": {"Type": "regexp", "Regexp": "^rx-(.+?)-(.+)$"},
            "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}", ""]},
        },
        "id-3",
    )
    rx["Template"]["RemoveEmptyTags"] = True
    catch_all = normalize(
        {
            "Name": "",
            "Template": {"Type": "name_prefix_match"},
            "Service": {"Service": "${name.full}"},
        },
        "id-4",
    )
    defs = [plain, prefix, rx, catch_all]
    assert resolve(defs, "id-1").query["Service"]["Service"] == "db"
    assert resolve(defs, "db-q").query["ID"] == "id-1"
    got = resolve(defs, "geo-web").query
    assert got["Service"]["Service"] == "web" and got["Service"]["Tags"] == ["geo-x"]
    got = resolve(defs, "rx-redis-primary").query
    assert got["Service"]["Service"] == "redis" and got["Service"]["Tags"] == ["primary"]
    assert resolve(defs, "anything").query["Service"]["Service"] == "anything"
    assert resolve([plain], "nope") is None
    assert prefix["Service"]["Service"] == "${name.suffix}"  # rendering copies
