"""Raft log compaction that does not stop writes, and a journal that survives kill -9 during it.

pysyncobj compacts by serialising the whole state on its tick thread: every write waited for it
(0.3-0.9 s at 20k-60k catalog entries, DESIGN "Known traps"). Its `useFork` mode would move the
work to a child process, but fork() in a process running grpcio and other threads is unsafe
(grpc documents fork support only with GRPC_ENABLE_FORK_SUPPORT and no active channels; a
child that inherits a lock held by another thread deadlocks) and doubles RSS under write load
as pages are copied. So compaction uses pysyncobj's custom serializer hooks instead:

- `serialize` (tick thread) takes `Store.snapshot_view()`, O(nodes), and starts a thread;
- the thread encodes the view a few thousand rows at a time (`snapshot.encode`), writes the file
  in the format pysyncobj itself writes (gzip of a pickled tuple, so older meshd reads it and it
  reads older files), fsyncs it and renames it over the last snapshot;
- `check` (tick thread) reports the outcome once; pysyncobj then drops the journal's prefix.

Two crash windows pysyncobj leaves open are closed here: its journal truncation rewrites the
journal in place (a kill -9 half-way loses every entry not yet rewritten), so `rewrite_journal`
writes the kept entries to a new file and renames it; and a snapshot renamed into place before
the journal was truncated made pysyncobj discard the whole journal on the next start (it keeps a
journal only when it starts exactly at the snapshot), so `deserialize` drops the covered prefix
itself first.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.journal import FileJournal

from meshd.server import snapshot
from meshd.server.store import Store

log = logging.getLogger("meshd.raft")

_GZIP_LEVEL = 1  # ~5x faster than gzip's default 9, ~40% larger (measured: 267 vs 194 KB)
# 5: the encoded bytearray is written as it is (protocol 4 would copy it into bytes first, ~90 MB
# under the GIL at 200k instances; pysyncobj's protocol 2 even re-encodes bytes as text);
# every Python meshd supports (3.11+) reads it
_PICKLE_PROTOCOL = 5


class SnapshotFileError(Exception):
    """A snapshot file this server cannot read (the reason is logged; pysyncobj carries on)."""


class BackgroundSnapshots:
    """pysyncobj's `serializer`, `serializeChecker` and `deserializer`, writing off its thread.

    pysyncobj calls `serialize(tmp_file, raft_data)` with its own temp name and renames that
    name over the snapshot as soon as the call returns; nothing is ever written there (the
    rename fails, which pysyncobj ignores, and its state stays "serializing" until `check`
    reports). The thread writes beside it and renames when the file is complete and durable.
    """

    def __init__(self, store: Store, path: str, journal: Callable[[], Any]) -> None:
        self.store = store
        self.path = path
        self._journal = journal  # pysyncobj's journal, read on the tick thread only
        self._lock = threading.Lock()
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._thread: threading.Thread | None = None
        # figures for /v1/agent/metrics: the last snapshot written, and the tick thread's share
        self.build_seconds = 0.0
        self.view_seconds = 0.0
        self.bytes = 0
        self.written = 0
        self.failed = 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".tmp")  # pysyncobj's own temp name must not exist (see class doc)

    # ---- pysyncobj hooks (tick thread) ----------------------------------------------------

    def serialize(self, tmp_file: str, raft_data: tuple[Any, ...]) -> None:
        started = time.monotonic()
        try:
            view = self.store.snapshot_view()
            self.view_seconds = time.monotonic() - started
            with self._lock:
                self._state = SERIALIZER_STATE.SERIALIZING
            self._thread = threading.Thread(
                target=self._write,
                args=(view, raft_data, _inode(self.path), started),
                name="meshd-snapshot",
                daemon=True,
            )
            self._thread.start()
        except Exception:
            log.exception("raft: could not start a snapshot")
            self._finish(SERIALIZER_STATE.FAILED)

    def check(self) -> int:
        with self._lock:
            state = self._state
            if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
                self._state = SERIALIZER_STATE.NOT_SERIALIZING
            return state

    def deserialize(self, file_name: str) -> tuple[Any, ...]:
        """Load a snapshot (at start, or one the leader sent) into the store; pysyncobj's
        bookkeeping (the last two entries it covers, the cluster) is returned to it."""
        consumers, last, before, cluster = read_snapshot_file(file_name)
        self.store.load(consumers[1])
        self._drop_covered_prefix(before, last)
        return last, before, cluster

    # ---- the writer thread ------------------------------------------------------------------

    def _write(self, view: snapshot.SnapshotView, raft_data: Any, inode: int, t0: float) -> None:
        tmp = self.path + ".meshd-tmp"
        try:
            data = snapshot.encode_buffer(view)
            last, before, cluster = raft_data
            # pysyncobj's own layout: ([its attributes, each consumer's state], entries, nodes)
            payload = ([{"_SyncObj__enabledCodeVersion": 0}, data], last, before, cluster)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=_GZIP_LEVEL) as gz:
                    pickle.dump(payload, gz, protocol=_PICKLE_PROTOCOL)
                raw.flush()
                os.fsync(raw.fileno())
                size = raw.tell()
            with self._lock:
                if _inode(self.path) != inode:  # the leader's snapshot arrived meanwhile
                    raise SnapshotFileError("a newer snapshot was installed while writing")
                os.replace(tmp, self.path)
            _fsync_dir(self.path)
            self.bytes = size
            self.build_seconds = time.monotonic() - t0
            self.written += 1
            self._finish(SERIALIZER_STATE.SUCCESS)
        except Exception as e:
            log.warning("raft: snapshot at index %d not written: %s", view.index, e)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.failed += 1
            self._finish(SERIALIZER_STATE.FAILED)

    def _finish(self, state: int) -> None:
        with self._lock:
            self._state = state

    def _drop_covered_prefix(self, before: Any, last: Any) -> None:
        """A journal that still holds entries the snapshot covers (a crash came between the
        snapshot's rename and the journal's truncation) starts at the snapshot from now on;
        pysyncobj would otherwise throw the whole journal away, entries after it included."""
        journal = self._journal()
        if journal is None or len(journal) < 2:
            return
        at = before[1] - journal[0][1]
        if 0 < at < len(journal) - 1 and journal[at] == before and journal[at + 1] == last:
            log.info("raft: journal starts before the snapshot; dropping %d covered entries", at)
            journal.deleteEntriesTo(at)


def read_snapshot_file(path: str) -> tuple[Any, Any, Any, Any]:
    """(consumer data, last entry, the entry before, cluster) from pysyncobj's file format."""
    try:
        with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
            data = pickle.load(gz)
        consumers, last, before, cluster = data
        return consumers, last, before, cluster
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise SnapshotFileError(f"snapshot {path} is unreadable: {e}") from None


def rewrite_journal(journal: FileJournal, path: str, entry_to: int) -> FileJournal:
    """pysyncobj's `deleteEntriesTo`, crash-safe: the kept entries go to a new file that is
    renamed over the journal, so a kill -9 at any point leaves the old journal or the new."""
    kept = [journal[i] for i in range(entry_to, len(journal))]
    journal.onOneSecondTimer()  # the commit index and term live in journal.bin.meta: save them
    tmp, old = path + ".compact", path + ".old"
    for leftover in (tmp, old):  # from a crash; FileJournal would read a leftover's records
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
    fresh = FileJournal(tmp)
    for entry in kept:
        fresh.add(*entry)
    fresh._destroy()  # msyncs and closes
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    journal._destroy()
    # freeing a large journal's blocks takes ~10 ms per 50 MB: the rename must not do it on
    # this thread, so the old file keeps a second name until a background thread unlinks it
    os.link(path, old)
    os.replace(tmp, path)
    _fsync_dir(path)
    threading.Thread(target=os.unlink, args=(old,), name="meshd-journal-unlink").start()
    return FileJournal(path)


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
