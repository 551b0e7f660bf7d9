"""Templated policies expand to Consul's rules, and a bad one is refused before it is stored."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from meshd.acl import Access, build_authorizer, parse_rules
from meshd.acl.checks import ValidationError, role_op, token_op
from meshd.acl.model import (
    ACLLink,
    ACLRole,
    ACLRoleOp,
    ACLTemplatedPolicy,
    ACLTemplatedPolicyVariables,
    ACLToken,
    ACLTokenOp,
)
from meshd.acl.templates import TEMPLATES, TemplateError, from_json, rules, synthetic_policy
from meshd.server.acl_state import ACLState

R, W = Access.READ, Access.WRITE


def tp(name: str, var: str | None = None) -> ACLTemplatedPolicy:
    variables = ACLTemplatedPolicyVariables(Name=var) if var is not None else None
    return ACLTemplatedPolicy(TemplateName=name, TemplateVariables=variables)


def test_builtin_service_is_consuls_text() -> None:
    assert rules(tp("builtin/service", "api")) == (
        '\nservice "api" {\n\tpolicy = "write"\n}\nservice "api-sidecar-proxy" {\n'
        '\tpolicy = "write"\n}\nservice_prefix "" {\n\tpolicy = "read"\n}\n'
        'node_prefix "" {\n\tpolicy = "read"\n}'
    )


@pytest.mark.parametrize(
    ("template", "var", "allowed", "denied"),
    [
        (
            "builtin/service",
            "api",
            [("service", "api", W), ("service", "api-sidecar-proxy", W), ("service", "db", R),
             ("node", "n1", R)],
            [("service", "db", W), ("node", "n1", W), ("key", "k", R)],
        ),
        (
            "builtin/node",
            "n1",
            [("node", "n1", W), ("service", "db", R)],
            [("node", "n2", W), ("service", "db", W), ("node", "n2", R)],
        ),
        (
            "builtin/dns",
            None,
            [("node", "n1", R), ("service", "db", R), ("query", "q", R)],
            [("service", "db", W), ("key", "k", R)],
        ),
    ],
)  # fmt: skip
def test_expansion_grants_what_consuls_template_grants(
    template: str, var: str | None, allowed: list[Any], denied: list[Any]
) -> None:
    authz = build_authorizer(parse_rules(rules(tp(template, var))), "deny")
    for resource, name, access in allowed:
        assert authz.allowed(resource, name, access), (resource, name, access)
    for resource, name, access in denied:
        assert not authz.allowed(resource, name, access), (resource, name, access)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (tp("builtin/nope", "x"), "acl templated policy does not exist: builtin/nope"),
        (tp("builtin/service"), "name is required"),
        (tp("builtin/node", ""), "name is required"),
        # a name is spliced into HCL: a quote would add rules of its own
        (tp("builtin/service", 'x" { policy = "write" } key_prefix "'), "is invalid"),
        (tp("builtin/service", "Web"), "is invalid"),
    ],
)
def test_bad_templated_policy_is_refused(policy: ACLTemplatedPolicy, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        rules(policy)
    token = ACLToken(
        AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()), TemplatedPolicies=[policy]
    )
    with pytest.raises(ValidationError, match=message):
        token_op(ACLTokenOp(Op="set", Token=token), None)
    role = ACLRole(ID=str(uuid.uuid4()), Name="r", TemplatedPolicies=[policy])
    with pytest.raises(ValidationError, match=message):
        role_op(ACLRoleOp(Op="set", Role=role), None)


def test_json_takes_name_in_either_case_and_dns_needs_none() -> None:
    parsed = from_json(
        [
            {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "web"}},
            {"TemplateName": "builtin/node", "TemplateVariables": {"name": "n1"}},
            {"TemplateName": "builtin/dns"},
        ]
    )
    assert [(p.TemplateName, p.TemplateVariables) for p in parsed] == [
        ("builtin/service", ACLTemplatedPolicyVariables(Name="web")),
        ("builtin/node", ACLTemplatedPolicyVariables(Name="n1")),
        ("builtin/dns", None),
    ]
    with pytest.raises(TemplateError):
        from_json([{"TemplateName": "builtin/service", "TemplateVariables": "web"}])


def test_preview_policy_carries_the_rules_and_a_stable_id() -> None:
    one = synthetic_policy(tp("builtin/service", "web"))
    assert one == synthetic_policy(tp("builtin/service", "web"))
    assert one.Rules == rules(tp("builtin/service", "web"))
    assert one.Name == f"synthetic-policy-{one.ID}"
    assert one.ID != synthetic_policy(tp("builtin/service", "db")).ID
    assert set(TEMPLATES) == {"builtin/service", "builtin/node", "builtin/dns"}


def test_a_token_and_a_role_resolve_their_templated_policies() -> None:
    state = ACLState()
    role = ACLRole(ID=str(uuid.uuid4()), Name="dns", TemplatedPolicies=[tp("builtin/dns")])
    state.handlers()[ACLRoleOp](ACLRoleOp(Op="set", Role=role), 1, set())
    secret = str(uuid.uuid4())
    token = ACLToken(
        AccessorID=str(uuid.uuid4()),
        SecretID=secret,
        TemplatedPolicies=[tp("builtin/service", "web")],
        Roles=[ACLLink(ID=role.ID)],
    )
    state.handlers()[ACLTokenOp](ACLTokenOp(Op="set", Token=token), 2, set())
    resolved = state.resolve(secret)
    assert resolved is not None
    authz = build_authorizer([r for t in resolved.Rules for r in parse_rules(t)], "deny")
    assert authz.allowed("service", "web", W)
    assert authz.allowed("query", "any", R)  # from the role's builtin/dns
    assert not authz.allowed("service", "db", W)
