"""The stateless rules of the ACL commands (rows of `meshd.validate.RULES`)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from meshd.acl.model import (
    ANONYMOUS_ACCESSOR,
    ANONYMOUS_SECRET,
    ACLPolicyOp,
    ACLRoleOp,
    ACLTemplatedPolicy,
    ACLTokenOp,
    ACLTokenReap,
)
from meshd.acl.rules import RulesError, parse_rules
from meshd.acl.templates import TemplateError
from meshd.acl.templates import check as check_template


class ValidationError(ValueError):
    """A malformed ACL command; the servers answer 400 with this text."""


# Consul's name rule for policies and roles
_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_SERVICE = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")


def _uuid(value: str, what: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{what} must be a UUID: {value!r}") from None


def _op(op: str, allowed: tuple[str, ...]) -> None:
    if op not in allowed:
        raise ValidationError(f"unknown operation {op!r}")


def _identities(row: Any) -> None:
    for s in row.ServiceIdentities:
        if not _SERVICE.match(s.ServiceName):
            raise ValidationError(f"Service identity {s.ServiceName!r} has an invalid name")
    for n in row.NodeIdentities:
        if not n.NodeName:
            raise ValidationError("Node identity is missing the node name")


def token_op(cmd: ACLTokenOp, limits: Any) -> None:
    _op(cmd.Op, ("set", "delete", "bootstrap"))
    if cmd.Op == "delete":
        _uuid(cmd.AccessorID, "AccessorID")
        return
    if cmd.Token is None:
        raise ValidationError("Token is required")
    _uuid(cmd.Token.AccessorID, "AccessorID")
    anonymous = (cmd.Token.AccessorID, cmd.Token.SecretID) == (ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET)
    if not anonymous:
        _uuid(cmd.Token.SecretID, "SecretID")
    for link in [*cmd.Token.Policies, *cmd.Token.Roles]:
        if not (link.ID or link.Name):
            raise ValidationError("a policy or role link needs an ID or a Name")
    _identities(cmd.Token)
    _templated(cmd.Token.TemplatedPolicies)


def _templated(tps: list[ACLTemplatedPolicy]) -> None:
    for tp in tps:
        try:
            check_template(tp)
        except TemplateError as e:
            raise ValidationError(str(e)) from None


def policy_op(cmd: ACLPolicyOp, limits: Any) -> None:
    _op(cmd.Op, ("set", "delete"))
    if cmd.Op == "delete":
        _uuid(cmd.ID, "ID")
        return
    if cmd.Policy is None:
        raise ValidationError("Policy is required")
    _uuid(cmd.Policy.ID, "ID")
    if not _NAME.match(cmd.Policy.Name):
        raise ValidationError(f"Invalid Policy: invalid Name {cmd.Policy.Name!r}")
    try:
        parse_rules(cmd.Policy.Rules)
    except RulesError as e:
        raise ValidationError(f"Invalid Policy: {e}") from None


def role_op(cmd: ACLRoleOp, limits: Any) -> None:
    _op(cmd.Op, ("set", "delete"))
    if cmd.Op == "delete":
        _uuid(cmd.ID, "ID")
        return
    if cmd.Role is None:
        raise ValidationError("Role is required")
    _uuid(cmd.Role.ID, "ID")
    if not _NAME.match(cmd.Role.Name):
        raise ValidationError(f"Invalid Role: invalid Name {cmd.Role.Name!r}")
    _identities(cmd.Role)
    _templated(cmd.Role.TemplatedPolicies)


def token_reap(cmd: ACLTokenReap, limits: Any) -> None:
    for accessor in cmd.AccessorIDs:
        _uuid(accessor, "AccessorID")
    if not cmd.AccessorIDs:
        raise ValidationError("no token to reap")


RULES: dict[type[Any], Callable[[Any, Any], None]] = {
    ACLTokenReap: token_reap,
    ACLTokenOp: token_op,
    ACLPolicyOp: policy_op,
    ACLRoleOp: role_op,
}
