"""The agent<->server and server<->server RPC contract.

RPC is HTTP/1.1 (HTTPS with the `tls` config) on the server port, POST /rpc/<method>, msgpack
bodies. HTTP was chosen over gRPC for this channel because aiohttp is already the agent's stack,
keep-alive pooling and TLS come with it, and a blocking query is simply a long request.
When the cluster key (`encrypt`) is set every request carries an HMAC of its body under that key,
so only holders of the key can write to or read from the servers. The header is
`TIMESTAMP:NONCE:MAC`: the timestamp bounds how long a captured request could be replayed
(MAX_SKEW), and the random nonce, remembered by each server for that long (`ReplayGuard`),
makes a replay within it fail too.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import time
from typing import Any

import msgspec

from meshd import queries as q
from meshd.acl.model import ACLPolicy, ACLRole, ACLToken, ResolvedToken
from meshd.structs import (
    CheckServiceNode,
    Command,
    EventsPage,
    HealthCheck,
    KVEntry,
    Node,
    NodeService,
    Session,
    TxnReply,
)

AUTH_HEADER = "X-Meshd-Auth"
MAX_SKEW = 300.0
NONCE_BYTES = 16
MAX_NONCES = 1_000_000  # ~100 MB at most; live nonces are about 300 s of a server's requests


class ReadRequest(msgspec.Struct):
    Query: q.Query
    MinIndex: int = 0
    Wait: float = 0.0
    Consistency: str = "default"
    Token: str = ""  # the caller's ACL SecretID; ACL state is read only with acl:read


class ReadReply(msgspec.Struct):
    Index: int
    Value: msgspec.Raw
    KnownLeader: bool = True
    LastContact: int = 0


class WriteRequest(msgspec.Struct):
    Command: Command
    Token: str = ""  # the caller's ACL SecretID; the server authorises the command with it


class WriteReply(msgspec.Struct):
    Result: Any = None
    Error: str = ""
    Code: int = 0  # HTTP-ish: 400 rejected by the state machine, 500 cluster error


class Heartbeat(msgspec.Struct):
    Node: str
    Address: str
    Datacenter: str
    Role: str = "node"  # "consul" for servers, as Consul's member tags say
    RPCAddr: str = ""
    RaftAddr: str = ""
    Leaving: bool = False
    Coord: dict[str, Any] | None = None  # the sender's network coordinate (meshd.coordinate)
    KeyringVersion: int = 0  # the replicated keyring version the sender holds
    KeyFingerprints: list[str] = []  # its keys' fingerprints, primary first (meshd.keyring)


class Member(msgspec.Struct):
    Name: str
    Addr: str
    Role: str
    Status: int  # 1 alive, 3 left, 4 failed (Consul's serf codes)
    Datacenter: str = ""
    RPCAddr: str = ""
    Server: str = ""  # the server the node is attached to (its heartbeats and timer)


class ServerInfo(msgspec.Struct):
    """What a server says about itself when another server joins."""

    RaftAddr: str
    RPCAddr: str
    Started: bool
    Peers: list[str] = []  # raft addresses in the cluster (when started)
    Known: list[list[str]] = []  # [raft, rpc] pairs of servers it knows (before bootstrap)
    Leader: str = ""
    Datacenter: str = ""


class PeerChange(msgspec.Struct):
    RaftAddr: str
    Remove: bool = False


VALUE_TYPES: dict[type, Any] = {
    q.Services: dict[str, list[str]],
    q.ServiceNodes: list[CheckServiceNode],
    q.Nodes: list[Node],
    q.NodeInfo: tuple[Node, list[NodeService], list[HealthCheck]] | None,
    q.ServiceChecks: list[HealthCheck],
    q.ChecksInState: list[HealthCheck],
    q.KVGet: list[KVEntry],
    q.KVKeys: list[str],
    q.ConfigEntries: list[dict[str, Any]],
    q.CARoots: dict[str, Any],
    q.TxnRead: TxnReply,
    q.Events: EventsPage,
    q.Sessions: list[Session],
    q.ACLTokens: list[ACLToken],
    q.ACLPolicies: list[ACLPolicy],
    q.ACLRoles: list[ACLRole],
    q.ACLResolve: ResolvedToken | None,
    q.AutopilotConfig: dict[str, Any],
    q.Coordinates: list[dict[str, Any]],
    q.PreparedQueries: list[dict[str, Any]],
}


class SessionRenew(msgspec.Struct):
    ID: str


class CAConfigRequest(msgspec.Struct):
    Config: dict[str, Any]
    ForceRotate: bool = False
    Token: str = ""  # the caller's ACL SecretID: operator:write


class SignRequest(msgspec.Struct):
    CSR: str
    Service: str
    Token: str = ""  # the agent's (ACLs: service:write on Service, or node:write where it runs)


class SignReply(msgspec.Struct):
    CertPEM: str  # the leaf followed by any cross-signed intermediates
    SerialNumber: str
    ValidAfter: str
    ValidBefore: str
    RootID: str


encoder = msgspec.msgpack.Encoder()


def decode_value(query: q.Query, raw: bytes) -> Any:
    return msgspec.msgpack.decode(raw, type=VALUE_TYPES[type(query)])


def sign(
    key: bytes | None, path: str, body: bytes, now: float | None = None, nonce: str | None = None
) -> str:
    if not key:
        return ""
    ts = str(int(now if now is not None else time.time()))
    nonce = nonce if nonce is not None else secrets.token_hex(NONCE_BYTES)
    msg = b"\n".join((ts.encode(), nonce.encode(), path.encode(), body))
    return f"{ts}:{nonce}:{hmac.new(key, msg, hashlib.sha256).hexdigest()}"


def _fields(header: str) -> tuple[int, str, str] | None:
    parts = header.split(":")
    if len(parts) != 3:
        return None
    ts, nonce, mac = parts
    if len(nonce) != 2 * NONCE_BYTES or len(mac) != 64:
        return None
    try:
        bytes.fromhex(nonce)
        return int(ts), nonce, mac
    except ValueError:
        return None


def plausible(header: str | None) -> bool:
    """The header's shape and freshness, checked before the body is read: a caller who cannot
    produce even that gets nothing buffered for it."""
    got = _fields(header) if header else None
    return got is not None and abs(time.time() - got[0]) <= MAX_SKEW


def verify_any(keys: list[bytes], path: str, body: bytes, header: str | None) -> bool:
    """`verify` against every key of the keyring (during a rotation agents sign with either)."""
    if not keys:
        return True
    return any(verify(k, path, body, header) for k in keys)


def verify(key: bytes | None, path: str, body: bytes, header: str | None) -> bool:
    """Constant-time check of a request's HMAC and freshness (replays: `ReplayGuard`)."""
    if not key:
        return True
    if header is None or not plausible(header):
        return False
    ts, nonce, _ = header.split(":")
    expected = sign(key, path, body, float(ts), nonce)
    return hmac.compare_digest(expected, header)


class ReplayError(Exception):
    """Why a verified request is still refused (HTTP 403, or 503 when the ledger is full)."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.status = status


class ReplayGuard:
    """The nonces of verified requests, each kept until its timestamp leaves the skew window
    (after that `plausible` refuses the header anyway). Only requests that carried a valid MAC
    are recorded, so only key holders fill it; it is still capped, and a full ledger refuses
    (503: the caller tries another server) rather than forgetting a nonce that is still live."""

    def __init__(self, cap: int = MAX_NONCES) -> None:
        self.cap = cap
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def first_use(self, header: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        ts, nonce, _ = header.split(":")
        if nonce in self._seen:
            raise ReplayError("RPC refused: this request was already received (replay)")
        if len(self._seen) >= self.cap:
            raise ReplayError("RPC refused: too many requests in the replay window", 503)
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (int(ts) + MAX_SKEW, nonce))
