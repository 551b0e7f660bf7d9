"""The replicated keyring, and each server's use of it (Raft encryption, RPC authentication).

The ring is applied by every server from Raft; a server then loads it into its Raft transport
(every key decrypts, the primary encrypts) and its RPC check (any key's signature is accepted,
the primary signs), and saves it in its data dir for its next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshd import keyring
from meshd.server.mesh_state import CommandRejectedError
from meshd.structs import KeyringOp

if TYPE_CHECKING:
    from meshd.server.cluster import Server

log = logging.getLogger("meshd.keyring")
TOPIC = "keyring"


class KeyringState:
    def __init__(self) -> None:
        self.keys: list[str] = []  # primary first; empty: never rotated (the configured key)
        self.version = 0

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {KeyringOp: self.apply}

    def apply(self, op: KeyringOp, index: int, changed: set[str]) -> bool:
        keys = list(self.keys or op.Current)
        if not keys:
            raise CommandRejectedError(
                "the cluster has no encryption key (`encrypt`): there is no keyring to change"
            )
        if op.Op == "install" and op.Key not in keys:
            keys.append(op.Key)
        elif op.Op in ("use", "remove"):
            if op.Key not in keys:
                raise CommandRejectedError("Requested key is not in the keyring")
            if op.Op == "use":
                keys.remove(op.Key)
                keys.insert(0, op.Key)
            elif keys[0] == op.Key:
                raise CommandRejectedError("Removing the primary key is not allowed")
            else:
                keys.remove(op.Key)
        if keys != self.keys:
            self.keys, self.version = keys, index
            changed.add(TOPIC)
        return True

    def dump(self) -> dict[str, Any]:
        return {"Keys": list(self.keys), "Version": self.version}

    def load(self, data: dict[str, Any]) -> None:
        self.keys = [str(k) for k in data.get("Keys", [])]
        self.version = int(data.get("Version", 0))


async def sync(server: Server) -> None:
    """Load a changed replicated ring into this server's transport and RPC check."""
    keys = server.store.keyring.keys
    if not keys or keys == server.keys:
        return
    raft = server.raft
    if raft is not None:
        await asyncio.to_thread(raft.set_passwords, keys)  # key derivation takes a moment
    server.keys = list(keys)
    server.rpc.key = keyring.hmac_key(keys[0])
    keyring.save(server.s.data_dir, keys)
    log.info("keyring: %d key(s), primary %s", len(keys), keyring.fingerprint(keys[0]))


def listing(server: Server) -> list[dict[str, Any]]:
    """GET /v1/operator/keyring: how many members hold each key, and use it as primary."""
    keys = server.store.keyring.keys or server.keys
    by_fp = {keyring.fingerprint(k): k for k in keys}
    held: dict[str, int] = {}
    primary: dict[str, int] = {}
    view = server.liveness.view_or_fail()
    members = [c.summary.KeyFingerprints for c in view.claims.values()]
    members = [fps for fps in members if fps]
    for fps in members:
        for i, fp in enumerate(fps):
            key = by_fp.get(fp, fp)
            held[key] = held.get(key, 0) + 1
            if i == 0:
                primary[key] = primary.get(key, 0) + 1
    return [
        {
            "WAN": False,
            "Datacenter": server.s.datacenter,
            "Segment": "",
            "Keys": held,
            "PrimaryKeys": primary,
            "NumNodes": len(members),
        }
    ]
