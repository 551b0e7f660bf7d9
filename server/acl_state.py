"""Replicated ACL tokens, policies and roles: apply, snapshots, reads and token resolution.

Apply is total and deterministic: references by name are resolved against the state at apply
time (and refused before proposing by `check_references`, the same function), IDs and secrets
come in the command. Resolution (`resolve`) flattens a token into rule texts, which is the one
read an agent makes to authorise a token; the agent compiles and caches the result.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import msgspec

from meshd import queries as q
from meshd.acl import templates
from meshd.acl.auth_model import ACLAuthMethod, ACLAuthMethodOp, ACLBindingRule, ACLBindingRuleOp
from meshd.acl.expiry import epoch
from meshd.acl.model import (
    ANONYMOUS_ACCESSOR,
    MANAGEMENT_POLICY_ID,
    MANAGEMENT_POLICY_NAME,
    ACLLink,
    ACLPolicy,
    ACLPolicyOp,
    ACLRole,
    ACLRoleOp,
    ACLTemplatedPolicy,
    ACLToken,
    ACLTokenOp,
    ACLTokenReap,
    ResolvedToken,
)
from meshd.server import acl_auth_state
from meshd.server.acl_auth_state import AuthTables
from meshd.server.mesh_state import CommandRejectedError

replace = msgspec.structs.replace
TOKENS, POLICIES, ROLES = "tbl:acl_tokens", "tbl:acl_policies", "tbl:acl_roles"
_TOPICS = [TOKENS, POLICIES, ROLES]


class BootstrapDoneError(CommandRejectedError):
    """A second bootstrap: Consul answers 403 with the reset index."""


def service_identity_rules(name: str) -> str:
    """Consul's synthetic policy for a service identity: the service, its sidecar, discovery."""
    return (
        f'service "{name}" {{ policy = "write" }}\n'
        f'service "{name}-sidecar-proxy" {{ policy = "write" }}\n'
        'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'
    )


def node_identity_rules(name: str) -> str:
    return f'node "{name}" {{ policy = "write" }}\nservice_prefix "" {{ policy = "read" }}\n'


class _Snap(msgspec.Struct):
    tokens: list[ACLToken] = []
    policies: list[ACLPolicy] = []
    roles: list[ACLRole] = []
    bootstrap_index: int = 0
    auth_methods: list[ACLAuthMethod] = []
    binding_rules: list[ACLBindingRule] = []


