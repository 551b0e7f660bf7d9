"""The liveness wire contract: heartbeat frames, server reports, and where a node attaches.

An agent keeps one WebSocket (`GET /rpc/liveness`, upgraded) open to the server its name
places it on, and sends one small frame per beat on it. The upgrade request is signed like any
RPC (cluster key HMAC, replay-guarded nonce, and mTLS when configured); that nonce then names
the connection, and every frame carries a sequence number and an HMAC over (nonce, sequence,
body), so a frame cannot be forged, replayed or moved to another connection even without TLS.

Each server keeps the timers of the nodes attached to it and sends the leader only what changed
(`LivenessReport`, summaries of its members); the leader turns accepted changes into one
`NodeStatusBatch` Raft entry per window.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec

from meshd.structs import CoordinateUpdate

LIVENESS_PATH = "/rpc/liveness"
REPORT_METHOD = "liveness_report"
MAX_FRAME = 64 * 1024

REAPED = 0  # a member status: the owning server forgot the node (reap_after elapsed)


class FrameError(Exception):
    """A heartbeat frame that does not verify; the connection is closed with this reason."""


class MemberSummary(msgspec.Struct, array_like=True, omit_defaults=True):
    """What the leader needs of one node a server owns (member lists, keyring counts,
    `serfHealth`). `Ago`: seconds since its last beat at that server, so the leader can tell
    the fresher of two servers' claims on a node that moved."""

    Node: str
    Address: str
    Status: int  # 1 alive, 3 left, 4 failed (Serf's codes), REAPED
    Role: str = "node"
    Datacenter: str = ""
    RPCAddr: str = ""
    Ago: float = 0.0
    KeyFingerprints: list[str] = []
    RaftAddr: str = ""


class LivenessReport(msgspec.Struct):
    """A server's changes since its last report to this leader (all of its members when
    `Full`: the first report to a new leader, or after the leader asked for it)."""

    Server: str  # the reporting server's node name
    RaftAddr: str  # its Raft address: the leader takes reports from its Raft peers only
    Full: bool = False
    Members: list[MemberSummary] = []
    Coords: list[CoordinateUpdate] = []


class LivenessReply(msgspec.Struct):
    """The leader's answer, once the changes it accepted are committed."""

    Forget: list[str] = []  # nodes that now belong elsewhere (or were force-left): drop them
    NeedFull: bool = False  # this leader has no full picture from the sender yet


def placement(node: str, servers: list[str]) -> list[str]:
    """The servers in the order `node` tries them: rendezvous hashing, so nodes spread evenly
    and a server joining or leaving moves only the nodes that must move."""

    def score(server: str) -> bytes:
        return hashlib.blake2b(f"{node}\0{server}".encode(), digest_size=8).digest()

    return sorted(dict.fromkeys(servers), key=score, reverse=True)


def _mac(key: bytes, conn: bytes, seq: int, body: bytes) -> bytes:
    return hmac.new(key, conn + seq.to_bytes(8, "big") + body, hashlib.sha256).digest()


_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(tuple[int, bytes, bytes])


def seal_frame(key: bytes | None, conn: str, seq: int, body: bytes) -> bytes:
    """One frame: (sequence, MAC, body); the MAC is empty when the cluster has no key."""
    mac = _mac(key, conn.encode(), seq, body) if key else b""
    return _frame_encoder.encode((seq, mac, body))


def open_frame(
    keys: list[bytes], conn: str, last_seq: int, frame: bytes
) -> tuple[int, bytes, bytes | None]:
    """(sequence, body, the key it verified under) of a frame that verifies under one of
    `keys` and comes after `last_seq`; FrameError otherwise. The reply is sealed with the same
    key, so an agent mid-rotation can check it with the key it signed with."""
    try:
        seq, mac, body = _frame_decoder.decode(frame)
    except msgspec.DecodeError as e:
        raise FrameError(f"bad heartbeat frame: {e}") from None
    if seq <= last_seq:
        raise FrameError("heartbeat frame out of sequence (replayed?)")
    if not keys:
        return seq, body, None
    for k in keys:
        if hmac.compare_digest(_mac(k, conn.encode(), seq, body), mac):
            return seq, body, k
    raise FrameError("heartbeat frame refused: wrong cluster key")


def conn_id(auth_header: str) -> str:
    """The connection's name: the nonce of its signed upgrade request (unique, replay-guarded)."""
    parts = auth_header.split(":")
    return parts[1] if len(parts) == 3 else ""


def decode_reply(data: bytes) -> Any:
    return msgspec.msgpack.decode(data)
