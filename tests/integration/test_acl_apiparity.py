"""ACLs on the operator, keyring, coordinate and prepared query endpoints, on a real
`meshd agent -dev` with `default_policy = "deny"` and a cluster key (so the keyring works)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest
from acl_helpers import ACLAgent, running_acl_agent

OTHER_RULES = 'key "unrelated" { policy = "read" }'


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent(args=(f"-encrypt={new_key()}",))


def _denied_then_allowed(
    acl: ACLAgent, method: str, path: str, body: Any, rules: str, permission: str
) -> Any:
    """403 naming `permission` for a token without it; the answer for a token with it."""
    _, other = acl.token_for(OTHER_RULES)
    denied = acl.call(method, path, body, other)
    assert denied.status == 403, denied.body
    assert f"lacks permission '{permission}'".encode() in denied.body
    _, allowed = acl.token_for(rules)
    return acl.call(method, path, body, allowed)


@pytest.mark.parametrize(
    ("method", "path", "body", "rules", "permission"),
    [
        ("POST", "/v1/operator/keyring", None, 'keyring = "write"', "keyring:write"),
        ("GET", "/v1/meshd/graph", None, 'operator = "read"', "operator:read"),
        (
            "GET",
            "/v1/internal/ui/service-topology/web?kind=",
            None,
            'service "web" { policy = "read" }',
            "service:read",
        ),
        (
            "GET",
            "/v1/meshd/explain?source=web&destination=api",
            None,
            'service_prefix "" { policy = "read" }',
            "service:read",
        ),
        ("GET", "/v1/operator/keyring", None, 'keyring = "read"', "keyring:read"),
        (
            "PUT",
            "/v1/operator/autopilot/configuration",
            {"CleanupDeadServers": True},
            'operator = "write"',
            "operator:write",
        ),
        (
            "GET",
            "/v1/operator/autopilot/configuration",
            None,
            'operator = "read"',
            "operator:read",
        ),
        ("GET", "/v1/operator/usage", None, 'operator = "read"', "operator:read"),
        ("GET", "/v1/agent/host", None, 'operator = "read"', "operator:read"),
        (
            "PUT",
            "/v1/coordinate/update",
            {
                "Node": "far",
                "Coord": {"Vec": [0.1] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
            },
            'node "far" { policy = "write" }',
            "node:write",
        ),
        (
            "POST",
            "/v1/query",
            {"Name": "geo-web", "Service": {"Service": "web"}},
            'query_prefix "geo-" { policy = "write" }',
            "query:write",
        ),
    ],
)
def test_new_endpoints_denied_then_allowed(
    acl: ACLAgent, method: str, path: str, body: Any, rules: str, permission: str
) -> None:
    if method == "POST" and path == "/v1/operator/keyring":
        body = {"Key": new_key()}
    ok = _denied_then_allowed(acl, method, path, body, rules, permission)
    assert ok.status == 200, ok.body


def test_force_leave_needs_operator_write(acl: ACLAgent) -> None:
    ok = _denied_then_allowed(
        acl, "PUT", "/v1/agent/force-leave/gone", None, 'operator = "write"', "operator:write"
    )
    # past the ACL: Consul's own answer for a node it does not know
    assert ok.status == 500 and b"No node found with name 'gone'" in ok.body


def test_prepared_query_guarded_by_its_name(acl: ACLAgent) -> None:
    qid = acl.ok("POST", "/v1/query", {"Name": "team-a-web", "Service": {"Service": "web"}})["ID"]
    _, reader = acl.token_for('query_prefix "team-a-" { policy = "read" }')
    _, other = acl.token_for('query_prefix "team-b-" { policy = "write" }')
    assert acl.call("GET", f"/v1/query/{qid}", token=reader).status == 200
    assert acl.call("GET", f"/v1/query/{qid}", token=other).status == 403
    assert acl.call("DELETE", f"/v1/query/{qid}", token=reader).status == 403
    # a rename into the writer's prefix still needs write on the name the query has now
    rename = {"Name": "team-b-web", "Service": {"Service": "web"}}
    assert acl.call("PUT", f"/v1/query/{qid}", rename, other).status == 403
    listed = acl.call("GET", "/v1/query", token=other)
    assert listed.status == 200 and qid not in [q["ID"] for q in listed.json()]
    assert listed.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert qid in [q["ID"] for q in acl.ok("GET", "/v1/query")]
    assert acl.call("GET", f"/v1/query/{qid}", token=reader).json()[0]["Name"] == "team-a-web"


def test_coordinate_reads_filtered_by_node(acl: ACLAgent) -> None:
    coord = {"Vec": [0.2] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}
    for node in ("hidden", "visible"):
        acl.ok("PUT", "/v1/catalog/register", {"Node": node, "Address": "10.0.0.7"})
        acl.ok("PUT", "/v1/coordinate/update", {"Node": node, "Coord": coord})
    _, reader = acl.token_for('node "visible" { policy = "read" }')
    assert acl.call("GET", "/v1/coordinate/node/hidden", token=reader).status == 403
    r = acl.call("GET", "/v1/coordinate/nodes", token=reader)
    assert r.status == 200 and [c["Node"] for c in r.json()] == ["visible"]
    assert acl.call("GET", "/v1/coordinate/node/visible", token=reader).status == 200
    everything = [c["Node"] for c in acl.ok("GET", "/v1/coordinate/nodes")]
    assert {"hidden", "visible"} <= set(everything)
