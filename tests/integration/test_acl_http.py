"""ACLs on a real `meshd agent -dev` with `default_policy = "deny"`: bootstrap, tokens,
policies, roles, and every endpoint group allowed and denied as Consul does it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from acl_helpers import MGMT, ACLAgent, running_acl_agent, start_acl_agent

from meshd.acl.model import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent()


def test_anonymous_is_denied_and_unknown_token_is_acl_not_found(acl: ACLAgent) -> None:
    r = acl.call("PUT", "/v1/kv/a", b"x", token=None)
    assert r.status == 403
    assert r.body.decode().startswith("Permission denied: token with AccessorID")
    assert "lacks permission 'key:write' on \"a\"" in r.body.decode()
    r = acl.call("GET", "/v1/agent/self", token=str(uuid.uuid4()))
    assert (r.status, r.body) == (403, b"ACL not found\n")


def test_initial_management_consumes_the_bootstrap(acl: ACLAgent) -> None:
    """Consul's leader stores the configured token (with the bootstrap, when unused) and the
    anonymous token."""
    r = acl.call("PUT", "/v1/acl/bootstrap", token=None)
    assert r.status == 403 and b"ACL bootstrap no longer allowed" in r.body
    me = acl.ok("GET", "/v1/acl/token/self")
    assert me["Description"] == "Initial Management Token" and me["SecretID"] == MGMT
    assert me["Policies"] == [{"ID": MANAGEMENT_POLICY_ID, "Name": "global-management"}]
    anonymous = acl.ok("GET", f"/v1/acl/token/{ANONYMOUS_ACCESSOR}")
    assert anonymous["SecretID"] == "anonymous" and anonymous["Description"] == "Anonymous Token"
    # without a token, "self" is the anonymous token (Consul's `acl token read -self`)
    assert acl.ok("GET", "/v1/acl/token/self", token=None)["AccessorID"] == ANONYMOUS_ACCESSOR
    refused = acl.call("DELETE", f"/v1/acl/token/{ANONYMOUS_ACCESSOR}")
    assert refused.status == 400 and b"not permitted on the anonymous token" in refused.body


def test_anonymous_token_policies_apply_to_requests_without_a_token(acl: ACLAgent) -> None:
    acl.ok("PUT", "/v1/kv/anon/k", b"v")
    assert acl.call("GET", "/v1/kv/anon/k", token=None).status == 403
    pol = acl.ok(
        "PUT", "/v1/acl/policy", {"Name": "anon-kv", "Rules": 'key "anon/k" { policy = "read" }'}
    )
    acl.ok("PUT", f"/v1/acl/token/{ANONYMOUS_ACCESSOR}", {"Policies": [{"ID": pol["ID"]}]})
    assert acl.call("GET", "/v1/kv/anon/k", token=None).status == 200
    assert acl.call("GET", "/v1/kv/anon/k", token="anonymous").status == 200
    assert acl.call("PUT", "/v1/kv/anon/k", b"w", token=None).status == 403
    acl.ok("PUT", f"/v1/acl/token/{ANONYMOUS_ACCESSOR}", {"Policies": []})
    assert acl.call("GET", "/v1/kv/anon/k", token=None).status == 403


def test_bootstrap_once_then_403_with_reset_index() -> None:
    acl = start_acl_agent(initial_management=False, agent_token=False)
    try:
        _bootstrap_once(acl)
    finally:
        acl.proc.stop()


def _bootstrap_once(acl: ACLAgent) -> None:
    first = acl.call("PUT", "/v1/acl/bootstrap", token=None)
    assert first.status == 200, first.body
    secret = first.json()["SecretID"]
    assert (
        acl.ok("GET", "/v1/acl/token/self", token=secret)["AccessorID"]
        == first.json()["AccessorID"]
    )
    again = acl.call("PUT", "/v1/acl/bootstrap", token=None)
    assert again.status == 403
    assert again.body.decode().startswith(
        "Permission denied: ACL bootstrap no longer allowed (reset index: "
    )
    # the bootstrap token is a management token
    assert acl.call("PUT", "/v1/kv/boot", b"1", token=secret).status == 200


def test_token_in_three_places(acl: ACLAgent) -> None:
    _, secret = acl.token_for('key_prefix "three/" { policy = "write" }')
    for how in ("x", "bearer", "query"):
        assert acl.call("PUT", f"/v1/kv/three/{how}", b"v", secret, how).status == 200
        assert acl.call("PUT", "/v1/kv/other", b"v", secret, how).status == 403


def test_kv_allowed_denied_and_filtered(acl: ACLAgent) -> None:
    acl.ok("PUT", "/v1/kv/app/one", b"1")
    acl.ok("PUT", "/v1/kv/app/secret/two", b"2")
    accessor, secret = acl.token_for(
        'key_prefix "app/" { policy = "read" }\nkey_prefix "app/secret/" { policy = "deny" }'
    )
    assert acl.call("GET", "/v1/kv/app/one", token=secret).status == 200
    denied = acl.call("GET", "/v1/kv/app/secret/two", token=secret)
    assert denied.status == 403
    assert (
        denied.body.decode()
        == f"Permission denied: token with AccessorID '{accessor}' lacks permission "
        "'key:read' on \"app/secret/two\"\n"
    )
    assert acl.call("PUT", "/v1/kv/app/one", b"x", token=secret).status == 403
    r = acl.call("GET", "/v1/kv/app/?recurse", token=secret)
    assert r.status == 200
    assert [e["Key"] for e in r.json()] == ["app/one"]
    assert r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    full = acl.call("GET", "/v1/kv/app/?recurse")
    assert "X-Consul-Results-Filtered-By-ACLs" not in full.headers
    assert len(full.json()) == 2


def test_catalog_and_health_reads_are_filtered(acl: ACLAgent) -> None:
    for name in ("web", "db"):
        acl.ok("PUT", "/v1/agent/service/register", {"Name": name, "Port": 80})
    _, secret = acl.token_for(
        'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    )
    r = acl.call("GET", "/v1/catalog/services", token=secret)
    assert r.status == 200
    assert set(r.json()) == {"web"}
    assert r.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    db = acl.call("GET", "/v1/health/service/db", token=secret)
    assert (db.status, db.json()) == (200, [])
    assert db.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    web = acl.call("GET", "/v1/health/service/web", token=secret)
    assert [row["Service"]["Service"] for row in web.json()] == ["web"]
    nodes = acl.call("GET", "/v1/catalog/nodes", token=None)  # anonymous: no node:read
    assert (nodes.status, nodes.json()) == (200, [])


def test_service_register_needs_service_write(acl: ACLAgent) -> None:
    accessor, secret = acl.token_for('service "api" { policy = "write" }')
    assert acl.call("PUT", "/v1/agent/service/register", {"Name": "api"}, secret).status == 200
    r = acl.call("PUT", "/v1/agent/service/register", {"Name": "web"}, secret)
    assert r.status == 403
    assert r.body.decode() == (
        f"Permission denied: token with AccessorID '{accessor}' lacks permission "
        "'service:write' on \"web\"\n"
    )
    assert acl.call("PUT", "/v1/agent/service/deregister/web", token=secret).status == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "rules"),
    [
        ("GET", "/v1/agent/self", None, 'agent_prefix "" { policy = "read" }'),
        ("GET", "/v1/operator/raft/configuration", None, 'operator = "read"'),
        ("GET", "/v1/connect/ca/configuration", None, 'operator = "read"'),
        ("PUT", "/v1/event/fire/deploy", b"", 'event "deploy" { policy = "write" }'),
        (
            "PUT",
            "/v1/catalog/register",
            {"Node": "ext1", "Address": "10.0.0.9"},
            'node "ext1" { policy = "write" }',
        ),
        (
            "PUT",
            "/v1/config",
            {"Kind": "service-defaults", "Name": "web", "Protocol": "http"},
            'service "web" { policy = "write" }',
        ),
        ("PUT", "/v1/config", {"Kind": "proxy-defaults", "Name": "global"}, 'mesh = "write"'),
        ("GET", "/v1/acl/tokens", None, 'acl = "read"'),
        ("PUT", "/v1/acl/policy", {"Name": "made-by-acl-writer"}, 'acl = "write"'),
        ("GET", "/v1/snapshot", None, 'acl = "write"'),
    ],
)
def test_endpoint_group_allowed_and_denied(
    acl: ACLAgent, method: str, path: str, body: Any, rules: str
) -> None:
    _, allowed = acl.token_for(rules)
    _, other = acl.token_for('key "unrelated" { policy = "read" }')
    denied = acl.call(method, path, body, other)
    assert denied.status == 403, denied.body
    assert denied.body.startswith(b"Permission denied: token with AccessorID")
    ok = acl.call(method, path, body, allowed)
    assert ok.status == 200, ok.body


def test_acl_read_hides_secrets_and_acl_api_needs_acl_rights(acl: ACLAgent) -> None:
    target, target_secret = acl.token_for('key "x" { policy = "read" }')
    _, reader = acl.token_for('acl = "read"')
    shown = acl.ok("GET", f"/v1/acl/token/{target}", token=reader)
    assert shown["SecretID"] == "<hidden>"
    assert acl.ok("GET", f"/v1/acl/token/{target}")["SecretID"] == target_secret
    assert acl.call("DELETE", f"/v1/acl/token/{target}", token=reader).status == 403
    assert acl.call("GET", "/v1/acl/policies", token=target_secret).status == 403


def test_token_crud_clone_policy_and_role(acl: ACLAgent) -> None:
    pol = acl.ok(
        "PUT", "/v1/acl/policy", {"Name": "kv-r", "Rules": 'key_prefix "" { policy = "read" }'}
    )
    assert acl.ok("GET", "/v1/acl/policy/name/kv-r")["ID"] == pol["ID"]
    role = acl.ok("PUT", "/v1/acl/role", {"Name": "readers", "Policies": [{"ID": pol["ID"]}]})
    tok = acl.ok("PUT", "/v1/acl/token", {"Description": "t1", "Roles": [{"Name": "readers"}]})
    assert tok["Roles"] == [{"ID": role["ID"], "Name": "readers"}]
    acl.ok("PUT", "/v1/kv/role-key", b"v")
    assert acl.call("GET", "/v1/kv/role-key", token=tok["SecretID"]).status == 200
    clone = acl.ok("PUT", f"/v1/acl/token/{tok['AccessorID']}/clone", {"Description": "c"})
    assert clone["SecretID"] != tok["SecretID"] and clone["Roles"] == tok["Roles"]
    listed = {t["AccessorID"] for t in acl.ok("GET", "/v1/acl/tokens")}
    assert {tok["AccessorID"], clone["AccessorID"]} <= listed
    assert {r["Name"] for r in acl.ok("GET", "/v1/acl/roles")} >= {"readers"}
    assert acl.ok("DELETE", f"/v1/acl/token/{tok['AccessorID']}") is True
    gone = acl.call("GET", "/v1/kv/role-key", token=tok["SecretID"])
    assert (gone.status, gone.body) == (403, b"ACL not found\n")


def test_malformed_rules_are_400_naming_the_resource(acl: ACLAgent) -> None:
    r = acl.call(
        "PUT", "/v1/acl/policy", {"Name": "bad", "Rules": 'service "web" { policy = "all" }'}
    )
    assert r.status == 400
    assert 'service "web"' in r.body.decode()
    assert all(p["Name"] != "bad" for p in acl.ok("GET", "/v1/acl/policies"))


def test_secrets_are_not_logged(acl: ACLAgent) -> None:
    _, secret = acl.token_for('key "z" { policy = "read" }')
    unknown = str(uuid.uuid4())
    for how in ("x", "bearer", "query"):
        acl.call("GET", "/v1/kv/z", token=secret, how=how)
        assert acl.call("GET", "/v1/kv/z", token=unknown, how=how).status == 403
    with open(acl.proc.log_path) as f:
        log = f.read()
    assert "DEBUG" in log  # the agent logs at debug level: everything it could say is here
    for s in (MGMT, secret, unknown):
        assert s not in log


def test_token_ttl_bounds_are_consuls_by_default(acl: ACLAgent) -> None:
    """1 minute to 24 hours (an expired token on every path: test_acl_expiry.py)."""
    short = acl.call("PUT", "/v1/acl/token", {"ExpirationTTL": "2s"})
    assert short.status == 400
    assert short.body.startswith(b"ExpirationTime cannot be less than 0:01:00 in the future")
    long = acl.call("PUT", "/v1/acl/token", {"ExpirationTTL": "48h"})
    assert long.status == 400 and b"cannot be more than 1 day" in long.body
    tok = acl.ok("PUT", "/v1/acl/token", {"ExpirationTTL": "1m"})
    live = acl.call("GET", "/v1/kv/anything", token=tok["SecretID"])
    assert live.status == 403 and live.body.startswith(b"Permission denied")  # not "ACL not found"
    bad = acl.call("PUT", "/v1/acl/token", {"ExpirationTTL": "-5s"})
    assert bad.status == 400


def test_unknown_ids_and_case_insensitive_bodies_as_consul(acl: ACLAgent) -> None:
    unknown = str(uuid.uuid4())
    for method in ("GET", "PUT"):
        r = acl.call(method, f"/v1/acl/token/{unknown}", {} if method == "PUT" else None)
        assert (r.status, r.body) == (403, b"ACL not found\n"), method
    assert acl.call("PUT", f"/v1/acl/token/{unknown}/clone", {}).status == 403
    for path in ("/v1/acl/token/unknown", "/v1/acl/policy/unknown", "/v1/acl/role/unknown"):
        r = acl.call("GET", path)
        assert r.status == 400 and b"must be a UUID" in r.body, path
    assert acl.call("GET", f"/v1/acl/policy/{unknown}").status == 404
    made = acl.ok(
        "PUT", "/v1/acl/policy", {"name": "lower-case", "rules": 'key "l" { policy = "read" }'}
    )
    assert made["Name"] == "lower-case" and 'key "l"' in made["Rules"]
    tok = acl.ok("PUT", "/v1/acl/token", {"description": "d", "policies": [{"ID": made["ID"]}]})
    assert tok["Description"] == "d" and tok["Policies"][0]["Name"] == "lower-case"
