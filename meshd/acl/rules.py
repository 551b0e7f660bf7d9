"""Consul's ACL rules language (HCL or JSON) parsed into flat rules.

A policy's `Rules` text is parsed when the policy is written, so a malformed rule is refused
with the resource it concerns, and every server and agent later compiles the same flat rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshd.hclparse import parse_hcl

POLICIES = ("read", "write", "list", "deny")
# resources that take one policy for the whole resource: `operator = "read"`
SINGLE = frozenset({"acl", "keyring", "mesh", "operator"})
# resources with a name (exact) and a `_prefix` form
NAMED = frozenset({"agent", "event", "key", "node", "query", "service", "session"})
# `list` is a key policy only (Consul: key_prefix with list)
_LIST_OK = frozenset({"key"})
_BLOCK_FIELDS = {"policy"}
_SERVICE_FIELDS = {"policy", "intentions"}


class RulesError(ValueError):
    """A policy's rules that cannot be used; the text names the resource at fault."""


@dataclass(frozen=True)
class Rule:
    """One grant: `resource` is the base kind ("service"), `prefix` tells `service_prefix`."""

    resource: str
    name: str
    prefix: bool
    policy: str
    intentions: str = ""


def _load(text: str) -> Any:
    stripped = text.strip()
    if not stripped:
        return {}
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except ValueError as e:
            raise RulesError(f"Failed to parse ACL rules: {e}") from None
    try:
        return parse_hcl(text)
    except Exception as e:  # pyhcl raises ValueError subclasses and, on some input, others
        raise RulesError(f"Failed to parse ACL rules: {e}") from None


def _policy(resource: str, label: str, value: Any, field: str = "policy") -> str:
    ok = POLICIES if resource in _LIST_OK else tuple(p for p in POLICIES if p != "list")
    if not isinstance(value, str) or value not in ok:
        raise RulesError(
            f"Invalid {field} for {label}: {value!r} (expected one of {', '.join(ok)})"
        )
    return value


def _blocks(kind: str, body: Any) -> list[tuple[str, Any]]:
    """(name, block body) pairs; HCL repeats a block kind either merged or as a list."""
    parts = body if isinstance(body, list) else [body]
    out: list[tuple[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            raise RulesError(f'Invalid {kind} rule: expected {kind} "NAME" {{ policy = ... }}')
        out.extend(part.items())
    return out


def _named(kind: str, body: Any) -> list[Rule]:
    base = kind.removesuffix("_prefix")
    rules = []
    for name, block in _blocks(kind, body):
        label = f'{kind} "{name}"'
        if not isinstance(block, dict):
            raise RulesError(f"Invalid {label}: expected a block with a policy")
        allowed = _SERVICE_FIELDS if base == "service" else _BLOCK_FIELDS
        unknown = sorted(set(block) - allowed)
        if unknown:
            raise RulesError(f"Invalid {label}: unknown field {unknown[0]!r}")
        if "policy" not in block and "intentions" not in block:
            raise RulesError(f"Invalid {label}: missing policy")
        policy = _policy(base, label, block["policy"]) if "policy" in block else ""
        intentions = ""
        if "intentions" in block:
            intentions = _policy("service", label, block["intentions"], "intentions")
        rules.append(Rule(base, str(name), kind.endswith("_prefix"), policy, intentions))
    return rules


def parse_rules(text: str) -> list[Rule]:
    """The rules of one policy, in HCL or JSON; RulesError names the resource at fault."""
    data = _load(text)
    if not isinstance(data, dict):
        raise RulesError("Failed to parse ACL rules: expected an object of resources")
    rules: list[Rule] = []
    for kind, body in data.items():
        if kind in SINGLE:
            if isinstance(body, list) and len(body) == 1:
                body = body[0]
            rules.append(Rule(kind, "", False, _policy(kind, kind, body)))
        elif kind.removesuffix("_prefix") in NAMED:
            rules.extend(_named(kind, body))
        else:
            raise RulesError(f"Invalid ACL rules: unknown resource {kind!r}")
    return rules
