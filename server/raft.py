"""pysyncobj behind an asyncio interface.

pysyncobj applies entries on its own tick thread; results are handed to the caller's loop with
`call_soon_threadsafe`. Two tunings matter for latency (see DESIGN "Known traps"): append-entries
go out on the tick right after commands arrive, batched: every command queued meanwhile rides in
one append-entries message (pysyncobj's own non-batch mode sends one round per command, which
capped 64-in-flight writes at ~1,000/s), and a new commit index is pushed at once too, so
followers apply (and answer forwarded writes) without waiting for the heartbeat period. A
single-node cluster is woken again right after it appends so the entry commits on the next tick.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import MultiFernet
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.encryptor import getEncryptor
from pysyncobj.pipe_notifier import PipeNotifier

from meshd.fsutil import make_private, private_dirs
from meshd.server.compaction import BackgroundSnapshots
from meshd.server.raft_hooks import (
    APPEND_BATCH_BYTES,
    _GroupCommit,
    _install_frame_cap,
    _pickle_bytes_as_bytes,
)
from meshd.server.store import CommandError, Store
from meshd.structs import Command, encode_command

log = logging.getLogger("meshd.raft")


def staggered(every: tuple[int, float], rng: random.Random | None = None) -> tuple[int, float]:
    """This server's compaction thresholds: the configured ones times a random 1-1.5 (entries)
    and 1-2 (seconds), drawn once per start, as hashicorp/raft draws its snapshot interval.

    Every server applies the same entries, so with equal thresholds all of them compacted at
    the same moment: on shared or small machines their snapshot builds competed for the CPU
    and the commits waited on all three at once (write p99 243 ms at 200k instances in the
    scale benchmark). Staggered, one server at a time compacts, and a quorum keeps committing.
    """
    r = rng or random
    entries, seconds = every
    return max(1, int(entries * r.uniform(1.0, 1.5))), seconds * r.uniform(1.0, 2.0)


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


_CONNECTION_RETRY = 1.0  # seconds between pysyncobj's attempts to (re)connect to a peer


class _FSM(SyncObjConsumer):
    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    @replicated
    def apply_command(self, data: bytes) -> Any:
        index = self._syncObj.raftLastApplied + 1
        return self.store.apply_encoded(data, index)

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
    snapshot_every: tuple[int, float] = (20000, 600.0)  # journal entries, seconds: compact


def reserve_port(host: str) -> socket.socket:
    """A port for dev mode's peerless Raft listener, held until Raft has bound it.

    Picking a free port and closing it leaves a window in which another process can take it,
    and pysyncobj then retries its bind forever, with no leader. pysyncobj cannot bind port 0
    and say which port it got, so the port is held instead: this socket is bound with
    SO_REUSEADDR and never listens, which on Linux lets Raft's own SO_REUSEADDR listener bind
    the same port beside it, while the kernel hands the port to nobody else. Close it once Raft
    has bound (RaftNode binds before its constructor returns). Where a system refuses the shared
    bind, pysyncobj's own retry (every second) binds the port once this socket is closed.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, 0))
    except OSError:
        s.close()
        raise
    return s


