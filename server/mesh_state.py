"""The mesh's replicated state: config entries and the CA, kept beside the catalog tables.

Kept apart from `server/store.py` so the catalog stays readable; the store delegates the mesh
commands here. CA signing keys are in this state, which is why it only ever lives on servers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from meshd.config_entries import ConfigEntryError, normalize_entry
from meshd.intentions import intention_id
from meshd.server.ca import CARoot
from meshd.structs import CASetRoots, ConfigEntryOp, IntentionOp

INTENTIONS = "service-intentions"


class CommandRejectedError(Exception):
    """Raised inside apply; the store turns it into its CommandError."""


def intention_entry(
    destination: str, sources: list[dict[str, Any]], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The service-intentions entry the intentions API writes: Consul's "legacy" sources, each
    with an ID per pair and its own Meta. Normalised, so it is what every server stores."""
    legacy = [
        {
            **s,
            "LegacyID": s.get("LegacyID") or intention_id(s["Name"], destination),
            "LegacyMeta": s.get("LegacyMeta") or {},
        }
        for s in sources
    ]
    entry = {k: v for k, v in (base or {}).items() if k not in ("CreateIndex", "ModifyIndex")}
    entry.update(Kind=INTENTIONS, Name=destination, Sources=legacy)
    try:
        return normalize_entry(entry, legacy=True)
    except ConfigEntryError as e:
        raise CommandRejectedError(str(e)) from None


class MeshState:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.cluster_id = ""
        self.roots: list[CARoot] = []
        self.ca_config: dict[str, Any] = {}
        self.ca_index = 0

    def apply_entry(self, op: ConfigEntryOp, index: int, changed: set[str]) -> bool:
        key = (op.Kind, op.Name)
        old = self.entries.get(key)
        if op.CASIndex >= 0 and (old["ModifyIndex"] if old else 0) != op.CASIndex:
            return False
        if op.Op == "set":
            entry = dict(op.Entry)
            entry["CreateIndex"] = old["CreateIndex"] if old else index
            entry["ModifyIndex"] = index
            self.entries[key] = entry
        elif op.Op == "delete":
            if old is None:
                return True
            del self.entries[key]
        else:
            raise CommandRejectedError(f"unknown config entry op {op.Op!r}")
        changed.update((f"config:{op.Kind}", f"config:{op.Kind}:{op.Name}", "tbl:config"))
        return True

    def apply_intention(self, op: IntentionOp, index: int, changed: set[str]) -> Any:
        """Read, change and write one destination's entry in one step of the state machine.

        Returns the intention's ID for an upsert (the API's create answers with it)."""
        old = self.entries.get((INTENTIONS, op.Destination))
        current = list(old.get("Sources", [])) if old else []
        sources = [s for s in current if s.get("Name") != op.Source]
        exists = len(sources) != len(current)
        if op.Op == "delete":
            if not exists:
                return True
            if not sources:
                return self.apply_entry(
                    ConfigEntryOp(Op="delete", Kind=INTENTIONS, Name=op.Destination),
                    index,
                    changed,
                )
        elif op.Op == "upsert":
            if exists and op.MustNotExist:
                raise CommandRejectedError(
                    f"an intention from {op.Source} to {op.Destination} already exists"
                )
            sources.append({"Name": op.Source, **op.Fields})
        else:
            raise CommandRejectedError(f"unknown intention op {op.Op!r}")
        entry = intention_entry(op.Destination, sources, old)
        self.apply_entry(
            ConfigEntryOp(Op="set", Kind=INTENTIONS, Name=op.Destination, Entry=entry),
            index,
            changed,
        )
        if op.Op == "delete":
            return True
        return next(s["LegacyID"] for s in entry["Sources"] if s["Name"] == op.Source)

    def apply_roots(self, cmd: CASetRoots, index: int, changed: set[str]) -> bool:
        try:
            roots = msgspec.msgpack.decode(cmd.Roots, type=list[CARoot])
        except msgspec.DecodeError as e:
            raise CommandRejectedError(f"bad CA roots: {e}") from None
        if self.cluster_id and cmd.ClusterID != self.cluster_id:
            raise CommandRejectedError("the cluster id (trust domain) cannot change")
        self.cluster_id = cmd.ClusterID
        self.roots = [
            msgspec.structs.replace(r, ModifyIndex=index, CreateIndex=r.CreateIndex or index)
            for r in roots
        ]
        self.ca_config = dict(cmd.Config)
        self.ca_index = index
        changed.add("ca")
        return True

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        """The commands this part of the state applies, for the store's dispatch table."""
        return {
            ConfigEntryOp: self.apply_entry,
            IntentionOp: self.apply_intention,
            CASetRoots: self.apply_roots,
        }

    def active_root(self) -> CARoot | None:
        return next((r for r in self.roots if r.Active), None)

    def dump(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries.values()),
            "cluster_id": self.cluster_id,
            "roots": msgspec.msgpack.encode(self.roots),
            "ca_config": self.ca_config,
            "ca_index": self.ca_index,
        }

    def load(self, data: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        for e in data.get("entries", []):
            self.entries[(e["Kind"], e["Name"])] = e
        self.cluster_id = data.get("cluster_id", "")
        raw = data.get("roots")
        self.roots = msgspec.msgpack.decode(raw, type=list[CARoot]) if raw else []
        self.ca_config = data.get("ca_config", {})
        self.ca_index = data.get("ca_index", 0)
