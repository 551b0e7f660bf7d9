"""Auth methods and binding rules in the replicated state: checks before apply, what a method's
deletion takes with it, and snapshots."""

from __future__ import annotations

import uuid

import pytest

from meshd.acl.auth_checks import login
from meshd.acl.auth_model import (
    ACLAuthMethod,
    ACLAuthMethodOp,
    ACLBindingRule,
    ACLBindingRuleOp,
    ACLLogin,
)
from meshd.acl.checks import ValidationError
from meshd.acl.model import ACLToken, ACLTokenOp
from meshd.server.acl_state import ACLState
from meshd.server.mesh_state import CommandRejectedError

K8S = ACLAuthMethod(
    Name="k8s",
    Type="kubernetes",
    Config={"Host": "https://k", "CACert": "x", "ServiceAccountJWT": "y"},
)


def apply(state: ACLState, cmd: object, index: int) -> object:
    return state.handlers()[type(cmd)](cmd, index, set())


def rule(method: str = "k8s", name: str = "${serviceaccount.name}") -> ACLBindingRule:
    return ACLBindingRule(
        ID=str(uuid.uuid4()), AuthMethod=method, BindType="service", BindName=name
    )


def test_rules_need_their_method_and_its_variables() -> None:
    state = ACLState()
    with pytest.raises(CommandRejectedError, match="cannot find auth method with name 'k8s'"):
        state.check(ACLBindingRuleOp(Op="set", BindingRule=rule()))
    apply(state, ACLAuthMethodOp(Op="set", AuthMethod=K8S), 1)
    with pytest.raises(CommandRejectedError, match=r"unknown variable accessed: value\.x"):
        state.check(ACLBindingRuleOp(Op="set", BindingRule=rule(name="${value.x}")))
    made = rule()
    apply(state, ACLBindingRuleOp(Op="set", BindingRule=made), 2)
    moved = ACLBindingRule(ID=made.ID, AuthMethod="other", BindType="service", BindName="x")
    apply(
        state,
        ACLAuthMethodOp(Op="set", AuthMethod=ACLAuthMethod(Name="other", Type="kubernetes")),
        3,
    )
    with pytest.raises(
        CommandRejectedError, match="AuthMethod field of an Binding Rule is immutable"
    ):
        state.check(ACLBindingRuleOp(Op="set", BindingRule=moved))
    retyped = ACLAuthMethod(Name="k8s", Type="jwt")
    with pytest.raises(CommandRejectedError, match="Type field of an Auth Method is immutable"):
        state.check(ACLAuthMethodOp(Op="set", AuthMethod=retyped))


def test_deleting_a_method_deletes_its_rules_and_login_tokens_only() -> None:
    state = ACLState()
    apply(state, ACLAuthMethodOp(Op="set", AuthMethod=K8S), 1)
    apply(state, ACLBindingRuleOp(Op="set", BindingRule=rule()), 2)
    login = ACLToken(AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()), AuthMethod="k8s")
    plain = ACLToken(AccessorID=str(uuid.uuid4()), SecretID=str(uuid.uuid4()))
    apply(state, ACLTokenOp(Op="set", Token=login), 3)
    apply(state, ACLTokenOp(Op="set", Token=plain), 4)
    apply(state, ACLAuthMethodOp(Op="delete", Name="k8s"), 5)
    assert state.auth.methods == {} and state.auth.rules == {}
    assert set(state.tokens) == {plain.AccessorID}
    assert state.token_by_secret(login.SecretID) is None


def test_snapshot_round_trip_keeps_methods_and_rules() -> None:
    state = ACLState()
    apply(state, ACLAuthMethodOp(Op="set", AuthMethod=K8S), 1)
    apply(state, ACLBindingRuleOp(Op="set", BindingRule=rule()), 2)
    copy = ACLState()
    copy.load(state.dump())
    assert copy.auth.methods == state.auth.methods
    assert copy.auth.rules == state.auth.rules
    assert copy.dump() == state.dump()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"AuthMethod": ""}, "Missing auth method name"),
        ({"BearerToken": ""}, "Missing bearer token"),
        ({"AccessorID": "x"}, "token IDs must be UUIDs"),
        ({"CreateTime": "yesterday"}, "CreateTime is not a time"),
    ],
)
def test_a_malformed_login_is_refused_before_any_lookup(
    change: dict[str, str], message: str
) -> None:
    fields = {
        "AuthMethod": "k8s",
        "BearerToken": "t",
        "AccessorID": str(uuid.uuid4()),
        "SecretID": str(uuid.uuid4()),
        "CreateTime": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(ValidationError, match=message):
        login(ACLLogin(**{**fields, **change}), None)
