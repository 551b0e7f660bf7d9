"""ACL tokens, policies and roles as stored and as Consul's API shows them, and their commands.

Field names are Consul's JSON names (the same struct is the Raft payload, the row and the HTTP
body). IDs, secrets and times are chosen by the agent that receives the request, never by
`apply`, so every server stores the same values.
"""

from __future__ import annotations

import time

import msgspec

from meshd.acl.expiry import epoch

MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000001"
MANAGEMENT_POLICY_NAME = "global-management"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET = "anonymous"  # Consul's: the anonymous token's SecretID


class ACLLink(msgspec.Struct, omit_defaults=True):
    """A reference from a token or role to a policy or role: by ID, or by Name on input."""

    ID: str = ""
    Name: str = ""


class ACLServiceIdentity(msgspec.Struct, omit_defaults=True):
    ServiceName: str
    Datacenters: list[str] = []


class ACLNodeIdentity(msgspec.Struct):
    NodeName: str
    Datacenter: str = ""


class ACLTemplatedPolicyVariables(msgspec.Struct, omit_defaults=True):
    """Consul's JSON spells the one variable `name` in lower case (Go decodes either case)."""

    Name: str = msgspec.field(default="", name="name")


class ACLTemplatedPolicy(msgspec.Struct, omit_defaults=True):
    TemplateName: str
    TemplateVariables: ACLTemplatedPolicyVariables | None = None
    Datacenters: list[str] = []


class ACLToken(msgspec.Struct):
    AccessorID: str
    SecretID: str
    Description: str = ""
    Policies: list[ACLLink] = []
    Roles: list[ACLLink] = []
    ServiceIdentities: list[ACLServiceIdentity] = []
    NodeIdentities: list[ACLNodeIdentity] = []
    TemplatedPolicies: list[ACLTemplatedPolicy] = []
    AuthMethod: str = ""  # set on tokens made by /v1/acl/login: only those may log out
    Local: bool = False
    ExpirationTTL: str = ""
    ExpirationTime: str = ""
    CreateTime: str = ""
    CreateIndex: int = 0
    ModifyIndex: int = 0


class ACLPolicy(msgspec.Struct):
    ID: str
    Name: str
    Description: str = ""
    Rules: str = ""
    Datacenters: list[str] = []
    CreateIndex: int = 0
    ModifyIndex: int = 0


class ACLRole(msgspec.Struct):
    ID: str
    Name: str
    Description: str = ""
    Policies: list[ACLLink] = []
    ServiceIdentities: list[ACLServiceIdentity] = []
    NodeIdentities: list[ACLNodeIdentity] = []
    TemplatedPolicies: list[ACLTemplatedPolicy] = []
    CreateIndex: int = 0
    ModifyIndex: int = 0


class ACLTokenOp(msgspec.Struct, tag="acl_token"):
    """Op: "set" (create or update), "delete" (by AccessorID) or "bootstrap" (once ever)."""

    Op: str
    Token: ACLToken | None = None
    AccessorID: str = ""


class ACLPolicyOp(msgspec.Struct, tag="acl_policy"):
    Op: str  # "set" or "delete"
    Policy: ACLPolicy | None = None
    ID: str = ""


class ACLRoleOp(msgspec.Struct, tag="acl_role"):
    Op: str  # "set" or "delete"
    Role: ACLRole | None = None
    ID: str = ""


class ACLTokenReap(msgspec.Struct, tag="acl_token_reap"):
    """The leader's verdict on expired tokens (servers only): apply drops each listed token
    whose ExpirationTime is at or before `Now` (epoch seconds, chosen by the leader), so every
    server drops the same ones whatever its own clock says."""

    AccessorIDs: list[str]
    Now: float


class ResolvedToken(msgspec.Struct):
    """What an agent needs to authorise a token: its accessor and every rule text it carries."""

    AccessorID: str
    Management: bool = False
    Rules: list[str] = []
    ExpirationTime: str = ""


def expired(expiration_time: str, now: float | None = None) -> bool:
    expires = epoch(expiration_time)
    return expires is not None and expires <= (time.time() if now is None else now)
