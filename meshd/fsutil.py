"""Durable, private small-file writes and the data directory's permissions.

Everything under `data_dir` is state another local user must not read: the Raft journal holds
the CA signing key and every KV value, node-id and peers.json name the cluster, persisted
service definitions may carry tokens. So files are written 0600 and directories 0700.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any

log = logging.getLogger("meshd.fsutil")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_PRIVATE_UMASK = 0o077


def atomic_write(path: str, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Temp file, fsync, rename, so a crash leaves the old or the new."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any, mode: int = PRIVATE_FILE) -> None:
    atomic_write(path, json.dumps(obj).encode(), mode)


def private_dirs(path: str) -> None:
    """`os.makedirs` with 0700 for every directory it creates."""
    os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)


def prepare_data_dir(path: str) -> list[str]:
    """Create `path` 0700 if missing and make every file this process creates owner-only.

    Third-party code writes into the data dir with plain open() (pysyncobj's journal, its
    snapshots and their temp files): only the process umask reaches those, so it is set here,
    once, before any of them is created. An existing directory others can read is reported, not
    changed: its owner may have reasons, and should decide. Returns the warnings it logged.
    """
    os.umask(_PRIVATE_UMASK)
    private_dirs(path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    warnings = []
    if mode & 0o077:
        warnings.append(
            f"data_dir {path} has mode {mode:04o}: other users may read the cluster's state "
            f"(the Raft journal holds the CA key); run `chmod 700 {path}`"
        )
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def make_private(directory: str) -> None:
    """chmod 0600 the files already in `directory` (written by an older, laxer version)."""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and stat.S_IMODE(entry.stat().st_mode) & 0o077:
            os.chmod(entry.path, PRIVATE_FILE)