class ACLState:
    def __init__(self) -> None:
        self.tokens: dict[str, ACLToken] = {}  # by AccessorID
        self.by_secret: dict[str, str] = {}  # SecretID -> AccessorID
        self.policies: dict[str, ACLPolicy] = {}
        self.roles: dict[str, ACLRole] = {}
        self.bootstrap_index = 0
        self.auth = AuthTables(self._drop_login_tokens)

    # ---- references ----------------------------------------------------------------------

    def _link(self, link: ACLLink, table: dict[str, Any], what: str) -> ACLLink:
        if link.ID:
            row = table.get(link.ID)
        else:
            row = next((r for r in table.values() if r.Name == link.Name), None)
        if row is None:
            raise CommandRejectedError(f"cannot find {what} {link.ID or link.Name!r}")
        return ACLLink(ID=row.ID, Name=row.Name)

    def links(self, links: list[ACLLink], what: str) -> list[ACLLink]:
        table = self.policies if what == "policy" else self.roles
        return [self._link(link, table, what) for link in links]

    def _name_taken(self, table: dict[str, Any], row_id: str, name: str, what: str) -> None:
        if any(r.Name == name and row_id != r.ID for r in table.values()):
            raise CommandRejectedError(
                f"Invalid {what}: A {what} with name {name!r} already exists"
            )

    def check(self, cmd: Any) -> None:
        """What apply would refuse, checked before the command is proposed."""
        if isinstance(cmd, (ACLAuthMethodOp, ACLBindingRuleOp)):
            self.auth.check(cmd)
        elif isinstance(cmd, ACLTokenOp):
            if cmd.Op == "delete" and cmd.AccessorID == ANONYMOUS_ACCESSOR:
                raise CommandRejectedError("Delete operation not permitted on the anonymous token")
            if cmd.Op == "bootstrap" and self.bootstrap_index:
                raise BootstrapDoneError(
                    f"ACL bootstrap no longer allowed (reset index: {self.bootstrap_index})"
                )
            if cmd.Token is not None:
                self.links(cmd.Token.Policies, "policy")
                self.links(cmd.Token.Roles, "role")
                other = self.by_secret.get(cmd.Token.SecretID)
                if other is not None and other != cmd.Token.AccessorID:
                    raise CommandRejectedError("Invalid Token: SecretID is already in use")
        elif isinstance(cmd, ACLPolicyOp):
            if cmd.Policy is not None:
                self._name_taken(self.policies, cmd.Policy.ID, cmd.Policy.Name, "Policy")
            if cmd.Op == "delete" and cmd.ID == MANAGEMENT_POLICY_ID:
                raise CommandRejectedError("Delete operation not permitted on the builtin policy")
        elif cmd.Role is not None:
            self._name_taken(self.roles, cmd.Role.ID, cmd.Role.Name, "Role")
            self.links(cmd.Role.Policies, "policy")

    # ---- apply ---------------------------------------------------------------------------

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {
            ACLTokenOp: self._token,
            ACLPolicyOp: self._policy,
            ACLRoleOp: self._role,
            ACLTokenReap: self._reap,
            **self.auth.handlers(),
        }

    def _drop_login_tokens(self, method: str, changed: set[str]) -> None:
        """Deleting an auth method deletes the tokens its logins made (as Consul)."""
        for accessor in [a for a, t in self.tokens.items() if t.AuthMethod == method]:
            self.by_secret.pop(self.tokens.pop(accessor).SecretID, None)
            changed.add(TOKENS)

    def _reap(self, cmd: ACLTokenReap, index: int, changed: set[str]) -> int:
        """Drop the listed tokens that expired by the leader's `Now`; the count dropped."""
        dropped = 0
        for accessor in cmd.AccessorIDs:
            token = self.tokens.get(accessor)
            expires = epoch(token.ExpirationTime) if token is not None else None
            if token is not None and expires is not None and expires <= cmd.Now:
                del self.tokens[accessor]
                self.by_secret.pop(token.SecretID, None)
                dropped += 1
        if dropped:
            changed.add(TOKENS)
        return dropped

    def _token(self, cmd: ACLTokenOp, index: int, changed: set[str]) -> Any:
        self.check(cmd)
        changed.add(TOKENS)
        if cmd.Op == "delete":
            old = self.tokens.pop(cmd.AccessorID, None)
            if old is not None:
                self.by_secret.pop(old.SecretID, None)
            return True
        if cmd.Token is None:
            raise CommandRejectedError("a token is required")
        token = cmd.Token
        if cmd.Op == "bootstrap":
            self._put_policy(
                ACLPolicy(
                    ID=MANAGEMENT_POLICY_ID,
                    Name=MANAGEMENT_POLICY_NAME,
                    Description="Builtin Policy that grants unlimited access",
                    Rules="",
                ),
                index,
                changed,
            )
            token = replace(token, Policies=[ACLLink(ID=MANAGEMENT_POLICY_ID)])
            self.bootstrap_index = index
        old = self.tokens.get(token.AccessorID)
        if old is not None:
            self.by_secret.pop(old.SecretID, None)
        token = replace(
            token,
            Policies=self.links(token.Policies, "policy"),
            Roles=self.links(token.Roles, "role"),
            CreateTime=old.CreateTime if old else token.CreateTime,
            CreateIndex=old.CreateIndex if old else index,
            ModifyIndex=index,
        )
        self.tokens[token.AccessorID] = token
        self.by_secret[token.SecretID] = token.AccessorID
        return token

    def _put_policy(self, policy: ACLPolicy, index: int, changed: set[str]) -> ACLPolicy:
        old = self.policies.get(policy.ID)
        policy = replace(policy, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index)
        self.policies[policy.ID] = policy
        changed.add(POLICIES)
        return policy

    def _policy(self, cmd: ACLPolicyOp, index: int, changed: set[str]) -> Any:
        self.check(cmd)
        if cmd.Op == "delete":
            self.policies.pop(cmd.ID, None)
            changed.add(POLICIES)
            return True
        if cmd.Policy is None:
            raise CommandRejectedError("a policy is required")
        return self._put_policy(cmd.Policy, index, changed)

    def _role(self, cmd: ACLRoleOp, index: int, changed: set[str]) -> Any:
        self.check(cmd)
        changed.add(ROLES)
        if cmd.Op == "delete":
            self.roles.pop(cmd.ID, None)
            return True
        if cmd.Role is None:
            raise CommandRejectedError("a role is required")
        old = self.roles.get(cmd.Role.ID)
        role = replace(
            cmd.Role,
            Policies=self.links(cmd.Role.Policies, "policy"),
            CreateIndex=old.CreateIndex if old else index,
            ModifyIndex=index,
        )
        self.roles[role.ID] = role
        return role

    # ---- snapshots -----------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        snap = _Snap(
            list(self.tokens.values()),
            list(self.policies.values()),
            list(self.roles.values()),
            self.bootstrap_index,
            list(self.auth.methods.values()),
            list(self.auth.rules.values()),
        )
        result: dict[str, Any] = msgspec.to_builtins(snap)
        return result

    def load(self, data: dict[str, Any]) -> None:
        snap = msgspec.convert(data or {}, type=_Snap)
        self.__init__()  # type: ignore[misc]
        self.tokens = {t.AccessorID: t for t in snap.tokens}
        self.by_secret = {t.SecretID: t.AccessorID for t in snap.tokens}
        self.policies = {p.ID: p for p in snap.policies}
        self.roles = {r.ID: r for r in snap.roles}
        self.bootstrap_index = snap.bootstrap_index
        self.auth.load(snap.auth_methods, snap.binding_rules)

    # ---- reads ---------------------------------------------------------------------------

    def token_by_secret(self, secret: str) -> ACLToken | None:
        accessor = self.by_secret.get(secret)
        token = self.tokens.get(accessor) if accessor else None
        # the dict lookup found it; compare again in constant time so that the answer's timing
        # does not depend on how much of a guessed secret matches
        if token is None or not hmac.compare_digest(token.SecretID, secret):
            return None
        return token

    def resolve(self, secret: str) -> ResolvedToken | None:
        token = self.token_by_secret(secret)
        if token is None:
            return None
        policy_ids = [link.ID for link in token.Policies]
        rules = _identity_rules(token)
        for link in token.Roles:
            role = self.roles.get(link.ID)
            if role is not None:
                policy_ids += [p.ID for p in role.Policies]
                rules += _identity_rules(role)
        rules += [self.policies[p].Rules for p in policy_ids if p in self.policies]
        return ResolvedToken(
            AccessorID=token.AccessorID,
            Management=MANAGEMENT_POLICY_ID in policy_ids,
            Rules=rules,
            ExpirationTime=token.ExpirationTime,
        )


