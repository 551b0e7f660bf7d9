"""pysyncobj corrections that hook its internals: the pre-authentication frame cap on Raft
connections, the append-entries batch size, the pickle protocol, and the group-committed
journal.

pysyncobj offers no hooks for these, so they wrap its name-mangled internals; kept apart from
the asyncio interface (server/raft.py) that installs them.
"""

from __future__ import annotations

import logging
import pickle
import struct
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.tcp_connection import TcpConnection

from meshd.server.compaction import rewrite_journal

log = logging.getLogger("meshd.raft")

# pysyncobj frames each message with a 4-byte length and buffers until that many bytes arrived,
# before decrypting anything: a peer without the key could announce 2 GiB and make a server hold
# what it sends (measured: 48 MiB and 10 s of CPU in quadratic buffer copies). Until a
# connection has delivered one message that decrypted with the cluster key, its frames are
# capped (the key exchange is a ~200-byte token) and it is dropped on a larger announcement.
PREAUTH_MAX_MESSAGE = 64 * 1024
# pysyncobj sends an entry larger than its append-entries batch (64 KiB by default) in chunks,
# and flags the last chunk by the entry's length before pickling, which protocol 2 inflates
# (bytes >= 0x80 take two): the follower then unpickles a cut entry, its tick fails, and the
# entry only lands with a later chunk. A 500-service batch is ~150 KiB, so this was routine.
# Every entry up to this size now travels in one message; only a larger snapshot restore is
# chunked. It also bounds how much of a backlog one message carries to a lagging follower.
APPEND_BATCH_BYTES = 64 * 1024 * 1024
_FRAME = struct.Struct("i")


def _pickle_bytes_as_bytes() -> None:
    """pysyncobj pickles every entry and message with protocol 2, where a bytes object travels
    as a latin-1 string encoded in UTF-8: each byte >= 0x80 takes two, and msgpack headers are
    mostly such bytes, so an entry grew 1.5x in the journal, in memory and on the wire, and was
    converted twice. Protocol 5 keeps bytes as bytes; every reader detects the protocol, so
    entries and journals written before still load, and mixed versions understand each other.
    """
    setattr(pysyncobj_pickle, "__protocol", pickle.HIGHEST_PROTOCOL)  # its module global


def _install_frame_cap() -> None:
    """Wrap pysyncobj's connection read/parse (name-mangled: it offers no hook). Idempotent."""
    if getattr(TcpConnection, "_meshd_capped", False):
        return
    read = TcpConnection._TcpConnection__processRead
    parse = TcpConnection._TcpConnection__processParseMessage

    def capped_read(conn: Any) -> bool:
        more = bool(read(conn))
        if getattr(conn, "_meshd_trusted", False):
            return more
        buf = conn._TcpConnection__readBuffer
        if len(buf) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(buf)
            if not 0 <= length <= PREAUTH_MAX_MESSAGE:
                log.warning(
                    "dropping Raft connection from %s: unauthenticated frame of %d bytes announced",
                    _peer(conn),
                    length,
                )
                conn.disconnect()
                return False
        # parse (and so authenticate) what has arrived before reading any more of it
        return more and len(buf) <= PREAUTH_MAX_MESSAGE + _FRAME.size

    def trusting_parse(conn: Any) -> Any:
        message = parse(conn)
        if message is not None and conn.encryptor is not None:
            conn._meshd_trusted = True  # it decrypted with the cluster key
        return message

    TcpConnection._TcpConnection__processRead = capped_read
    TcpConnection._TcpConnection__processParseMessage = trusting_parse
    TcpConnection._meshd_capped = True


def _peer(conn: Any) -> str:
    try:
        return str(conn._TcpConnection__socket.getpeername()[0])
    except (AttributeError, OSError):
        return "?"


class _GroupCommit:
    """Journal wrapper: one msync per batch of entries, before anything that acknowledges them.

    pysyncobj writes its journal into an mmap and never flushes it (its issue #84); flushing per
    entry costs ~40 writes/s (its PR #98). We mark the journal dirty on append and flush once
    before the next message leaves this node (a follower's ack, a leader's append-entries) and at
    the end of every tick (a lone node's commit), so nothing is acknowledged before it is durable.
    """

    def __init__(self, journal: Any, path: str, flush: bool) -> None:
        self._j = journal
        self._path = path
        self._flush = flush  # False: raft_fsync off, the wrapper only makes truncation atomic
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
        """After a snapshot: written to a new file and renamed, never rewritten in place."""
        self._j = rewrite_journal(self._j, self._path, entry_to)
        self.dirty = False

    def flush_if_dirty(self) -> None:
        if self.dirty and self._flush:
            self.dirty = False
            self._j.flush()
            self.flushes += 1
