"""An agent's copy of the cluster keyring (see `meshd.keyring`).

It starts from the ring saved by an earlier run, else from `encrypt`; the leader's heartbeat
reply carries the replicated ring, sealed, whenever it changed since the version this agent
reported, and the agent then signs its RPC with the new primary and saves the ring.
"""

from __future__ import annotations

import logging
from typing import Any

from meshd import keyring
from meshd.config import Config
from meshd.rpc_client import RPCClient

log = logging.getLogger("meshd.agent")


class AgentKeyring:
    def __init__(self, cfg: Config) -> None:
        self.data_dir = cfg.data_dir
        saved = keyring.load(cfg.data_dir)
        if saved and cfg.encrypt and saved[0] != cfg.encrypt:
            log.warning("using the keyring saved in the data dir, not `encrypt`: it was rotated")
        self.keys: list[str] = saved or ([cfg.encrypt] if cfg.encrypt else [])
        self.version = 0

    @property
    def primary(self) -> str | None:
        return self.keys[0] if self.keys else None

    def fingerprints(self) -> list[str]:
        return [keyring.fingerprint(k) for k in self.keys]

    def follow(self, keys: list[str]) -> None:
        """A server agent holds what its in-process server loaded from Raft."""
        if keys and keys != self.keys:
            self.keys = list(keys)

    def observe(self, reply: Any, rpc: RPCClient | None) -> None:
        """Take the ring from a heartbeat reply, when it carries one this agent can open."""
        ring = reply.get("Keyring") if isinstance(reply, dict) else None
        if not isinstance(ring, dict):
            return
        keys = keyring.unseal(list(ring.get("Sealed") or []), self.keys)
        if keys is None:
            log.warning("keyring: the servers' keyring is sealed with no key this agent holds")
            return
        self.version = int(ring.get("Version", 0))
        if keys != self.keys:
            self.keys = keys
            keyring.save(self.data_dir, keys)
            if rpc is not None:
                rpc.key = keyring.hmac_key(keys[0])
            log.info("keyring: now %d key(s), primary %s", len(keys), keyring.fingerprint(keys[0]))
