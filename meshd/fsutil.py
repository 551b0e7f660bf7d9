"""Durable small-file writes: temp file, fsync, rename, so a crash leaves the old or the new."""

from __future__ import annotations

import json
import os
from typing import Any


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(obj).encode(), mode)
