"""Consul's ACL system, the pure part: the rules language and the authorizer.

Servers and agents both use it (the servers to authorise commands, agents to answer HTTP and DNS
from their cache), so it lives in the core and knows nothing of Raft or HTTP.
"""

from meshd.acl.authorizer import (
    MANAGEMENT,
    Access,
    Authorizer,
    PermissionDeniedError,
    build_authorizer,
)
from meshd.acl.rules import Rule, RulesError, parse_rules

__all__ = [
    "MANAGEMENT",
    "Access",
    "Authorizer",
    "PermissionDeniedError",
    "Rule",
    "RulesError",
    "build_authorizer",
    "parse_rules",
]
