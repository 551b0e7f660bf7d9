"""Binding rules: which identities, roles and policies a verified login identity is given.

Pure, as Consul's binder: an auth method turns a bearer token into an `Identity` (fields a
rule's `Selector` can test, and variables a `BindName` can interpolate as `${...}`); each rule
whose selector matches contributes one binding. Interpolated values are lower-cased (Consul's
HIL call does the same), and a name that is then not a valid identity name is an error rather
than a token with rights on a name nobody meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.acl.auth_model import BIND_TYPES, ACLBindingRule
from meshd.acl.model import (
    ACLLink,
    ACLNodeIdentity,
    ACLServiceIdentity,
    ACLTemplatedPolicy,
    ACLTemplatedPolicyVariables,
)
from meshd.acl.templates import IDENTITY_NAME, TemplateError, template
from meshd.acl.templates import check as check_template
from meshd.filter import FilterError, compile_filter

_VAR = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}")
# Consul's policy and role name rule
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")


class BindError(ValueError):
    """A binding rule that cannot produce a valid name for this identity (or any identity)."""


@dataclass
class Identity:
    """What an auth method verified: `fields` for selectors, `variables` for `${...}`."""

    fields: dict[str, Any]
    variables: dict[str, str]


@dataclass
class Bindings:
    service_identities: list[ACLServiceIdentity] = field(default_factory=list)
    node_identities: list[ACLNodeIdentity] = field(default_factory=list)
    templated_policies: list[ACLTemplatedPolicy] = field(default_factory=list)
    roles: list[ACLLink] = field(default_factory=list)
    policies: list[ACLLink] = field(default_factory=list)

    def none(self) -> bool:
        return not (
            self.service_identities
            or self.node_identities
            or self.templated_policies
            or self.roles
            or self.policies
        )


def interpolate(text: str, variables: Mapping[str, str], lowercase: bool = True) -> str:
    """`${name}` replaced by the variable's value; an unknown variable is an error (HIL's)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            raise BindError(f"error interpreting template: unknown variable accessed: {name}")
        value = variables[name]
        return value.lower() if lowercase else value

    if "${" not in text:
        return text
    out = _VAR.sub(one, text)
    if "${" in out:
        raise BindError(f"error interpreting template: cannot parse {text!r}")
    return out


def _name(text: str, variables: Mapping[str, str], valid: Callable[[str], bool]) -> str:
    computed = interpolate(text, variables)
    if not valid(computed):
        raise BindError(f"invalid bind name: {computed!r}")
    if "${" in text and interpolate(text, variables, lowercase=False) != computed:
        raise BindError(
            f"invalid bind name: the projected variables contain uppercase characters "
            f"(interpolated as {interpolate(text, variables, lowercase=False)!r} before "
            "lowercasing), but bind names for this type must be lowercase"
        )
    return computed


def _identity_name(name: str) -> bool:
    return bool(IDENTITY_NAME.match(name))


def _policy_name(name: str) -> bool:
    return bool(_POLICY_NAME.match(name))


def _templated(rule: ACLBindingRule, variables: Mapping[str, str]) -> ACLTemplatedPolicy:
    try:
        template(rule.BindName)
    except TemplateError:
        raise BindError(
            "Bind name for templated-policy bind type does not match existing template name: "
            f"{rule.BindName}"
        ) from None
    bound = None
    if rule.BindVars is not None and rule.BindVars.Name:
        bound = ACLTemplatedPolicyVariables(
            Name=_name(rule.BindVars.Name, variables, lambda _: True)
        )
    tp = ACLTemplatedPolicy(TemplateName=rule.BindName, TemplateVariables=bound)
    try:
        check_template(tp)
    except TemplateError as e:
        raise BindError(f"templated policy failed validation: {e}") from None
    return tp


def selector_matches(selector: str, fields: Mapping[str, Any]) -> bool:
    """An empty selector matches everything; one that does not parse matches nothing."""
    try:
        return compile_filter(selector)(fields)
    except FilterError:
        return False


def bind(
    rules: Iterable[ACLBindingRule],
    identity: Identity,
    role_id: Callable[[str], str | None],
    policy_id: Callable[[str], str | None],
    datacenter: str,
) -> Bindings:
    """What the matching rules grant; a role or policy that does not exist is skipped."""
    out = Bindings()
    for rule in rules:
        if not selector_matches(rule.Selector, identity.fields):
            continue
        v = identity.variables
        if rule.BindType == "service":
            out.service_identities.append(
                ACLServiceIdentity(ServiceName=_name(rule.BindName, v, _identity_name))
            )
        elif rule.BindType == "node":
            name = _name(rule.BindName, v, _identity_name)
            out.node_identities.append(ACLNodeIdentity(NodeName=name, Datacenter=datacenter))
        elif rule.BindType == "templated-policy":
            out.templated_policies.append(_templated(rule, v))
        elif rule.BindType in ("role", "policy"):
            name = _name(rule.BindName, v, _policy_name)
            found = (role_id if rule.BindType == "role" else policy_id)(name)
            if found is not None:
                links = out.roles if rule.BindType == "role" else out.policies
                links.append(ACLLink(ID=found, Name=name))
    return out


def check_rule(rule: ACLBindingRule, variable_names: Iterable[str], roots: frozenset[str]) -> None:
    """Refuse a rule that can never bind (Consul's checks, against placeholder values)."""
    if rule.Selector:
        try:
            compile_filter(rule.Selector, roots)
        except FilterError as e:
            raise BindError(f"invalid Binding Rule: Selector is invalid: {e}") from None
    if not rule.BindType:
        raise BindError("Invalid Binding Rule: no BindType is set")
    if not rule.BindName:
        raise BindError("Invalid Binding Rule: no BindName is set")
    if rule.BindType not in BIND_TYPES:
        raise BindError(f"Invalid Binding Rule: unknown BindType {rule.BindType!r}")
    fake = dict.fromkeys(variable_names, "fake")
    try:
        if rule.BindType == "templated-policy":
            _templated(rule, fake)
        else:
            valid = _identity_name if rule.BindType in ("service", "node") else _policy_name
            _name(rule.BindName, fake, valid)
    except BindError as e:
        raise BindError(f"Invalid Binding Rule: invalid BindName: {e}") from None
