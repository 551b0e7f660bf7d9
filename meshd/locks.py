"""Leader election and semaphores over sessions and KV locks, as Consul's api.Lock/Semaphore.

The key layout is Consul's, so `meshd lock` and `consul lock` (or any client of Consul's api
package) contend for the same prefix correctly: a lock is `PREFIX/.lock` acquired by a session
with flags 0x2ddccbc058a50c18; a semaphore keeps one contender key `PREFIX/<session>` per
contender (held by its session) and `PREFIX/.lock` holding `{"Limit": N, "Holders": {...}}`,
updated by check-and-set, with holders whose contender key lost its session pruned.

Synchronous on purpose (urllib, threads): the CLI runs one lock for the lifetime of one child.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from typing import Any

from meshd.api import APIConnectionError, APIError, Client
from meshd.durations import parse_duration_seconds

LOCK_FLAG = 0x2DDCCBC058A50C18  # Consul's api.LockFlagValue
SEMAPHORE_FLAG = 0xE0F69A2BAA414DE0  # Consul's api.SemaphoreFlagValue
LOCK_KEY = ".lock"
SESSION_TTL = "15s"
RETRY = 1.0  # seconds between retries after a refused acquire (lock-delay) or a failed read
WAIT = "10s"  # blocking-read wait: well under the client's timeout


class LockError(Exception):
    """The lock cannot be used as asked (a conflicting key, a semaphore limit mismatch)."""


class SessionKeeper:
    """A TTL session renewed in the background; `lost` is set once it cannot be kept."""

    def __init__(
        self, client: Client, name: str, ttl: str = SESSION_TTL, behavior: str = "release"
    ) -> None:
        self.client = client
        self.ttl = parse_duration_seconds(ttl)
        body = {"Name": name, "TTL": ttl, "Behavior": behavior}
        reply = client.put("/v1/session/create", body)
        self.id = str(reply["ID"])
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="session-renew", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 2 if not self.lost.is_set() else 1.0):
            try:
                self.client.put(f"/v1/session/renew/{self.id}")
                last_ok = time.monotonic()
            except APIError as e:
                if e.status == 404 or time.monotonic() - last_ok > self.ttl:
                    self.lost.set()  # invalidated, or unrenewed for a whole TTL: treat as gone
                    return

    def destroy(self) -> None:
        self._stop.set()
        with contextlib.suppress(APIError):  # the session's TTL ends it anyway
            self.client.put(f"/v1/session/destroy/{self.id}")


def _key(prefix: str, name: str) -> str:
    return f"{prefix.strip('/')}/{name}"


class Lock:
    """`PREFIX/.lock` held by one session at a time."""

    def __init__(self, client: Client, prefix: str, session: SessionKeeper) -> None:
        self.client = client
        self.key = _key(prefix, LOCK_KEY)
        self.session = session

    def _entry(self, index: int) -> tuple[dict[str, Any] | None, int]:
        rows, idx = self.client.get_indexed(f"/v1/kv/{self.key}", {"index": index, "wait": WAIT})
        return (rows[0] if rows else None), idx

    def acquire(self, stop: threading.Event, deadline: float | None) -> bool:
        index = 0
        while not stop.is_set() and not self.session.lost.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            entry, new_index = self._entry(index)
            if entry is not None and entry.get("Flags") != LOCK_FLAG:
                raise LockError(f"existing key {self.key} does not match lock use")
            if entry is not None and entry.get("Session"):
                index = new_index  # held by someone: wait for a change
                continue
            ok = self.client.put(
                f"/v1/kv/{self.key}", b"", {"acquire": self.session.id, "flags": LOCK_FLAG}
            )
            if ok is True:
                return True
            stop.wait(RETRY)  # free but refused: lock-delay after the last holder's loss
            index = 0
        return False

    def held(self, index: int) -> tuple[bool, int]:
        entry, idx = self._entry(index)
        return entry is not None and entry.get("Session") == self.session.id, idx

    def release(self) -> None:
        self.client.put(f"/v1/kv/{self.key}", b"", {"release": self.session.id, "flags": LOCK_FLAG})
        entry, _ = self._entry(0)
        if entry is not None and not entry.get("Session"):  # nobody waiting took it: tidy up
            self.client.delete(f"/v1/kv/{self.key}", {"cas": entry["ModifyIndex"]})


class Semaphore:
    """Up to `limit` holders: contender keys plus a check-and-set `.lock` holder list.

    Its session must have Behavior `delete` (as Consul's): a contender key then goes with its
    session, so a dead contender leaves nothing behind.
    """

    def __init__(self, client: Client, prefix: str, session: SessionKeeper, limit: int) -> None:
        self.client = client
        self.prefix = prefix.strip("/") + "/"
        self.lock_key = _key(prefix, LOCK_KEY)
        self.contender = _key(prefix, session.id)
        self.session = session
        self.limit = limit

    def _read(self, index: int) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, str | int | bool | None] = {"recurse": True, "index": index, "wait": WAIT}
        rows, idx = self.client.get_indexed(f"/v1/kv/{self.prefix}", params)
        return rows or [], idx

    def _lock_state(self, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
        """The `.lock` content (pruned of holders whose contender key lost its session) and the
        ModifyIndex to check-and-set against (0: create)."""
        lock_row = next((r for r in rows if r["Key"] == self.lock_key), None)
        state: dict[str, Any] = {"Limit": self.limit, "Holders": {}}
        if lock_row is not None:
            if lock_row.get("Flags") != SEMAPHORE_FLAG:
                raise LockError(f"existing key {self.lock_key} does not match semaphore use")
            try:
                state = json.loads(_value(lock_row) or b"{}")
            except ValueError:
                raise LockError(f"{self.lock_key} does not hold a semaphore") from None
        if state.get("Limit") != self.limit:
            raise LockError(
                f"semaphore limit conflict (lock: {state.get('Limit')}, local: {self.limit})"
            )
        alive = {
            r["Key"][len(self.prefix) :]
            for r in rows
            if r["Key"] != self.lock_key and r.get("Session")
        }
        state["Holders"] = {h: True for h in state.get("Holders") or {} if h in alive}
        return state, int(lock_row["ModifyIndex"]) if lock_row else 0

    def _cas(self, state: dict[str, Any], cas: int) -> bool:
        body = json.dumps(state).encode()
        ok = self.client.put(f"/v1/kv/{self.lock_key}", body, {"cas": cas, "flags": SEMAPHORE_FLAG})
        return ok is True

    def acquire(self, stop: threading.Event, deadline: float | None) -> bool:
        ok = self.client.put(
            f"/v1/kv/{self.contender}", b"", {"acquire": self.session.id, "flags": SEMAPHORE_FLAG}
        )
        if ok is not True:
            raise LockError(f"failed to make contender entry {self.contender}")
        index = 0
        while not stop.is_set() and not self.session.lost.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            rows, new_index = self._read(index)
            state, cas = self._lock_state(rows)
            if len(state["Holders"]) >= self.limit:
                index = new_index
                continue
            state["Holders"][self.session.id] = True
            if self._cas(state, cas):
                return True
            index = 0  # lost a race for `.lock`: read again
        return False

    def held(self, index: int) -> tuple[bool, int]:
        rows, idx = self._read(index)
        lock_row = next((r for r in rows if r["Key"] == self.lock_key), None)
        mine = next((r for r in rows if r["Key"] == self.contender), None)
        if lock_row is None or mine is None or mine.get("Session") != self.session.id:
            return False, idx
        try:
            holders = json.loads(_value(lock_row) or b"{}").get("Holders") or {}
        except ValueError:
            return False, idx
        return self.session.id in holders, idx

    def release(self) -> None:
        for _ in range(10):  # check-and-set loop against other contenders' updates
            rows, _ = self._read(0)
            try:
                state, cas = self._lock_state(rows)
            except LockError:
                break
            state["Holders"].pop(self.session.id, None)
            if self._cas(state, cas):
                break
        self.client.delete(f"/v1/kv/{self.contender}")
        rows, _ = self._read(0)
        lock_row = next((r for r in rows if r["Key"] == self.lock_key), None)
        if lock_row is not None and len(rows) == 1:  # no contender left: tidy up, as Consul's
            self.client.delete(f"/v1/kv/{self.lock_key}", {"cas": lock_row["ModifyIndex"]})


def _value(row: dict[str, Any]) -> bytes:
    raw = row.get("Value")
    return base64.b64decode(raw) if raw else b""


def monitor(
    lock: Lock | Semaphore, lost: threading.Event, stop: threading.Event, retries: int = 3
) -> None:
    """Watch the lock until it is no longer ours (or the agent stays unreachable), then set
    `lost`. Runs in its own thread for as long as the child runs."""
    index, failures = 0, 0
    while not stop.is_set():
        try:
            ours, index = lock.held(index)
            failures = 0
        except (APIConnectionError, APIError):
            failures += 1
            if failures > retries:
                lost.set()
                return
            stop.wait(RETRY)
            continue
        if not ours or lock.session.lost.is_set():
            lost.set()
            return
