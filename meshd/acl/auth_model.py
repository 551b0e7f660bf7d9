"""Auth methods, binding rules and the login/logout commands, in Consul's JSON field names.

`ACLLogin` and `ACLLogout` never reach Raft: a server exchanges them (after checking the bearer
token with the auth method, or the caller's token for a logout) for the `ACLTokenOp` that
creates or deletes the login token, and that command is what is admitted and replicated.
"""

from __future__ import annotations

from typing import Any

import msgspec

from meshd.acl.model import ACLTemplatedPolicyVariables

AUTH_METHOD_TYPES = ("jwt", "kubernetes")
BIND_TYPES = ("service", "node", "role", "policy", "templated-policy")


class ACLAuthMethod(msgspec.Struct):
    Name: str
    Type: str = ""
    DisplayName: str = ""
    Description: str = ""
    MaxTokenTTL: str = ""  # a duration ("10m"); "" = login tokens do not expire
    TokenLocality: str = ""  # "", "local" or "global"
    Config: dict[str, Any] = {}
    CreateIndex: int = 0
    ModifyIndex: int = 0


class ACLBindingRule(msgspec.Struct):
    ID: str
    AuthMethod: str
    Description: str = ""
    Selector: str = ""
    BindType: str = ""
    BindName: str = ""
    BindVars: ACLTemplatedPolicyVariables | None = None
    CreateIndex: int = 0
    ModifyIndex: int = 0


class ACLAuthMethodOp(msgspec.Struct, tag="acl_auth_method"):
    Op: str  # "set" or "delete" (by Name; deletes its binding rules and login tokens too)
    AuthMethod: ACLAuthMethod | None = None
    Name: str = ""


class ACLBindingRuleOp(msgspec.Struct, tag="acl_binding_rule"):
    Op: str  # "set" or "delete" (by ID)
    BindingRule: ACLBindingRule | None = None
    ID: str = ""


class ACLLogin(msgspec.Struct, tag="acl_login"):
    """A login request; the IDs and time of the token to make are chosen by the agent."""

    AuthMethod: str
    BearerToken: str
    AccessorID: str
    SecretID: str
    CreateTime: str
    Meta: dict[str, str] = {}


class ACLLogout(msgspec.Struct, tag="acl_logout"):
    """Delete the caller's own token (the one the write carries), if login made it."""
