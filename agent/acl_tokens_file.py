"""`acl.enable_token_persistence`: the agent's tokens set through the API survive a restart.

As Consul: tokens set with `PUT /v1/agent/token/:type` are written to `<data_dir>/acl-tokens.json`
(owner-only, 0600), and read back at start, where they take precedence over the configuration
files' tokens. With persistence off nothing is written, and a file left from before is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from meshd.acl.settings import ACLConfig
from meshd.fsutil import atomic_write_json

log = logging.getLogger("meshd.acl")
FILE = "acl-tokens.json"
# the file's keys are Consul's; `agent_master` is its older name for agent_recovery
KINDS = (
    "default",
    "agent",
    "agent_recovery",
    "dns",
    "config_file_service_registration",
    "replication",
)
_ALIASES = {"agent_master": "agent_recovery"}


class TokenFileError(Exception):
    """The persisted tokens cannot be read: the agent says so rather than start without them."""


def _path(data_dir: str | None, acl: ACLConfig) -> str | None:
    if not data_dir or not acl.enable_token_persistence:
        return None
    return os.path.join(data_dir, FILE)


def _read(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            raw: Any = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TokenFileError(f"cannot read the persisted ACL tokens {path}: {e}") from None
    if not isinstance(raw, dict):
        raise TokenFileError(f"cannot read the persisted ACL tokens {path}: not an object")
    out = {}
    for key, value in raw.items():
        kind = _ALIASES.get(key, key)
        if kind in KINDS and isinstance(value, str) and value:
            out[kind] = value
    return out


def load(data_dir: str | None, acl: ACLConfig) -> list[str]:
    """Apply the persisted tokens to `acl.tokens`; the kinds loaded (never their values)."""
    path = _path(data_dir, acl)
    if path is None:
        return []
    tokens = _read(path)
    for kind, value in tokens.items():
        setattr(acl.tokens, kind, value)
    if tokens:
        log.info("loaded persisted ACL tokens: %s", ", ".join(sorted(tokens)))
    return sorted(tokens)


def save(data_dir: str | None, acl: ACLConfig, kind: str, value: str) -> bool:
    """Record one token set through the API; False when persistence is off."""
    path = _path(data_dir, acl)
    if path is None:
        return False
    tokens = _read(path)
    tokens[kind] = value
    atomic_write_json(path, {k: v for k, v in tokens.items() if v})
    return True
