"""The stateless rules of auth method, binding rule and login commands (rows of `RULES`).

What needs the state (the method a rule names, the variables its identities offer) is checked
by the servers in `server/acl_auth_state.py`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from meshd.acl.auth_model import (
    ACLAuthMethodOp,
    ACLBindingRuleOp,
    ACLLogin,
    ACLLogout,
)
from meshd.acl.authmethods import AuthMethodError, check_method
from meshd.acl.checks import ValidationError
from meshd.durations import DurationError, parse_duration_seconds

# Consul's IsValidAuthMethodName
_METHOD_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")


def _method_name(name: str) -> None:
    if not name:
        raise ValidationError("Invalid Auth Method: no Name is set")
    if not _METHOD_NAME.match(name):
        raise ValidationError(
            "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are "
            "allowed"
        )


def auth_method_op(cmd: ACLAuthMethodOp, limits: Any) -> None:
    if cmd.Op == "delete":
        _method_name(cmd.Name)
        return
    if cmd.Op != "set" or cmd.AuthMethod is None:
        raise ValidationError("an auth method set needs the AuthMethod")
    m = cmd.AuthMethod
    _method_name(m.Name)
    if m.TokenLocality not in ("", "local", "global"):
        raise ValidationError(
            "Invalid Auth Method: TokenLocality should be one of 'local' or 'global'"
        )
    if m.MaxTokenTTL:
        try:
            parse_duration_seconds(m.MaxTokenTTL)
        except DurationError as e:
            raise ValidationError(f"Invalid Auth Method: MaxTokenTTL: {e}") from None
    try:
        check_method(m)
    except AuthMethodError as e:
        raise ValidationError(str(e)) from None


def binding_rule_op(cmd: ACLBindingRuleOp, limits: Any) -> None:
    if cmd.Op == "delete":
        _uuid(cmd.ID)
        return
    if cmd.Op != "set" or cmd.BindingRule is None:
        raise ValidationError("a binding rule set needs the BindingRule")
    _uuid(cmd.BindingRule.ID)
    if not cmd.BindingRule.AuthMethod:
        raise ValidationError("Invalid Binding Rule: no AuthMethod is set")


def _uuid(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise ValidationError("Binding Rule ID invalid UUID") from None


def login(cmd: ACLLogin, limits: Any) -> None:
    if not cmd.AuthMethod:
        raise ValidationError("Invalid Login request: Missing auth method name")
    if not cmd.BearerToken:
        raise ValidationError("Invalid Login request: Missing bearer token")
    for value in (cmd.AccessorID, cmd.SecretID):
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValidationError("Invalid Login request: token IDs must be UUIDs") from None
    try:
        datetime.fromisoformat(cmd.CreateTime.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("Invalid Login request: CreateTime is not a time") from None


def _nothing(cmd: ACLLogout, limits: Any) -> None:
    """A logout names nothing: the token it deletes is the one the write carries."""


RULES: dict[type[Any], Callable[[Any, Any], None]] = {
    ACLAuthMethodOp: auth_method_op,
    ACLBindingRuleOp: binding_rule_op,
    ACLLogin: login,
    ACLLogout: _nothing,
}
