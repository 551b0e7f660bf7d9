"""Replicated auth methods and binding rules: checks, apply, snapshot rows and reads.

Part of `ACLState` (which owns the tokens a deleted method takes with it, as Consul deletes a
method's login tokens and binding rules with it). Apply is total: `check` is run before the
command is proposed and again inside apply, and a refusal is the entry's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from meshd import queries as q
from meshd.acl.auth_model import (
    ACLAuthMethod,
    ACLAuthMethodOp,
    ACLBindingRule,
    ACLBindingRuleOp,
)
from meshd.acl.authmethods import AuthMethodError, identity_shape
from meshd.acl.binding import BindError, check_rule
from meshd.server.mesh_state import CommandRejectedError

replace = msgspec.structs.replace
METHODS, RULES = "tbl:acl_auth_methods", "tbl:acl_binding_rules"


class AuthTables:
    def __init__(self, on_method_deleted: Callable[[str, set[str]], None]) -> None:
        self.methods: dict[str, ACLAuthMethod] = {}  # by Name
        self.rules: dict[str, ACLBindingRule] = {}  # by ID
        self._on_method_deleted = on_method_deleted

    def rules_of(self, method: str) -> list[ACLBindingRule]:
        """A method's rules in creation order: the order Consul evaluates them in."""
        rows = [r for r in self.rules.values() if r.AuthMethod == method]
        return sorted(rows, key=lambda r: (r.CreateIndex, r.ID))

    # ---- checks that need the state ------------------------------------------------------

    def check(self, cmd: ACLAuthMethodOp | ACLBindingRuleOp) -> None:
        if isinstance(cmd, ACLAuthMethodOp):
            old = self.methods.get(cmd.AuthMethod.Name) if cmd.AuthMethod else None
            if old is not None and cmd.AuthMethod and cmd.AuthMethod.Type != old.Type:
                raise CommandRejectedError("the Type field of an Auth Method is immutable")
            return
        if cmd.Op == "delete" or cmd.BindingRule is None:
            return
        rule = cmd.BindingRule
        old_rule = self.rules.get(rule.ID)
        if old_rule is not None and old_rule.AuthMethod != rule.AuthMethod:
            raise CommandRejectedError("the AuthMethod field of an Binding Rule is immutable")
        method = self.methods.get(rule.AuthMethod)
        if method is None:
            raise CommandRejectedError(f"cannot find auth method with name {rule.AuthMethod!r}")
        try:
            names, roots = identity_shape(method)
            check_rule(rule, names, roots)
        except (AuthMethodError, BindError) as e:
            raise CommandRejectedError(str(e)) from None

    # ---- apply ---------------------------------------------------------------------------

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {ACLAuthMethodOp: self._method, ACLBindingRuleOp: self._rule}

    def _method(self, cmd: ACLAuthMethodOp, index: int, changed: set[str]) -> Any:
        self.check(cmd)
        changed.add(METHODS)
        if cmd.Op == "delete":
            if self.methods.pop(cmd.Name, None) is not None:
                for rid in [r.ID for r in self.rules.values() if r.AuthMethod == cmd.Name]:
                    del self.rules[rid]
                changed.add(RULES)
                self._on_method_deleted(cmd.Name, changed)
            return True
        if cmd.AuthMethod is None:
            raise CommandRejectedError("an auth method is required")
        old = self.methods.get(cmd.AuthMethod.Name)
        method = replace(
            cmd.AuthMethod, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index
        )
        self.methods[method.Name] = method
        return method

    def _rule(self, cmd: ACLBindingRuleOp, index: int, changed: set[str]) -> Any:
        self.check(cmd)
        changed.add(RULES)
        if cmd.Op == "delete":
            self.rules.pop(cmd.ID, None)
            return True
        if cmd.BindingRule is None:
            raise CommandRejectedError("a binding rule is required")
        old = self.rules.get(cmd.BindingRule.ID)
        rule = replace(
            cmd.BindingRule, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index
        )
        self.rules[rule.ID] = rule
        return rule

    # ---- snapshots -----------------------------------------------------------------------

    def load(self, methods: list[ACLAuthMethod], rules: list[ACLBindingRule]) -> None:
        self.methods = {m.Name: m for m in methods}
        self.rules = {r.ID: r for r in rules}


def _index(topics: dict[str, int], name: str) -> int:
    return max(topics.get(name, 0), 1)


def read_handlers(
    tables: Callable[[Any], AuthTables],
) -> dict[type[Any], Callable[[Any, Any], tuple[int, Any, list[str]]]]:
    def methods(store: Any, query: q.ACLAuthMethods) -> tuple[int, Any, list[str]]:
        t = tables(store)
        if query.Name:
            rows = [m for m in [t.methods.get(query.Name)] if m is not None]
        else:
            rows = sorted(t.methods.values(), key=lambda m: m.Name)
        return _index(store.topics, METHODS), rows, [METHODS]

    def rules(store: Any, query: q.ACLBindingRules) -> tuple[int, Any, list[str]]:
        t = tables(store)
        if query.ID:
            rows = [r for r in [t.rules.get(query.ID)] if r is not None]
        elif query.AuthMethod:
            rows = t.rules_of(query.AuthMethod)
        else:
            rows = sorted(t.rules.values(), key=lambda r: (r.CreateIndex, r.ID))
        return _index(store.topics, RULES), rows, [RULES]

    return {q.ACLAuthMethods: methods, q.ACLBindingRules: rules}