def _templated_rules(tp: ACLTemplatedPolicy) -> str:
    """A stored templated policy was checked when written; one that no longer expands (a
    template this version lacks) grants nothing rather than failing the whole token."""
    try:
        return templates.rules(tp)
    except templates.TemplateError:
        return ""


def _identity_rules(row: ACLToken | ACLRole) -> list[str]:
    """The synthetic policies of a token's or role's identities and templated policies."""
    rules = [service_identity_rules(s.ServiceName) for s in row.ServiceIdentities]
    rules += [node_identity_rules(n.NodeName) for n in row.NodeIdentities]
    return rules + [_templated_rules(tp) for tp in row.TemplatedPolicies]


def _index(topics: dict[str, int], names: list[str]) -> int:
    return max(max((topics.get(t, 0) for t in names), default=0), 1)


def read_handlers(
    state: Callable[[Any], ACLState],
) -> dict[type[Any], Callable[[Any, Any], tuple[int, Any, list[str]]]]:
    """The ACL reads for the store's query table; `state(store)` gives the store's ACLState."""

    def tokens(store: Any, query: q.ACLTokens) -> tuple[int, Any, list[str]]:
        acl = state(store)
        if query.AccessorID:
            rows = [t for t in [acl.tokens.get(query.AccessorID)] if t is not None]
        elif query.SecretID:
            rows = [t for t in [acl.token_by_secret(query.SecretID)] if t is not None]
        else:
            rows = sorted(acl.tokens.values(), key=lambda t: (t.CreateIndex, t.AccessorID))
        return _index(store.topics, [TOKENS]), rows, [TOKENS]

    def by_id_or_name(table: dict[str, Any], query: Any) -> list[Any]:
        if query.ID:
            return [r for r in [table.get(query.ID)] if r is not None]
        if query.Name:
            return [r for r in table.values() if r.Name == query.Name]
        return sorted(table.values(), key=lambda r: (r.CreateIndex, r.ID))

    def policies(store: Any, query: q.ACLPolicies) -> tuple[int, Any, list[str]]:
        return (
            _index(store.topics, [POLICIES]),
            by_id_or_name(state(store).policies, query),
            [POLICIES],
        )

    def roles(store: Any, query: q.ACLRoles) -> tuple[int, Any, list[str]]:
        return _index(store.topics, [ROLES]), by_id_or_name(state(store).roles, query), [ROLES]

    def resolve(store: Any, query: q.ACLResolve) -> tuple[int, Any, list[str]]:
        return _index(store.topics, _TOPICS), state(store).resolve(query.SecretID), _TOPICS

    return {
        q.ACLTokens: tokens,
        q.ACLPolicies: policies,
        q.ACLRoles: roles,
        q.ACLResolve: resolve,
        **acl_auth_state.read_handlers(lambda store: state(store).auth),
    }
