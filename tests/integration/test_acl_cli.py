"""`meshd acl ...` as a user runs it against a dev agent with ACLs on (default deny)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import pytest
from acl_helpers import ACLAgent, running_acl_agent
from helpers import run_meshd


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent(initial_management=False)


def test_bootstrap_policy_token_role_round_trip(acl: ACLAgent) -> None:
    addr = acl.proc.http
    boot = run_meshd("acl", "bootstrap", "-format=json", http_addr=addr)
    assert boot.returncode == 0, boot.stderr
    secret = json.loads(boot.stdout)["SecretID"]
    again = run_meshd("acl", "bootstrap", http_addr=addr)
    assert again.returncode != 0 and "ACL bootstrap no longer allowed" in again.stderr

    env = {"CONSUL_HTTP_TOKEN": secret}
    made = run_meshd(
        "acl", "policy", "create", "-name=web-w", "-rules=-", "-format=json",
        http_addr=addr, env=env, stdin='service "web" { policy = "write" }',
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["Name"] == "web-w"
    bad = run_meshd(
        "acl", "policy", "create", "-name=bad", '-rules=key "a" { policy = "nope" }',
        http_addr=addr, env=env,
    )  # fmt: skip
    assert bad.returncode != 0 and 'key "a"' in bad.stderr

    role = run_meshd(
        "acl", "role", "create", "-name=web", "-policy-name=web-w", "-format=json",
        http_addr=addr, env=env,
    )  # fmt: skip
    assert role.returncode == 0, role.stderr
    tok = run_meshd(
        "acl", "token", "create", "-description=web token", "-role-name=web", "-format=json",
        http_addr=addr, env=env,
    )  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    token = json.loads(tok.stdout)
    assert token["Roles"][0]["Name"] == "web"

    # the new token through -token-file: it reads itself, and may not list tokens
    fd, path = tempfile.mkstemp()
    os.write(fd, token["SecretID"].encode() + b"\n")
    os.close(fd)
    me = run_meshd("acl", "token", "read", "-self", f"-token-file={path}", http_addr=addr)
    assert me.returncode == 0, me.stderr
    assert token["AccessorID"] in me.stdout and "web token" in me.stdout
    denied = run_meshd("acl", "token", "list", f"-token-file={path}", http_addr=addr)
    assert denied.returncode != 0 and "lacks permission 'acl:read'" in denied.stderr

    listed = run_meshd("acl", "token", "list", "-format=json", http_addr=addr, env=env)
    assert token["AccessorID"] in {t["AccessorID"] for t in json.loads(listed.stdout)}
    gone = run_meshd(
        "acl", "token", "delete", f"-id={token['AccessorID']}", http_addr=addr,
        env={"MESHD_HTTP_TOKEN": secret},
    )  # fmt: skip
    assert gone.returncode == 0, gone.stderr
    after = run_meshd(
        "acl", "token", "read", "-self", f"-token={token['SecretID']}", http_addr=addr
    )
    assert after.returncode != 0 and "ACL not found" in after.stderr
    for kind, name in (("role", "web"), ("policy", "web-w")):
        assert (
            run_meshd("acl", kind, "delete", f"-name={name}", http_addr=addr, env=env).returncode
            == 0
        )
    assert "web-w" not in run_meshd("acl", "policy", "list", http_addr=addr, env=env).stdout