class RaftNode:
    def __init__(self, store: Store, settings: RaftSettings) -> None:
        self.store = store
        self.settings = settings
        self._fsm = _FSM(store)
        journal = dump = None
        self.snapshots: BackgroundSnapshots | None = None
        if settings.data_dir:
            raft_dir = os.path.join(settings.data_dir, "raft")
            private_dirs(raft_dir)  # the journal holds the CA key and every KV value
            make_private(raft_dir)
            journal = os.path.join(raft_dir, "journal.bin")
            dump = os.path.join(raft_dir, "snapshot.bin")
            self.snapshots = BackgroundSnapshots(store, dump, lambda: self._raft_log)
        self._last_contact = time.monotonic()
        # what `reported_leader` answers while an election is under way: the last leader seen
        # (address, when), and the server this one handed leadership to (address, until when)
        self._seen_leader: tuple[str, float] = ("", 0.0)
        self._handover: tuple[str, float] = ("", 0.0)
        entries, seconds = staggered(settings.snapshot_every)
        conf = SyncObjConf(
            journalFile=journal,
            fullDumpFile=dump,
            password=settings.password,
            appendEntriesUseBatch=True,
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES,
            appendEntriesPeriod=settings.append_entries_period,
            raftMinTimeout=settings.raft_min_timeout,
            raftMaxTimeout=settings.raft_max_timeout,
            leaderFallbackTimeout=settings.leader_fallback_timeout,
            autoTickPeriod=0.05,
            dynamicMembershipChange=True,
            useFork=False,  # fork() beside grpcio's threads is unsafe: see server/compaction.py
            serializer=self.snapshots.serialize if self.snapshots else None,
            serializeChecker=self.snapshots.check if self.snapshots else None,
            deserializer=self.snapshots.deserialize if self.snapshots else None,
            commandsWaitLeader=True,
            connectionRetryTime=_CONNECTION_RETRY,
            bindAddress=settings.bind,
            logCompactionMinEntries=entries,
            logCompactionMinTime=seconds,
        )
        self._single = not settings.peers
        # writes submitted (event-loop thread) and settled (Raft thread): each counter has one
        # writer, so neither loses an update; their difference is what is in flight
        self._submitted = 0
        self._settled = 0
        self.commits = 0  # writes this node submitted that committed (metrics)
        self._sent = (0, 0)  # (log index, commit index) last pushed to followers
        _install_frame_cap()
        _pickle_bytes_as_bytes()
        self._sync = SyncObj(
            settings.self_addr, list(settings.peers), conf=conf, consumers=[self._fsm]
        )
        if settings.peers:
            self._hold_first_election()
        # pysyncobj only builds its own wake-up pipe in its one-round-per-command mode
        self._notifier = PipeNotifier(self._sync._poller)
        self._journal: _GroupCommit | None = None
        if journal:
            self._install_group_commit(journal, settings.fsync)
        self._keep_next_index_ahead()
        # calls that must run on the Raft thread (pysyncobj's state is not locked)
        self._on_raft_thread: collections.deque[Callable[[], None]] = collections.deque()
        self._sync.addOnTickCallback(self._on_tick)

    def _hold_first_election(self) -> None:
        """A (re)started server must hear from the running leader before it may call an
        election. pysyncobj connects a pair of servers from the one with the larger address
        only, retrying every `_CONNECTION_RETRY`; a restarted server with the smaller address
        waits up to that long for the leader's connection, and its first election timeout
        (0.4-1.2 s) often expired first: it called an election that deposed a healthy leader
        (pysyncobj has no pre-vote), once every few restarts in testing. Its first timeout now
        starts after the leader's retry period; a new cluster elects its first leader ~1 s later.
        """
        s = self.settings
        first = _CONNECTION_RETRY + random.uniform(s.raft_min_timeout, s.raft_max_timeout)
        self._sync._SyncObj__raftElectionDeadline = time.monotonic() + first  # no public setter

    @property
    def _raft_log(self) -> Any:
        # read through the consumer: pysyncobj sets its back-reference before the tick thread
        # starts, while `self._sync` is only assigned once the constructor has returned
        sync = self._fsm._syncObj
        return sync._SyncObj__raftLog if sync is not None else None

    def _install_group_commit(self, path: str, flush: bool) -> None:
        # pysyncobj keeps these in name-mangled attributes; there is no public hook for either.
        self._journal = _GroupCommit(self._sync._SyncObj__raftLog, path, flush)
        self._sync._SyncObj__raftLog = self._journal
        if not flush:
            return
        transport = self._sync._SyncObj__transport
        send = transport.send
        journal = self._journal

        def durable_send(node: Any, message: Any) -> Any:
            journal.flush_if_dirty()
            return send(node, message)

        transport.send = durable_send

    def _keep_next_index_ahead(self) -> None:
        """Stop pysyncobj sending entries a follower already has in flight (pysyncobj 0.3.17).

        The leader sends entries optimistically, moving a follower's next index past them; but
        a success ack for an earlier message set it back to just after what that message held,
        so the next append-entries sent the in-flight entries again. The follower then truncated
        its log over them ("truncating already-applied log entries", hundreds per benchmark run)
        and appended the same entries once more: every burst's batches crossed the network and
        the journal twice or more. A success ack now only ever moves the next index forward; a
        follower missing entries still answers `reset`, and a reconnect still starts over.
        """
        sync = self._sync
        handle = sync._SyncObj__onMessageReceived  # name-mangled: pysyncobj has no hook
        next_index: dict[Any, int] = sync._SyncObj__raftNextIndex

        def on_message(node: Any, message: Any) -> None:
            ack = isinstance(message, dict) and message.get("type") == "next_node_idx"
            if not ack or message.get("reset") or not message.get("success"):
                handle(node, message)
                return
            ahead = next_index.get(node)
            handle(node, message)
            if ahead is not None and next_index.get(node, ahead) < ahead:
                next_index[node] = ahead

        sync._SyncObj__transport.setOnMessageReceivedCallback(on_message)

    def _wake(self) -> None:
        """Interrupt the tick thread's poll so it runs a tick now (thread-safe: a pipe write)."""
        try:  # noqa: SIM105 - on every write: try/except costs less than suppress()
            self._notifier.notify()
        except BlockingIOError:  # the pipe is full of wake-ups already: the tick will come
            pass

    def _on_tick(self) -> None:
        # Runs at the end of every tick, after new commands were appended to the log.
        # pysyncobj keeps these in name-mangled attributes; there is no public hook.
        sync = self._sync
        while self._on_raft_thread:
            try:  # an escaping exception would stop pysyncobj's thread
                self._on_raft_thread.popleft()()
            except Exception:
                log.exception("raft: a queued call failed")
        if self._journal is not None:
            self._journal.flush_if_dirty()
        if self._single:
            if self._submitted != self._settled:  # a lone node commits on the tick after it appends
                self._wake()
        elif sync._isLeader():
            entries = sync._SyncObj__raftLog
            state = (entries[-1][1] if len(entries) else 0, sync.raftCommitIndex)
            if state != self._sent:  # new entries or a new commit index: send them now, batched
                self._sent = state
                sync._SyncObj__sendAppendEntries()  # its sends flush the journal first
        leader = sync._getLeader()
        if leader is not None:
            self._last_contact = now = time.monotonic()
            self._seen_leader = (str(leader.address), now)

    async def apply(self, cmd: Command, timeout: float = 10.0) -> Any:
        return await self.apply_encoded(encode_command(cmd), timeout)

    async def apply_encoded(self, data: bytes, timeout: float = 10.0) -> Any:
        """Propose an already encoded entry; `apply` is the way in for commands (the admission
        checks run before it). Raw bytes exist here so a test can commit what admission would
        refuse, as a bug or an old journal might, and show the state machine survives it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(res: Any, err: int) -> None:
            self._settled += 1
            loop.call_soon_threadsafe(_settle, fut, res, err)

        self._submitted += 1
        self._fsm.apply_command(data, callback=done)
        self._wake()  # batch mode does not wake the tick by itself
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

    def set_passwords(self, passwords: list[str]) -> None:
        """Every key decrypts, the first encrypts (a keyring rotation). Slow (key derivation):
        call it off the event loop."""
        encryptor = MultiFernet([getEncryptor(p) for p in passwords])

        def swap() -> None:  # on the Raft thread, which owns the connections
            self._sync._SyncObj__encryptor = encryptor  # pysyncobj has no public setter
            # every connection (an outgoing one is reused for each reconnect) holds the
            # encryptor it was made with: all of them switch now, so established connections
            # stop accepting a removed key too, without being dropped
            transport = self._sync._SyncObj__transport
            for conn in [*transport._connections.values(), *transport._unknownConnections]:
                conn.encryptor = encryptor

        self._on_raft_thread.append(swap)
        self._wake()

    async def transfer_leadership(self, addr: str | None, timeout: float = 5.0) -> None:
        """Ask the Raft thread to hand leadership to `addr` (None: the most caught-up peer).
        Success means the request was sent; the caller watches `is_leader` for the outcome.

        pysyncobj refuses a target whose log is behind by even one entry, which is common while
        agents write (heartbeats, checks): it catches up within a round of append-entries, so a
        refusal is retried until `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            fut: asyncio.Future[Any] = loop.create_future()
            self._on_raft_thread.append(functools.partial(self._transfer, addr, loop, fut))
            self._wake()
            try:
                await asyncio.wait_for(fut, 10.0)
                return
            except RaftError:
                if not self.is_leader or loop.time() >= deadline:
                    raise
            await asyncio.sleep(self.settings.append_entries_period)

    def _transfer(self, addr: str | None, loop: asyncio.AbstractEventLoop, fut: Any) -> None:
        """On the Raft thread: send TimeoutNow, and remember the target for `reported_leader`."""
        target = addr or self._most_caught_up()

        def done(res: Any, err: int) -> None:
            if err == FAIL_REASON.SUCCESS:
                self._handover = (target, time.monotonic() + self.settings.raft_max_timeout)
            loop.call_soon_threadsafe(_settle, fut, res, err)

        if not target:
            done(None, FAIL_REASON.REQUEST_DENIED)
            return
        self._sync.transferLeadership(target, callback=done)

    def _most_caught_up(self) -> str:
        """pysyncobj's own choice for an automatic transfer, made here to know the target."""
        status = self._sync.getStatus()
        connected = [
            (status.get(f"match_idx_server_{n.id}", 0), n.id)
            for n in self._sync.otherNodes
            if status.get(f"partner_node_status_server_{n.id}") == 2
        ]
        return str(max(connected)[1]) if connected else ""

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

    def reported_leader(self) -> str:
        """The leader as /v1/status/leader reports it: Raft's own view, except while an
        election is under way, when every server (pysyncobj clears its leader as soon as a vote
        request arrives) would answer "" for a round trip even during a leadership transfer.

        Then the server that handed leadership over names its target, and the others the last
        leader they saw, for at most the shortest election timeout: a leader that is really gone
        is reported "" once that has passed (Consul's followers, too, keep naming the last
        leader until they hear from a new one).
        """
        node = self._sync._getLeader()
        if node is not None:
            return str(node.address)
        now = time.monotonic()
        target, until = self._handover
        if target and now < until:
            return target
        seen, at = self._seen_leader
        if seen != self.settings.self_addr and now - at < self.settings.raft_min_timeout:
            return seen
        return ""

    def peers(self) -> list[str]:
        return sorted([self.settings.self_addr, *(n.address for n in self._sync.otherNodes)])

    def status(self) -> dict[str, Any]:
        """pysyncobj's status (commit index, each follower's match index); read from the event
        loop while the Raft thread may change it, so a read that races a change is retried."""
        for _ in range(5):
            try:
                return dict(self._sync.getStatus())
            except RuntimeError:  # a dict changed size during iteration
                continue
        return {}

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
