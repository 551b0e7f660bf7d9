"""The cluster keyring: the keys `encrypt` starts with, rotated without downtime.

One key (the primary) signs RPC requests and encrypts Raft traffic; every key in the ring is
accepted. Rotation is Consul's three steps: install a new key everywhere, make it the primary,
remove the old one. The ring lives in Raft (servers apply it), reaches client agents sealed in
their heartbeat replies, and is saved in each agent's data dir, so an agent restarting after a
rotation starts with the current keys rather than the configured, retired one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from meshd.fsutil import atomic_write

KEY_SIZES = (16, 24, 32)  # AES-128/192/256, as Consul's gossip keys
FILE = "keyring.json"


class KeyringError(ValueError):
    """A keyring operation that is refused; the text says why (HTTP 400)."""


def key_bytes(key: str) -> bytes:
    """The raw bytes of a base64 key (the RPC HMAC key); refused unless 16, 24 or 32 bytes."""
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("Invalid key: not base64") from None
    if len(raw) not in KEY_SIZES:
        raise KeyringError(f"Invalid key: {len(raw)} bytes, must be 16, 24 or 32")
    return raw


def hmac_key(key: str) -> bytes:
    """The RPC HMAC key of a ring key: its raw bytes (as `encrypt` has always been used)."""
    return base64.b64decode(key)


def fingerprint(key: str) -> str:
    """What agents report about their keys: enough to count them, useless to an eavesdropper."""
    return hashlib.sha256(b"meshd-keyring\n" + key.encode()).hexdigest()[:16]


def _sealer(key: str) -> Fernet:
    digest = hashlib.sha256(b"meshd-keyring-seal\n" + key_bytes(key)).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(keys: list[str]) -> list[str]:
    """The ring, encrypted once under each of its keys: whichever key an agent still holds
    opens it (RPC bodies are authenticated, not encrypted, without TLS)."""
    body = json.dumps(keys).encode()
    return [_sealer(k).encrypt(body).decode() for k in keys]


def unseal(sealed: list[str], known: list[str]) -> list[str] | None:
    """The ring from `seal`, opened with one of the `known` keys; None when none opens it."""
    for key in known:
        f = _sealer(key)
        for token in sealed:
            try:
                keys = json.loads(f.decrypt(token.encode()))
            except (InvalidToken, ValueError):
                continue
            if isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys):
                return keys
    return None


def load(data_dir: str | None) -> list[str] | None:
    """The ring saved by an earlier run (primary first), or None."""
    if not data_dir:
        return None
    try:
        with open(os.path.join(data_dir, FILE)) as f:
            raw: Any = json.load(f)
    except (OSError, ValueError):
        return None
    keys = raw.get("Keys") if isinstance(raw, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        return None
    return keys


def save(data_dir: str | None, keys: list[str]) -> None:
    if not data_dir:
        return
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, FILE)
    atomic_write(path, json.dumps({"Keys": keys}).encode(), mode=0o600)
