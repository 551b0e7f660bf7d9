"""Agent-registered services and checks on disk, so an agent restart does not lose them.

Without this, anti-entropy after a restart would (correctly, from the agent's point of view)
remove from the catalog every service that was registered over the HTTP API. Each definition is
one JSON file, written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import json
import os
from hashlib import sha256
from typing import Any

from meshd.fsutil import atomic_write_json, private_dirs


class Persisted:
    def __init__(self, root: str | None) -> None:
        self.root = root

    def _dir(self, kind: str) -> str | None:
        if self.root is None:
            return None
        d = os.path.join(self.root, kind)
        private_dirs(d)
        return d

    @staticmethod
    def _name(key: str) -> str:
        return sha256(key.encode()).hexdigest()[:32] + ".json"

    def _put(self, kind: str, key: str, raw: dict[str, Any]) -> None:
        d = self._dir(kind)
        if d is None:
            return
        atomic_write_json(os.path.join(d, self._name(key)), {"key": key, "definition": raw}, 0o600)

    def _drop(self, kind: str, key: str) -> None:
        d = self._dir(kind)
        if d is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, self._name(key)))

    def _all(self, kind: str) -> dict[str, dict[str, Any]]:
        d = self._dir(kind)
        out: dict[str, dict[str, Any]] = {}
        if d is None:
            return out
        for name in sorted(os.listdir(d)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(d, name)) as f:
                    doc = json.load(f)
                out[doc["key"]] = doc["definition"]
            except (OSError, ValueError, KeyError):
                continue
        return out

    def put_service(self, sid: str, raw: dict[str, Any]) -> None:
        self._put("services", sid, raw)

    def drop_service(self, sid: str) -> None:
        self._drop("services", sid)

    def services(self) -> dict[str, dict[str, Any]]:
        return self._all("services")

    def put_check(self, cid: str, raw: dict[str, Any]) -> None:
        self._put("checks", cid, raw)

    def drop_check(self, cid: str) -> None:
        self._drop("checks", cid)

    def checks(self) -> dict[str, dict[str, Any]]:
        return self._all("checks")
