"""Intentions under ACLs: writes need `intentions = "write"` on the destination (a service's
write policy implies only read), reads are filtered, and with no matching intention the
default follows the ACL default policy (deny here; allow with ACLs off: test_cli_mesh)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from acl_helpers import ACLAgent, running_acl_agent

INTENTION_WRITER = 'service "api" { policy = "read" intentions = "write" }'


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent()


def _exact(src: str, dst: str) -> str:
    return f"/v1/connect/intentions/exact?source={src}&destination={dst}"


def test_intention_writes_need_intentions_write_on_the_destination(acl: ACLAgent) -> None:
    _, writer = acl.token_for(INTENTION_WRITER)
    _, service_writer = acl.token_for('service "api" { policy = "write" }')
    assert acl.call("PUT", _exact("web", "api"), {"Action": "allow"}, writer).status == 200
    refusals = [
        ("PUT", _exact("web", "db"), {"Action": "allow"}, writer, "db"),
        ("DELETE", _exact("web", "db"), None, writer, "db"),
        ("POST", "/v1/connect/intentions", {"SourceName": "x", "DestinationName": "db",
                                            "Action": "allow"}, writer, "db"),
        ("PUT", "/v1/config", {"Kind": "service-intentions", "Name": "db",
                               "Sources": [{"Name": "web", "Action": "allow"}]}, writer, "db"),
        # service:write implies intentions:read only (Consul)
        ("PUT", _exact("web", "api"), {"Action": "deny"}, service_writer, "api"),
        ("DELETE", _exact("web", "api"), None, service_writer, "api"),
        ("PUT", _exact("web", "api"), {"Action": "deny"}, None, "api"),
    ]  # fmt: skip
    for method, path, body, token, dst in refusals:
        r = acl.call(method, path, body, token)
        assert r.status == 403, (method, path, r.body)
        assert f"lacks permission 'intention:write' on \"{dst}\"".encode() in r.body
    got = acl.ok("GET", _exact("web", "api"))
    assert got["Action"] == "allow"  # nothing the refused requests asked for happened
    assert acl.call("GET", _exact("web", "db")).status == 404
    body = {"SourceName": "x", "DestinationName": "api", "Action": "allow"}
    r = acl.call("POST", "/v1/connect/intentions", body, writer)
    assert r.status == 200 and r.json()["ID"]


def test_intention_reads_are_filtered_and_checked_per_destination(acl: ACLAgent) -> None:
    acl.ok("PUT", _exact("web", "api"), {"Action": "allow"})
    acl.ok("PUT", _exact("web", "secret"), {"Action": "allow"})
    _, reader = acl.token_for('service "api" { policy = "read" }')
    listed = acl.call("GET", "/v1/connect/intentions", token=reader)
    assert listed.status == 200
    assert {i["DestinationName"] for i in listed.json()} == {"api"}
    assert listed.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
    assert acl.call("GET", _exact("web", "secret"), token=reader).status == 403
    check = "/v1/connect/intentions/check?source=web&destination=secret"
    assert acl.call("GET", check, token=reader).status == 403
    match = "/v1/connect/intentions/match?by=destination&name=api&name=secret"
    r = acl.call("GET", match, token=reader)
    assert r.status == 403 and b"'intention:read' on \"secret\"" in r.body
    ok = acl.call("GET", "/v1/connect/intentions/match?by=destination&name=api", token=reader)
    assert ok.status == 200 and "web" in [i["SourceName"] for i in ok.json()["api"]]


def test_default_intention_follows_the_acl_default_policy(acl: ACLAgent) -> None:
    check = acl.ok("GET", "/v1/connect/intentions/check?source=nobody&destination=lonely")
    assert check == {"Allowed": False}  # no intention, ACLs default deny: denied
    acl.ok("PUT", _exact("nobody", "lonely"), {"Action": "allow"})
    check = acl.ok("GET", "/v1/connect/intentions/check?source=nobody&destination=lonely")
    assert check == {"Allowed": True}
