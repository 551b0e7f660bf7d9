"""pysyncobj behind an asyncio interface.

pysyncobj applies entries on its own tick thread; results are handed to the caller's loop with
`call_soon_threadsafe`. Two tunings matter for latency (see DESIGN "Known traps"): append-entries
are sent as soon as a command arrives (`appendEntriesUseBatch=False`), and a single-node cluster
is woken again right after it appends so the entry commits on the next tick, not 50 ms later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from meshd.structs import Command, decode_command, encode_command
from server.store import CommandError, Store

log = logging.getLogger("meshd.raft")


class RaftError(Exception):
    """A write that did not commit (no leader, timeout, lost leadership)."""


_REASONS = {
    FAIL_REASON.QUEUE_FULL: "raft queue is full",
    FAIL_REASON.MISSING_LEADER: "No cluster leader",
    FAIL_REASON.DISCARDED: "leadership lost while committing",
    FAIL_REASON.NOT_LEADER: "not the leader",
    FAIL_REASON.LEADER_CHANGED: "leadership changed",
    FAIL_REASON.REQUEST_DENIED: "request denied",
}


class _GroupCommit:
    """Journal wrapper: one msync per batch of entries, before anything that acknowledges them.

    pysyncobj writes its journal into an mmap and never flushes it (its issue #84); flushing per
    entry costs ~40 writes/s (its PR #98). We mark the journal dirty on append and flush once
    before the next message leaves this node (a follower's ack, a leader's append-entries) and at
    the end of every tick (a lone node's commit), so nothing is acknowledged before it is durable.
    """

    def __init__(self, journal: Any) -> None:
        self._j = journal
        self.dirty = False
        self.flushes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._j, name)

    def __getitem__(self, idx: Any) -> Any:
        return self._j[idx]

    def __len__(self) -> int:
        return len(self._j)

    def add(self, command: Any, idx: int, term: int) -> None:
        self._j.add(command, idx, term)
        self.dirty = True

    def deleteEntriesFrom(self, entry_from: int) -> None:  # noqa: N802 - pysyncobj's name
        self._j.deleteEntriesFrom(entry_from)
        self.dirty = True

    def deleteEntriesTo(self, entry_to: int) -> None:  # noqa: N802
        self._j.deleteEntriesTo(entry_to)
        self.dirty = True

    def flush_if_dirty(self) -> None:
        if self.dirty:
            self.dirty = False
            self._j.flush()
            self.flushes += 1


class _FSM(SyncObjConsumer):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    @replicated
    def apply_command(self, data: bytes) -> Any:
        index = self._syncObj.raftLastApplied + 1
        return self.store.apply(decode_command(data), index)

    def _serialize(self) -> bytes:
        return self.store.dump()

    def _deserialize(self, data: bytes) -> None:
        self.store.load(data)


@dataclass
class RaftSettings:
    self_addr: str  # host:port this server's Raft listens on
    peers: list[str]  # the other servers' Raft addresses
    data_dir: str | None = None  # None: in-memory journal (dev mode)
    password: str | None = None  # cluster key; encrypts and authenticates every Raft connection
    bind: str | None = None  # listen address when it differs from self_addr (e.g. 0.0.0.0:8301)
    append_entries_period: float = 0.05
    raft_min_timeout: float = 0.4
    raft_max_timeout: float = 1.2
    leader_fallback_timeout: float = 1.5
    fsync: bool = True  # group-committed msync of the journal (only with data_dir)


def free_loopback_port() -> int:
    """A port for dev mode's peerless Raft listener, which nobody needs to know in advance."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RaftNode:
    def __init__(self, store: Store, settings: RaftSettings) -> None:
        self.store = store
        self.settings = settings
        self._fsm = _FSM(store)
        journal = dump = None
        if settings.data_dir:
            raft_dir = os.path.join(settings.data_dir, "raft")
            os.makedirs(raft_dir, exist_ok=True)
            journal = os.path.join(raft_dir, "journal.bin")
            dump = os.path.join(raft_dir, "snapshot.bin")
        self._last_contact = time.monotonic()
        conf = SyncObjConf(
            journalFile=journal, fullDumpFile=dump, password=settings.password,
            appendEntriesUseBatch=False, appendEntriesPeriod=settings.append_entries_period,
            raftMinTimeout=settings.raft_min_timeout, raftMaxTimeout=settings.raft_max_timeout,
            leaderFallbackTimeout=settings.leader_fallback_timeout, autoTickPeriod=0.05,
            dynamicMembershipChange=True, useFork=False, commandsWaitLeader=True,
            connectionRetryTime=1.0, bindAddress=settings.bind, logCompactionMinEntries=20000,
            logCompactionMinTime=600,
        )
        self._single = not settings.peers
        self._pending = 0
        self.commits = 0  # writes this node submitted that committed (metrics)
        self._sync = SyncObj(settings.self_addr, list(settings.peers), conf=conf,
                             consumers=[self._fsm])
        self._journal: _GroupCommit | None = None
        if journal and settings.fsync:
            self._install_group_commit()
        self._sync.addOnTickCallback(self._on_tick)

    def _install_group_commit(self) -> None:
        # pysyncobj keeps these in name-mangled attributes; there is no public hook for either.
        self._journal = _GroupCommit(self._sync._SyncObj__raftLog)
        self._sync._SyncObj__raftLog = self._journal
        transport = self._sync._SyncObj__transport
        send = transport.send
        journal = self._journal

        def durable_send(node: Any, message: Any) -> Any:
            journal.flush_if_dirty()
            return send(node, message)

        transport.send = durable_send

    def _on_tick(self) -> None:
        if self._journal is not None:
            self._journal.flush_if_dirty()
        # A lone node commits on the tick after it appends; wake that tick now.
        if self._single and self._pending:
            notifier = getattr(self._sync, "_SyncObj__pipeNotifier", None)
            if notifier is not None:
                notifier.notify()
        if self._sync._getLeader() is not None:
            self._last_contact = time.monotonic()

    async def apply(self, cmd: Command, timeout: float = 10.0) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(res: Any, err: int) -> None:
            self._pending -= 1
            loop.call_soon_threadsafe(_settle, fut, res, err)

        self._pending += 1
        self._fsm.apply_command(encode_command(cmd), callback=done)
        try:
            result = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RaftError("timed out waiting for the write to commit") from None
        self.commits += 1
        if isinstance(result, CommandError):
            raise result
        return result

    async def _membership(self, fn: Any, addr: str) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        fn(addr, callback=lambda res, err: loop.call_soon_threadsafe(_settle, fut, res, err))
        await asyncio.wait_for(fut, 10.0)

    async def add_peer(self, addr: str) -> None:
        if addr in self.peers():
            return
        await self._membership(self._sync.addNodeToCluster, addr)

    async def remove_peer(self, addr: str) -> None:
        if addr not in self.peers():
            raise RaftError(f"address {addr!r} is not a Raft peer")
        await self._membership(self._sync.removeNodeFromCluster, addr)

    # ---- status -------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return bool(self._sync._isLeader())

    def leader(self) -> str:
        node = self._sync._getLeader()
        return str(node.address) if node is not None else ""

    def peers(self) -> list[str]:
        return sorted([self.settings.self_addr, *(n.address for n in self._sync.otherNodes)])

    def last_contact_ms(self) -> int:
        return 0 if self.is_leader else int((time.monotonic() - self._last_contact) * 1000)

    def ready(self) -> bool:
        return self._sync._getLeader() is not None

    def close(self) -> None:
        self._sync.destroy()


def _settle(fut: asyncio.Future[Any], res: Any, err: int) -> None:
    if fut.done():
        return
    if err == FAIL_REASON.SUCCESS:
        fut.set_result(res)
    else:
        fut.set_exception(RaftError(_REASONS.get(err, f"raft error {err}")))
