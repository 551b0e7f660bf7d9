"""Autopilot's replicated configuration, a part of the store's state.

The configuration lives in Raft, so every server answers reads of it the same way; the leader
acts on it in `meshd.server.operator.reconcile`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshd.autopilot import DEFAULTS, normalize_config
from meshd.structs import AutopilotConfigOp

TOPIC = "autopilot"


class AutopilotState:
    """The replicated autopilot configuration (a part of the store's state)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = dict(DEFAULTS)
        self.create_index = 0
        self.modify_index = 0

    def handlers(self) -> dict[type[Any], Callable[[Any, int, set[str]], Any]]:
        return {AutopilotConfigOp: self.apply}

    def apply(self, op: AutopilotConfigOp, index: int, changed: set[str]) -> bool:
        if op.CASIndex >= 0 and op.CASIndex != self.modify_index:
            return False
        self.config = normalize_config(op.Config)  # validated before proposal: cannot raise
        self.create_index = self.create_index or index
        self.modify_index = index
        changed.add(TOPIC)
        return True

    def to_json(self) -> dict[str, Any]:
        return {**self.config, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}

    def dump(self) -> dict[str, Any]:
        return self.to_json()

    def load(self, data: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        if data:
            self.create_index = int(data.get("CreateIndex", 0))
            self.modify_index = int(data.get("ModifyIndex", 0))
            self.config = normalize_config(data)
