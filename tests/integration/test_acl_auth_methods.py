"""Templated policies, auth methods, binding rules, login and logout on a real `meshd agent -dev`
with ACLs on (default deny): each endpoint allowed and denied, a Kubernetes pod's login against
a stand-in API server over TLS (TokenReview), a JWT login, and bad input that changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from acl_helpers import ACLAgent, running_acl_agent
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from k8s_tokenreview import TokenReviewServer

JWT_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
JWT_PEM = (
    JWT_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


@pytest.fixture(scope="module")
def acl() -> Iterator[ACLAgent]:
    yield from running_acl_agent()


@pytest.fixture(scope="module")
def k8s() -> Iterator[TokenReviewServer]:
    server = TokenReviewServer().start()
    server.add_account("default", "web")
    server.add_account("default", "db")
    server.add_account("default", "renamed", {"consul.hashicorp.com/service-name": "api"})
    try:
        yield server
    finally:
        server.stop()


def snapshot(acl: ACLAgent) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    return tuple(
        sorted(str(row) for row in acl.ok("GET", path))
        for path in ("/v1/acl/tokens", "/v1/acl/auth-methods", "/v1/acl/binding-rules")
    )


def kube_method(acl: ACLAgent, k8s: TokenReviewServer, name: str) -> None:
    acl.ok(
        "PUT",
        "/v1/acl/auth-method",
        {
            "Name": name,
            "Type": "kubernetes",
            "Config": {
                "Host": k8s.url,
                "CACert": k8s.ca_pem,
                "ServiceAccountJWT": k8s.reviewer_jwt,
            },
        },
    )


def login(acl: ACLAgent, method: str, bearer: str) -> Any:
    return acl.call("POST", "/v1/acl/login", {"AuthMethod": method, "BearerToken": bearer}, None)


def register(acl: ACLAgent, name: str, secret: str) -> int:
    return acl.call("PUT", "/v1/agent/service/register", {"Name": name}, secret).status


# ---- templated policies -----------------------------------------------------------------------


def test_templated_policy_endpoints_need_acl_read(acl: ACLAgent) -> None:
    listing = acl.ok("GET", "/v1/acl/templated-policies")
    assert set(listing) == {"builtin/service", "builtin/node", "builtin/dns"}
    one = acl.ok("GET", "/v1/acl/templated-policy/name/builtin/service")
    assert one["TemplateName"] == "builtin/service" and '"{{.Name}}"' in one["Template"]
    preview = acl.ok("POST", "/v1/acl/templated-policy/preview/builtin/service", {"Name": "api"})
    assert 'service "api-sidecar-proxy"' in preview["Rules"]
    assert preview["Description"].endswith("builtin/service")
    missing = acl.call("POST", "/v1/acl/templated-policy/preview/builtin/node", {})
    assert missing.status == 400 and "name is required" in missing.body.decode()
    assert acl.call("GET", "/v1/acl/templated-policy/name/builtin/nope").status == 404
    unknown = acl.call("POST", "/v1/acl/templated-policy/preview/builtin/nope", {"Name": "x"})
    assert unknown.status == 400 and "does not exist" in unknown.body.decode()

    _, reader = acl.token_for('acl = "read"')
    _, nobody = acl.token_for('key "x" { policy = "read" }')
    for method, path, body in (
        ("GET", "/v1/acl/templated-policies", None),
        ("GET", "/v1/acl/templated-policy/name/builtin/dns", None),
        ("POST", "/v1/acl/templated-policy/preview/builtin/dns", {}),
    ):
        assert acl.call(method, path, body, reader).status == 200, path
        denied = acl.call(method, path, body, nobody)
        assert denied.status == 403 and "lacks permission 'acl:read'" in denied.body.decode()


def test_token_with_templated_policy_gets_its_rights(acl: ACLAgent) -> None:
    policy = {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "tp-web"}}
    tok = acl.ok("PUT", "/v1/acl/token", {"TemplatedPolicies": [policy]})
    assert tok["TemplatedPolicies"] == [
        {"TemplateName": "builtin/service", "TemplateVariables": {"name": "tp-web"}}
    ]
    assert register(acl, "tp-web", tok["SecretID"]) == 200
    assert register(acl, "tp-db", tok["SecretID"]) == 403


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ([{"TemplateName": "builtin/nope"}], "acl templated policy does not exist"),
        ([{"TemplateName": "builtin/service"}], "name is required"),
        ([{"TemplateName": "builtin/service", "TemplateVariables": {"Name": 'a"b'}}], "invalid"),
    ],
)
def test_bad_templated_policy_is_400_and_writes_nothing(
    acl: ACLAgent, policies: list[Any], message: str
) -> None:
    before = snapshot(acl)
    r = acl.call("PUT", "/v1/acl/token", {"TemplatedPolicies": policies})
    assert r.status == 400 and message in r.body.decode(), r.body
    assert (
        acl.call("PUT", "/v1/acl/role", {"Name": "r1", "TemplatedPolicies": policies}).status == 400
    )
    assert snapshot(acl) == before


# ---- auth methods and binding rules -----------------------------------------------------------


def test_auth_method_and_binding_rule_crud_allowed_and_denied(acl: ACLAgent) -> None:
    method = {"Name": "jwt-crud", "Type": "jwt", "Config": {"JWTValidationPubKeys": [JWT_PEM]}}
    _, reader = acl.token_for('acl = "read"')
    before = snapshot(acl)
    denied = acl.call("PUT", "/v1/acl/auth-method", method, reader)
    assert denied.status == 403 and "lacks permission 'acl:write'" in denied.body.decode()
    assert acl.call("PUT", "/v1/acl/auth-method", method, None).status == 403
    assert snapshot(acl) == before

    made = acl.ok("PUT", "/v1/acl/auth-method", {**method, "Description": "d1"})
    assert (made["Name"], made["Type"], made["Description"]) == ("jwt-crud", "jwt", "d1")
    assert acl.ok("GET", "/v1/acl/auth-method/jwt-crud", token=reader)["Config"] == method["Config"]
    stubs = acl.ok("GET", "/v1/acl/auth-methods", token=reader)
    assert [s["Name"] for s in stubs if s["Name"] == "jwt-crud"] == ["jwt-crud"]
    assert all("Config" not in s for s in stubs)
    assert acl.call("GET", "/v1/acl/auth-method/jwt-crud", token=None).status == 403
    updated = acl.ok("PUT", "/v1/acl/auth-method/jwt-crud", {**method, "Description": "d2"})
    assert updated["Description"] == "d2" and updated["CreateIndex"] == made["CreateIndex"]
    retype = acl.call("PUT", "/v1/acl/auth-method/jwt-crud", {**method, "Type": "kubernetes"})
    assert retype.status == 400
    assert acl.call("PUT", "/v1/acl/auth-method/jwt-crud", method, reader).status == 403

    rule_body = {
        "AuthMethod": "jwt-crud",
        "Selector": "value.service==web",
        "BindType": "service",
        "BindName": "${value.service}",
    }
    # the method maps no claim yet: ${value.service} is not a variable of its identities
    assert acl.call("PUT", "/v1/acl/binding-rule", rule_body).status == 400
    acl.ok(
        "PUT",
        "/v1/acl/auth-method/jwt-crud",
        {**method, "Config": {**method["Config"], "ClaimMappings": {"svc": "service"}}},
    )
    assert acl.call("PUT", "/v1/acl/binding-rule", rule_body, reader).status == 403
    rule = acl.ok("PUT", "/v1/acl/binding-rule", rule_body)
    assert uuid.UUID(rule["ID"]) and rule["BindName"] == "${value.service}"
    assert acl.ok("GET", f"/v1/acl/binding-rule/{rule['ID']}", token=reader)["ID"] == rule["ID"]
    assert [r["ID"] for r in acl.ok("GET", "/v1/acl/binding-rules?authmethod=jwt-crud")] == [
        rule["ID"]
    ]
    assert acl.ok("GET", "/v1/acl/binding-rules?authmethod=other") == []
    changed = acl.ok("PUT", f"/v1/acl/binding-rule/{rule['ID']}", {**rule_body, "BindType": "node"})
    assert changed["BindType"] == "node"
    assert acl.call("DELETE", f"/v1/acl/binding-rule/{rule['ID']}", token=reader).status == 403
    assert acl.ok("DELETE", f"/v1/acl/binding-rule/{rule['ID']}") is True
    assert acl.call("GET", f"/v1/acl/binding-rule/{rule['ID']}").status == 404
    assert acl.call("DELETE", "/v1/acl/auth-method/jwt-crud", token=reader).status == 403
    assert acl.ok("DELETE", "/v1/acl/auth-method/jwt-crud") is True
    assert acl.call("GET", "/v1/acl/auth-method/jwt-crud").status == 404


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/acl/auth-method", {"Name": "x", "Type": "ldap"}, "Type should be one of"),
        ("/v1/acl/auth-method", {"Name": "x", "Type": "jwt", "Config": {}}, "exactly one of"),
        ("/v1/acl/auth-method", {"Name": "bad name", "Type": "jwt"}, "invalid Name"),
        ("/v1/acl/auth-method", {"Name": "k", "Type": "kubernetes", "Config": {"Host": "h"}},
         "Config.CACert is required"),
        ("/v1/acl/binding-rule", {"AuthMethod": "ghost", "BindType": "service", "BindName": "x"},
         "cannot find auth method"),
        ("/v1/acl/binding-rule", {"BindType": "service", "BindName": "x"}, "no AuthMethod is set"),
    ],
)  # fmt: skip
def test_bad_auth_method_or_rule_is_400_and_writes_nothing(
    acl: ACLAgent, path: str, body: Any, message: str
) -> None:
    before = snapshot(acl)
    r = acl.call("PUT", path, body)
    assert r.status == 400 and message in r.body.decode(), r.body
    assert snapshot(acl) == before


# ---- login and logout -------------------------------------------------------------------------


def test_kubernetes_login_logout(acl: ACLAgent, k8s: TokenReviewServer) -> None:
    kube_method(acl, k8s, "k8s")
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {
            "AuthMethod": "k8s",
            "Selector": "serviceaccount.name==web",
            "BindType": "service",
            "BindName": "${serviceaccount.name}",
        },
    )
    reviews = k8s.reviews
    r = login(acl, "k8s", k8s.issue("default", "web"))
    assert r.status == 200, r.body
    token = r.json()
    assert k8s.reviews == reviews + 1  # the servers asked the API server
    assert token["AuthMethod"] == "k8s" and token["Local"] is True
    assert token["ServiceIdentities"] == [{"ServiceName": "web"}]
    assert token["Description"] == "token created via login"
    assert register(acl, "web", token["SecretID"]) == 200
    assert register(acl, "db", token["SecretID"]) == 403
    listed = acl.ok("GET", "/v1/acl/tokens?authmethod=k8s")
    assert [t["AccessorID"] for t in listed] == [token["AccessorID"]]

    # a regular token may not log out; nor may no token at all
    _, plain = acl.token_for('key "x" { policy = "read" }')
    refused = acl.call("POST", "/v1/acl/logout", token=plain)
    assert refused.status == 403 and refused.body.decode().startswith("Permission denied")
    assert acl.call("GET", "/v1/acl/token/self", token=plain).status == 200
    assert acl.call("POST", "/v1/acl/logout", token=None).status == 403

    assert acl.call("POST", "/v1/acl/logout", token=token["SecretID"]).status == 200
    gone = acl.call("GET", "/v1/acl/token/self", token=token["SecretID"])
    assert (gone.status, gone.body) == (403, b"ACL not found\n")


def test_kubernetes_login_refusals_change_nothing(acl: ACLAgent, k8s: TokenReviewServer) -> None:
    kube_method(acl, k8s, "k8s-refuse")
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {
            "AuthMethod": "k8s-refuse",
            "Selector": "serviceaccount.name==web",
            "BindType": "service",
            "BindName": "${serviceaccount.name}",
        },
    )
    before = snapshot(acl)
    forged = jwt.encode({"sub": "system:serviceaccount:default:web"}, OTHER_KEY, algorithm="ES256")
    for bearer in (forged, "not-a-jwt"):
        r = login(acl, "k8s-refuse", bearer)
        assert r.status == 403 and r.body.decode().startswith("Permission denied"), r.body
    nomatch = login(acl, "k8s-refuse", k8s.issue("default", "db"))
    assert nomatch.status == 403
    assert "no binding rules matched" in nomatch.body.decode()
    ghost = login(acl, "ghost", k8s.issue("default", "web"))
    assert ghost.status == 403 and ghost.body.decode().startswith("ACL not found")
    bad = acl.call("POST", "/v1/acl/login", {"AuthMethod": "k8s-refuse"}, None)
    assert bad.status == 400 and "Missing bearer token" in bad.body.decode()
    assert snapshot(acl) == before


def test_service_name_annotation_overrides_the_account_name(
    acl: ACLAgent, k8s: TokenReviewServer
) -> None:
    kube_method(acl, k8s, "k8s-annotated")
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {
            "AuthMethod": "k8s-annotated",
            "BindType": "service",
            "BindName": "${serviceaccount.name}",
        },
    )
    token = login(acl, "k8s-annotated", k8s.issue("default", "renamed")).json()
    assert token["ServiceIdentities"] == [{"ServiceName": "api"}]


def jwt_for(key: Any = JWT_KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.example", "aud": "meshd", "iat": now, "exp": now + 300}
    body.update({"service": "pay", **claims})
    return jwt.encode(body, key, algorithm="ES256")


def test_jwt_login_with_templated_policy_binding(acl: ACLAgent) -> None:
    acl.ok(
        "PUT",
        "/v1/acl/auth-method",
        {
            "Name": "idp",
            "Type": "jwt",
            "MaxTokenTTL": "10m",
            "Config": {
                "JWTValidationPubKeys": [JWT_PEM],
                "JWTSupportedAlgs": ["ES256"],
                "BoundIssuer": "https://idp.example",
                "BoundAudiences": ["meshd"],
                "ClaimMappings": {"service": "service"},
            },
        },
    )
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {
            "AuthMethod": "idp",
            "BindType": "templated-policy",
            "BindName": "builtin/service",
            "BindVars": {"Name": "${value.service}"},
        },
    )
    before = snapshot(acl)
    now = int(time.time())
    for bad in (
        jwt_for(iat=now - 7200, exp=now - 3600),
        jwt_for(iss="https://evil.example"),
        jwt_for(aud="other"),
        jwt_for(OTHER_KEY),
    ):
        r = login(acl, "idp", bad)
        assert r.status == 403 and r.body.decode().startswith("Permission denied"), r.body
    assert snapshot(acl) == before

    r = acl.call(
        "POST",
        "/v1/acl/login",
        {"AuthMethod": "idp", "BearerToken": jwt_for(), "Meta": {"host": "h1"}},
        None,
    )
    assert r.status == 200, r.body
    token = r.json()
    assert token["TemplatedPolicies"] == [
        {"TemplateName": "builtin/service", "TemplateVariables": {"name": "pay"}}
    ]
    assert token["ExpirationTTL"] == "10m" and token["ExpirationTime"]
    assert token["Description"] == 'token created via login: {"host":"h1"}'
    assert register(acl, "pay", token["SecretID"]) == 200
    assert register(acl, "web", token["SecretID"]) == 403

    # deleting the method deletes its rules and the tokens its logins made
    acl.ok("DELETE", "/v1/acl/auth-method/idp")
    assert acl.ok("GET", "/v1/acl/binding-rules?authmethod=idp") == []
    gone = acl.call("GET", "/v1/acl/token/self", token=token["SecretID"])
    assert (gone.status, gone.body) == (403, b"ACL not found\n")


def test_jwt_login_with_keys_from_a_jwks_url(acl: ACLAgent, k8s: TokenReviewServer) -> None:
    """Consul's JWT method on Kubernetes' own issuer: keys from the API server's JWKS, over TLS."""
    acl.ok(
        "PUT",
        "/v1/acl/auth-method",
        {
            "Name": "k8s-oidc",
            "Type": "jwt",
            "Config": {
                "JWKSURL": f"{k8s.url}/openid/v1/jwks",
                "JWKSCACert": k8s.ca_pem,
                "BoundIssuer": "https://kubernetes.default.svc.cluster.local",
                "BoundAudiences": ["https://kubernetes.default.svc.cluster.local"],
                "ClaimMappings": {"/kubernetes.io/serviceaccount/name": "sa"},
            },
        },
    )
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {"AuthMethod": "k8s-oidc", "BindType": "service", "BindName": "${value.sa}"},
    )
    r = login(acl, "k8s-oidc", k8s.issue("default", "web"))
    assert r.status == 200, r.body
    assert r.json()["ServiceIdentities"] == [{"ServiceName": "web"}]
    forged = jwt.encode({"iss": "x", "iat": int(time.time())}, OTHER_KEY, algorithm="ES256")
    denied = login(acl, "k8s-oidc", forged)
    assert denied.status == 403 and denied.body.decode().startswith("Permission denied")


def test_kubernetes_reviewer_without_rights_fails_the_login(
    acl: ACLAgent, k8s: TokenReviewServer
) -> None:
    """The method's own ServiceAccountJWT must be allowed to create TokenReviews."""
    acl.ok(
        "PUT",
        "/v1/acl/auth-method",
        {
            "Name": "k8s-weak-reviewer",
            "Type": "kubernetes",
            "Config": {
                "Host": k8s.url,
                "CACert": k8s.ca_pem,
                "ServiceAccountJWT": k8s.issue("default", "db"),  # not the reviewer
            },
        },
    )
    acl.ok(
        "PUT",
        "/v1/acl/binding-rule",
        {"AuthMethod": "k8s-weak-reviewer", "BindType": "service", "BindName": "web"},
    )
    before = snapshot(acl)
    r = login(acl, "k8s-weak-reviewer", k8s.issue("default", "web"))
    assert r.status == 403
    assert "the Kubernetes API answered 403" in r.body.decode()
    assert snapshot(acl) == before
