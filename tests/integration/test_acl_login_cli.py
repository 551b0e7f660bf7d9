"""`meshd acl templated-policy|auth-method|binding-rule`, `meshd login` and `meshd logout` as a
user runs them against a dev agent with ACLs on, with a stand-in Kubernetes API server."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from acl_helpers import MGMT, ACLAgent, running_acl_agent
from helpers import run_meshd
from k8s_tokenreview import TokenReviewServer

ENV = {"CONSUL_HTTP_TOKEN": MGMT}


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent()


@pytest.fixture(scope="module")
def k8s() -> Iterator[TokenReviewServer]:
    server = TokenReviewServer().start()
    server.add_account("default", "web")
    try:
        yield server
    finally:
        server.stop()


def meshd(acl: ACLAgent, *args: str, env: dict[str, str] | None = None) -> Any:
    r = run_meshd(*args, http_addr=acl.proc.http, env=ENV if env is None else env)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout) if "-format=json" in args else r.stdout


def write(text: str) -> str:
    fd, path = tempfile.mkstemp()
    os.write(fd, text.encode())
    os.close(fd)
    return path


def test_templated_policy_commands(acl: ACLAgent) -> None:
    listed = meshd(acl, "acl", "templated-policy", "list", "-format=json")
    assert set(listed) == {"builtin/service", "builtin/node", "builtin/dns"}
    assert "query_prefix" in meshd(acl, "acl", "templated-policy", "read", "-name=builtin/dns")
    preview = meshd(
        acl, "acl", "templated-policy", "preview", "-name=builtin/service", "-var=name:web",
        "-format=json",
    )  # fmt: skip
    assert 'service "web-sidecar-proxy"' in preview["Rules"]
    tok = meshd(
        acl, "acl", "token", "create", "-templated-policy=builtin/node", "-var=name:n1",
        "-format=json",
    )  # fmt: skip
    assert tok["TemplatedPolicies"][0]["TemplateVariables"] == {"name": "n1"}
    bad = run_meshd(
        "acl", "token", "create", "-templated-policy=builtin/node", http_addr=acl.proc.http, env=ENV
    )
    assert bad.returncode != 0 and "name is required" in bad.stderr


def test_auth_method_binding_rule_login_logout(acl: ACLAgent, k8s: TokenReviewServer) -> None:
    anonymous = run_meshd(
        "acl", "auth-method", "create", "-type=jwt", "-name=x", http_addr=acl.proc.http,
        env={"CONSUL_HTTP_TOKEN": ""},
    )  # fmt: skip
    assert anonymous.returncode != 0 and "lacks permission 'acl:write'" in anonymous.stderr

    method = meshd(
        acl, "acl", "auth-method", "create", "-type=kubernetes", "-name=minikube",
        f"-kubernetes-host={k8s.url}", f"-kubernetes-ca-cert=@{write(k8s.ca_pem)}",
        f"-kubernetes-service-account-jwt={k8s.reviewer_jwt}", "-description=pods",
        "-format=json",
    )  # fmt: skip
    assert (method["Type"], method["Config"]["CACert"]) == ("kubernetes", k8s.ca_pem)
    assert "pods" in meshd(acl, "acl", "auth-method", "read", "-name=minikube")
    updated = meshd(
        acl, "acl", "auth-method", "update", "-name=minikube", "-description=all pods",
        "-format=json",
    )  # fmt: skip
    assert updated["Description"] == "all pods" and updated["Config"]["Host"] == k8s.url
    listed = meshd(acl, "acl", "auth-method", "list", "-format=json")
    assert [m["Name"] for m in listed] == ["minikube"]

    rule = meshd(
        acl, "acl", "binding-rule", "create", "-method=minikube", "-bind-type=service",
        "-bind-name=${serviceaccount.name}", "-selector=serviceaccount.name==web",
        "-format=json",
    )  # fmt: skip
    assert rule["Selector"] == "serviceaccount.name==web"
    rules = meshd(acl, "acl", "binding-rule", "list", "-method=minikube", "-format=json")
    assert [r["ID"] for r in rules] == [rule["ID"]]
    assert "serviceaccount.name==web" in meshd(
        acl, "acl", "binding-rule", "read", f"-id={rule['ID']}"
    )
    changed = meshd(
        acl, "acl", "binding-rule", "update", f"-id={rule['ID']}", "-description=web pods",
        "-format=json",
    )  # fmt: skip
    assert (changed["Description"], changed["BindType"]) == ("web pods", "service")

    sink = os.path.join(tempfile.mkdtemp(), "token")
    bearer = write(k8s.issue("default", "web"))
    meshd(
        acl, "login", "-method=minikube", f"-bearer-token-file={bearer}",
        f"-token-sink-file={sink}", "-meta=pod=web-1",
    )  # fmt: skip
    assert stat.S_IMODE(os.stat(sink).st_mode) == 0o600
    own = {"CONSUL_HTTP_TOKEN_FILE": sink, "CONSUL_HTTP_TOKEN": ""}
    me = meshd(acl, "acl", "token", "read", "-self", "-format=json", env=own)
    assert me["AuthMethod"] == "minikube"
    assert me["Description"] == 'token created via login: {"pod":"web-1"}'
    meshd(acl, "logout", env=own)
    gone = run_meshd("acl", "token", "read", "-self", http_addr=acl.proc.http, env=own)
    assert gone.returncode != 0 and "ACL not found" in gone.stderr

    refused = run_meshd(
        "login", "-method=minikube", f"-bearer-token-file={write('not-a-jwt')}",
        f"-token-sink-file={sink}.2", http_addr=acl.proc.http,
    )  # fmt: skip
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert not os.path.exists(sink + ".2")

    meshd(acl, "acl", "binding-rule", "delete", f"-id={rule['ID']}")
    meshd(acl, "acl", "auth-method", "delete", "-name=minikube")
    assert meshd(acl, "acl", "auth-method", "list", "-format=json") == []
