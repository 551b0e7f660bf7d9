"""The agent config's `acl { ... }` block: its schema and its value (Consul's keys).

Kept out of `meshd.config`, which only adds the block's key and field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshd import configvalues as cv
from meshd.configvalues import Schema

DOWN_POLICIES = ("allow", "deny", "extend-cache", "async-cache")


def _down_policy(v: Any) -> str:
    value = cv.string(v).lower()
    if value not in DOWN_POLICIES:
        raise cv.InvalidError(f"must be one of {', '.join(DOWN_POLICIES)}, got {v!r}")
    return value


@dataclass
class ACLTokens:
    initial_management: str = ""
    agent: str = ""
    agent_recovery: str = ""
    default: str = ""
    dns: str = ""
    config_file_service_registration: str = ""
    replication: str = ""  # Consul's; kept and persisted, unused (meshd has one datacenter)


@dataclass
class ACLConfig:
    enabled: bool = False  # Consul's default; docs and the Ansible role turn it on
    default_policy: str = "allow"
    down_policy: str = "extend-cache"
    enable_token_persistence: bool = False
    token_ttl: float = 30.0
    # bounds of a token's ExpirationTTL (Consul's ACLTokenMin/MaxExpirationTTL)
    token_min_expiration_ttl: float = 60.0
    token_max_expiration_ttl: float = 24 * 3600.0
    tokens: ACLTokens = field(default_factory=ACLTokens)


_TOKENS: Schema = {
    k: (("acl", "tokens", k), cv.string)
    for k in (
        "initial_management",
        "agent",
        "agent_recovery",
        "default",
        "dns",
        "config_file_service_registration",
        "replication",
    )
}
_TOKENS["master"] = (("acl", "tokens", "initial_management"), cv.string)  # Consul's old name

SCHEMA: Schema = {
    "enabled": (("acl", "enabled"), cv.boolean),
    "default_policy": (("acl", "default_policy"), cv.policy),
    "down_policy": (("acl", "down_policy"), _down_policy),
    "enable_token_persistence": (("acl", "enable_token_persistence"), cv.boolean),
    "token_ttl": (("acl", "token_ttl"), cv.duration(positive=True)),
    "token_min_expiration_ttl": (("acl", "token_min_expiration_ttl"), cv.duration(positive=True)),
    "token_max_expiration_ttl": (("acl", "token_max_expiration_ttl"), cv.duration(positive=True)),
    "tokens": (None, _TOKENS),
}


def build(raw: dict[str, Any] | None) -> ACLConfig:
    raw = dict(raw or {})
    return ACLConfig(tokens=ACLTokens(**raw.pop("tokens", {})), **raw)
