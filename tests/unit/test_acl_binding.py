"""Binding rules: selectors over a verified identity, `${...}` names, and what each bind type
gives a login token (Consul's binder)."""

from __future__ import annotations

import uuid

import pytest

from meshd.acl.auth_model import ACLBindingRule
from meshd.acl.authmethods import kubernetes_identity
from meshd.acl.binding import BindError, Identity, bind, check_rule, interpolate
from meshd.acl.model import (
    ACLLink,
    ACLNodeIdentity,
    ACLServiceIdentity,
    ACLTemplatedPolicyVariables,
)

K8S_VARS = ["serviceaccount.namespace", "serviceaccount.name", "serviceaccount.uid"]
K8S_ROOTS = frozenset({"serviceaccount"})


def rule(bind_type: str, name: str, selector: str = "", var: str = "") -> ACLBindingRule:
    return ACLBindingRule(
        ID=str(uuid.uuid4()),
        AuthMethod="k8s",
        Selector=selector,
        BindType=bind_type,
        BindName=name,
        BindVars=ACLTemplatedPolicyVariables(Name=var) if var else None,
    )


ROLES = {"ops": "role-1"}
POLICIES = {"readers": "pol-1"}


def run(rules: list[ACLBindingRule], identity: Identity):  # type: ignore[no-untyped-def]
    return bind(rules, identity, ROLES.get, POLICIES.get, "dc1")


def test_interpolation_lowercases_and_refuses_unknown_variables() -> None:
    v = {"serviceaccount.name": "Web", "value.team": "a"}
    assert interpolate("${serviceaccount.name}-x", v) == "web-x"
    assert interpolate("${serviceaccount.name}", v, lowercase=False) == "Web"
    assert interpolate("plain", v) == "plain"
    with pytest.raises(BindError, match=r"unknown variable accessed: value\.nope"):
        interpolate("${value.nope}", v)


def test_selector_picks_the_rules_that_bind() -> None:
    identity = kubernetes_identity("default", "web", "uid-1")
    rules = [
        rule("service", "${serviceaccount.name}", "serviceaccount.name==web"),
        rule("service", "db", "serviceaccount.name==db"),
        rule("node", "node-${serviceaccount.namespace}", "serviceaccount.namespace==default"),
        rule("role", "ops", ""),  # an empty selector matches every identity
        rule("policy", "readers", "serviceaccount.name!=web"),
        rule("templated-policy", "builtin/service", "", var="${serviceaccount.name}-v2"),
        rule("service", "x", "not a selector ((("),  # matches nothing, never raises
    ]
    got = run(rules, identity)
    assert got.service_identities == [ACLServiceIdentity(ServiceName="web")]
    assert got.node_identities == [ACLNodeIdentity(NodeName="node-default", Datacenter="dc1")]
    assert got.roles == [ACLLink(ID="role-1", Name="ops")]
    assert got.policies == []
    assert [(t.TemplateName, t.TemplateVariables) for t in got.templated_policies] == [
        ("builtin/service", ACLTemplatedPolicyVariables(Name="web-v2"))
    ]


def test_nothing_matches_means_no_bindings() -> None:
    got = run(
        [rule("service", "web", "serviceaccount.name==web")], kubernetes_identity("d", "db", "u")
    )
    assert got.none()


def test_missing_role_or_policy_is_skipped() -> None:
    got = run(
        [rule("role", "ghost"), rule("policy", "readers")], kubernetes_identity("d", "w", "u")
    )
    assert got.roles == [] and got.policies == [ACLLink(ID="pol-1", Name="readers")]


def test_uppercase_projected_value_is_an_error_not_a_different_name() -> None:
    with pytest.raises(BindError, match="uppercase"):
        run([rule("service", "${serviceaccount.name}")], kubernetes_identity("d", "Web", "u"))


def test_jwt_list_claims_are_selectable() -> None:
    identity = Identity(
        fields={"value": {"team": "pay"}, "list": {"groups": ["admins", "devs"]}},
        variables={"value.team": "pay"},
    )
    rules = [rule("service", "${value.team}", '"admins" in list.groups')]
    assert run(rules, identity).service_identities == [ACLServiceIdentity(ServiceName="pay")]
    rules = [rule("service", "${value.team}", '"ops" in list.groups')]
    assert run(rules, identity).none()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (rule("service", "${serviceaccount.name}", "serviceaccount.x==((("), "Selector is invalid"),
        (rule("service", "x", "team==x"), "Selector is invalid"),  # not a field of the identity
        (rule("", "x"), "no BindType is set"),
        (rule("service", ""), "no BindName is set"),
        (rule("group", "x"), "unknown BindType 'group'"),
        (rule("service", "${value.nope}"), "unknown variable accessed: value.nope"),
        (rule("service", "Web!"), "invalid bind name"),
        (rule("templated-policy", "builtin/nope"), "does not match existing template name"),
        (rule("templated-policy", "builtin/service"), "name is required"),
    ],
)  # fmt: skip
def test_check_rule_refuses_a_rule_that_can_never_bind(bad: ACLBindingRule, message: str) -> None:
    with pytest.raises(BindError, match=message):
        check_rule(bad, K8S_VARS, K8S_ROOTS)


def test_check_rule_accepts_consuls_examples() -> None:
    check_rule(
        rule("service", "${serviceaccount.name}", "serviceaccount.namespace==default"),
        K8S_VARS,
        K8S_ROOTS,
    )
    check_rule(rule("templated-policy", "builtin/dns"), K8S_VARS, K8S_ROOTS)
    check_rule(rule("role", "ops-${serviceaccount.namespace}"), K8S_VARS, K8S_ROOTS)
