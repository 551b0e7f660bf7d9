"""The replicated catalog: tables, secondary indexes and per-topic modify indexes.

`apply` runs on pysyncobj's thread with the Raft index of the entry, so every node computes the
same CreateIndex/ModifyIndex. Stored structs are never mutated after insertion (updates replace
them), which lets readers hand out references under a short lock instead of copying.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import msgspec

from meshd.server import sessions, snapshot, tombstones
from meshd.server.acl_state import ACLState, BootstrapDoneError
from meshd.server.autopilot import AutopilotState
from meshd.server.catalog_rows import CatalogRows, _same, shared_check, shared_service
from meshd.server.catalog_rows import connect_destination as connect_destination
from meshd.server.coordinates import CoordinateState
from meshd.server.events import EventRing
from meshd.server.keyring import KeyringState
from meshd.server.mesh_state import CommandRejectedError, MeshState
from meshd.server.prepared_queries import PreparedQueryState
from meshd.server.snapshot import SnapshotData, SnapshotView
from meshd.server.txn import apply_txn
from meshd.server.watch import WatchSet
from meshd.structs import (
    CONSUL_SERVICE,
    HEALTH_PASSING,
    SERF_CHECK_ID,
    Barrier,
    Batch,
    Command,
    Deregister,
    EventFire,
    HealthCheck,
    KVEntry,
    KVOp,
    KVReap,
    Node,
    NodeService,
    NodeStatus,
    NodeStatusBatch,
    Register,
    Restore,
    Txn,
    decode_command,
)

log = logging.getLogger("meshd.store")
replace = msgspec.structs.replace


class CommandError(Exception):
    """A write the state machine rejected; the text is shown to the user (HTTP 400/500)."""


class StateConflictError(CommandError):
    """Refused because of the current state, where Consul answers 500 (an invalid session)."""


class CommandForbiddenError(CommandError):
    """A command the caller may not issue (HTTP 403 with this text); also raised at apply
    time, where a command checked on a lagging server meets the leader's newer state."""


def _decode_snapshot(data: bytes) -> SnapshotData:
    try:
        return snapshot.decode(data)
    except msgspec.DecodeError as e:
        raise CommandError(f"not a meshd snapshot: {e}") from None


class Store(CatalogRows):
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.watches = WatchSet()
        self.status_batches = 0  # NodeStatusBatch entries applied, and the nodes they carried
        self.status_batch_nodes = 0
        self._gen = 0  # snapshot generation: rows made in an older one are shared with a view
        self._reset()

    def _reset(self) -> None:
        self.index = 0
        self._names: tuple[int, dict[str, list[str]]] | None = None  # see service_names
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, NodeService]] = defaultdict(dict)
        self.by_name: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.by_dest: dict[str, set[tuple[str, str]]] = defaultdict(set)
        # service name -> how many of its instances carry each tag: /v1/catalog/services
        # answers from this instead of scanning every instance
        self.service_tags: dict[str, Counter[str]] = {}
        # node -> {check ID: status} of its checks that are not passing: /v1/health/state/
        # critical (or warning) reads these, not every check in the catalog
        self.not_passing: dict[str, dict[str, str]] = {}
        self.checks: dict[str, dict[str, HealthCheck]] = defaultdict(dict)
        self.kv: dict[str, KVEntry] = {}
        self.kv_keys: list[str] = []  # sorted, live keys and tombstones (their topics keep indexes)
        self.topics: dict[str, int] = {}
        self.mesh = MeshState()
        self.events = EventRing()
        self.sessions = sessions.SessionTable()
        self.acl = ACLState()
        self.autopilot = AutopilotState()
        self.coordinates = CoordinateState(self.nodes)
        self.prepared_queries = PreparedQueryState()
        self.keyring = KeyringState()
        # one handler per command type, as Consul's FSM registers one per request type
        self._handlers: dict[type[Any], Callable[[Any, int, set[str]], Any]] = {
            Register: self._register,
            Deregister: self._deregister,
            KVOp: self._kv,
            Batch: self._batch,
            Barrier: self._barrier,
            Restore: self._restore,
            NodeStatus: self._node_status,
            NodeStatusBatch: self._node_status_batch,
            **self.mesh.handlers(),
            EventFire: self.events.apply,
            Txn: lambda cmd, index, changed: apply_txn(self, cmd, index, changed),
            **sessions.handlers(self),
            **self.acl.handlers(),
            **self.autopilot.handlers(),
            **self.coordinates.handlers(),
            **self.prepared_queries.handlers(),
            **self.keyring.handlers(),
            KVReap: lambda cmd, index, changed: tombstones.reap(self, cmd, index, changed),
        }

    # ---- writes -------------------------------------------------------------------------------

    def apply(self, cmd: Command, index: int) -> Any:
        """Apply one committed entry; total: any failure becomes the entry's result.

        An exception escaping here would stop pysyncobj's apply loop, and the same entry would
        fail again on every restart (DESIGN "Known traps"). The servers validate commands before
        proposing them, so a failure here is a bug or a version skew: logged, never fatal.
        """
        changed: set[str] = set()
        with self.lock:
            self.index = max(self.index, index)
            try:
                result = self._dispatch(cmd, index, changed)
            except CommandError as e:
                result = e
            except Exception as e:
                log.exception("applying %s at index %d failed", type(cmd).__name__, index)
                result = CommandError(f"the servers could not apply {type(cmd).__name__}: {e}")
            for t in changed:
                self.topics[t] = index
                if t[:5] == "node:":  # every change to a node's checks moves its topic
                    self._index_checks(t[5:])
        if changed:
            self.watches.notify(changed)
        return result

    def apply_encoded(self, data: bytes, index: int) -> Any:
        """Decode a log entry and apply it; an entry this version cannot read is skipped."""
        try:
            cmd = decode_command(data)
        except msgspec.DecodeError as e:
            log.error("raft entry %d is not a command this version knows: %s", index, e)
            with self.lock:
                self.index = max(self.index, index)
            return CommandError(f"unreadable command: {e}")
        return self.apply(cmd, index)

    def _dispatch(self, cmd: Any, index: int, changed: set[str]) -> Any:
        handler = self._handlers.get(type(cmd))
        if handler is None:
            raise CommandError(f"unknown command {type(cmd).__name__}")
        try:
            return handler(cmd, index, changed)
        except BootstrapDoneError as e:  # a second bootstrap raced the first: 403, as Consul
            raise CommandForbiddenError(f"Permission denied: {e}") from None
        except CommandRejectedError as e:
            raise CommandError(str(e)) from None
        except sessions.SessionStateError as e:
            raise StateConflictError(str(e)) from None

    def _batch(self, cmd: Batch, index: int, changed: set[str]) -> bool:
        for op in cmd.Ops:  # validated by the server; a rejected op is skipped, not fatal
            with contextlib.suppress(CommandError):
                self._dispatch(op, index, changed)
        return True

    def _barrier(self, cmd: Barrier, index: int, changed: set[str]) -> bool:
        return True

    def _node_status(self, s: NodeStatus, index: int, changed: set[str]) -> bool:
        """The leader's liveness verdict, stored as Consul's `serfHealth` node check."""
        passing = s.Status == HEALTH_PASSING
        check = HealthCheck(
            Node=s.Node,
            CheckID=SERF_CHECK_ID,
            Name="Serf Health Status",
            Status=s.Status,
            Output=s.Output
            or ("Agent alive and reachable" if passing else "Agent not live or unreachable"),
        )
        # a server's node carries the `consul` service (its RPC port), as Consul's leader
        # registers it: `consul.service.consul` then finds the servers
        svc = (
            NodeService(ID=CONSUL_SERVICE, Service=CONSUL_SERVICE, Port=s.ServerPort)
            if s.ServerPort
            else None
        )
        reg = Register(
            Node=s.Node, Address=s.Address, SkipNodeUpdate=True, Check=check, Service=svc
        )
        return self._register(reg, index, changed)

    def _node_status_batch(self, b: NodeStatusBatch, index: int, changed: set[str]) -> bool:
        """Each node on its own: one that cannot apply (a bug, a skew) does not stop the rest."""
        self.status_batches += 1
        self.status_batch_nodes += len(b.Updates) + len(b.Deregisters)
        for s in b.Updates:
            with contextlib.suppress(CommandError):
                self._dispatch(s, index, changed)
        for node in b.Deregisters:
            if node in self.nodes:
                with contextlib.suppress(CommandError):
                    self._dispatch(Deregister(Node=node), index, changed)
        return True

    def _register(self, r: Register, index: int, changed: set[str]) -> bool:
        if not r.Node or (not r.Address and r.Node not in self.nodes):
            raise CommandError("Must provide node and address")
        for c in [*([r.Check] if r.Check else []), *r.Checks]:
            sid = c.ServiceID
            if (
                sid
                and not (r.Service and sid == r.Service.ID)
                and sid not in self.services.get(r.Node, {})
            ):
                raise CommandError(f'Unknown service ID "{sid}" for check ID "{c.CheckID}"')
        name = sys.intern(r.Node)  # one string for the node's every row (see _NO_TAGS)
        old = self.nodes.get(name)
        if not (r.SkipNodeUpdate and old):
            node = Node(
                Node=name,
                Address=r.Address or (old.Address if old else ""),
                ID=r.ID,
                Datacenter=r.Datacenter,
                TaggedAddresses=dict(r.TaggedAddresses),
                Meta=dict(r.NodeMeta),
            )
            if old is None or not _same(old, node):
                self.nodes[name] = replace(
                    node, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index
                )
                changed.update(("tbl:nodes", f"node:{name}"))
                self._touch_node_services(name, changed)
        if r.Service:
            self._put_service(name, r.Service, index, changed)
        for c in [*([r.Check] if r.Check else []), *r.Checks]:
            self._put_check(name, c, index, changed)
        return True

    def _put_service(self, node: str, svc: NodeService, index: int, changed: set[str]) -> None:
        old = self.services.get(node, {}).get(svc.ID)
        svc = shared_service(svc)
        if old is not None and _same(old, svc):
            return
        if old is not None:
            self._unindex_service(node, old)
            self._touch_service(node, old, changed)
        new = replace(svc, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index)
        self._rows(self.services, node)[svc.ID] = new
        self._index_service(node, new)
        self._touch_service(node, new, changed)
        # service checks carry the service's name and tags: keep them in step
        for c in list(self.checks.get(node, {}).values()):
            stale = c.ServiceName != new.Service or c.ServiceTags != new.Tags
            if c.ServiceID == svc.ID and stale:
                self._rows(self.checks, node)[c.CheckID] = replace(
                    c, ServiceName=new.Service, ServiceTags=new.Tags, ModifyIndex=index
                )

    def _put_check(self, node: str, c: HealthCheck, index: int, changed: set[str]) -> None:
        svc = self.services.get(node, {}).get(c.ServiceID) if c.ServiceID else None
        c = shared_check(c, node, svc)
        old = self.checks.get(node, {}).get(c.CheckID)
        if old is not None and _same(old, c):
            return
        self._rows(self.checks, node)[c.CheckID] = replace(
            c, CreateIndex=old.CreateIndex if old else index, ModifyIndex=index
        )
        self._touch_check(node, c, changed)
        if old is not None and old.ServiceID != c.ServiceID:
            self._touch_check(node, old, changed)
        sessions.check_changed(self, node, c.CheckID, c.Status, index, changed)

    def _deregister(self, d: Deregister, index: int, changed: set[str]) -> bool:
        if d.Node not in self.nodes:
            return True
        if d.CheckID:
            c = self.checks.get(d.Node, {}).get(d.CheckID)
            if c:
                del self._rows(self.checks, d.Node)[d.CheckID]
                self._touch_check(d.Node, c, changed)
                sessions.check_removed(self, d.Node, d.CheckID, index, changed)
            return True
        if d.ServiceID:
            self._drop_service(d.Node, d.ServiceID, index, changed)
            return True
        sessions.node_removed(self, d.Node, index, changed)
        for sid in list(self.services.get(d.Node, {})):
            self._drop_service(d.Node, sid, index, changed)
        for c in self.checks.pop(d.Node, {}).values():
            self._touch_check(d.Node, c, changed)
        self.services.pop(d.Node, None)
        del self.nodes[d.Node]
        changed.update(("tbl:nodes", f"node:{d.Node}"))
        return True

    def _drop_service(self, node: str, sid: str, index: int, changed: set[str]) -> None:
        svc = self.services.get(node, {}).get(sid)
        if svc is None:
            return
        del self._rows(self.services, node)[sid]
        self._unindex_service(node, svc)
        self._touch_service(node, svc, changed)
        for cid, c in list(self.checks.get(node, {}).items()):
            if c.ServiceID == sid:
                del self._rows(self.checks, node)[cid]
                changed.add("tbl:checks")
                sessions.check_removed(self, node, cid, index, changed)

    def _kv(self, op: KVOp, index: int, changed: set[str]) -> bool:
        old = self.kv.get(op.Key)
        if op.Verb in ("set", "cas"):
            if op.Verb == "cas" and (old.ModifyIndex if old else 0) != op.Index:
                return False
            self.kv[op.Key] = KVEntry(  # a plain write keeps the key's lock, as Consul's
                Key=op.Key,
                Value=op.Value,
                Flags=op.Flags,
                LockIndex=old.LockIndex if old else 0,
                Session=old.Session if old else "",
                CreateIndex=old.CreateIndex if old else index,
                ModifyIndex=index,
            )
            self.kv_index_key(op.Key)
            changed.update((f"kv:{op.Key}", "tbl:kv"))
            return True
        if op.Verb in ("delete", "delete-cas"):
            if op.Verb == "delete-cas" and (old is None or old.ModifyIndex != op.Index):
                return False
            if old is not None:
                del self.kv[op.Key]
                changed.update((f"kv:{op.Key}", "tbl:kv"))
            return True
        if op.Verb in ("lock", "unlock"):
            return sessions.apply_kv_lock(self, op, index, changed)
        if op.Verb == "delete-tree":
            for key in self.kv_range(op.Key):
                if self.kv.pop(key, None) is not None:
                    changed.update((f"kv:{key}", "tbl:kv"))
            return True
        raise CommandError(f"unknown KV verb {op.Verb!r}")

    def kv_index_key(self, key: str) -> None:
        i = bisect.bisect_left(self.kv_keys, key)
        if i == len(self.kv_keys) or self.kv_keys[i] != key:
            self.kv_keys.insert(i, key)

    def kv_range(self, prefix: str) -> list[str]:
        i = bisect.bisect_left(self.kv_keys, prefix)
        out = []
        while i < len(self.kv_keys) and self.kv_keys[i].startswith(prefix):
            out.append(self.kv_keys[i])
            i += 1
        return out

    def _restore(self, cmd: Restore, index: int, changed: set[str]) -> bool:
        snap = _decode_snapshot(cmd.Data)
        old_topics = set(self.topics)
        ltime = self.events.ltime
        self._load(snap)
        self.events.ltime = max(self.events.ltime, ltime)  # event LTimes never repeat
        self.index = index
        # every topic moves to this index so blocking readers see the change
        changed.update(
            old_topics
            | set(self.topics)
            | {"tbl:nodes", "tbl:services", "tbl:checks", "tbl:kv", "events"}
        )
        return True

    # ---- snapshots ------------------------------------------------------------------------------

    def service_names(self) -> dict[str, list[str]]:
        """Every service name with the union of its instances' tags (sorted, as Consul's).

        Built once per change of the services table (its topic index, which every change to a
        name or tag moves, as blocking readers rely on), then shared by every reader until the
        next: 9-11 ms at 20,000 names, paid by each poll of /v1/catalog/services before. Read
        only: readers encode it, never change it.
        """
        at = self.topics.get("tbl:services", 0)
        cached = self._names
        if cached is None or cached[0] != at:
            names = {n: sorted(self.service_tags.get(n, ())) for n in sorted(self.by_name)}
            cached = self._names = (at, names)
        return cached[1]

    def snapshot_view(self) -> SnapshotView:
        """A consistent copy of the whole state, cheap enough for the Raft thread: top-level
        tables are copied, rows are shared until the store next changes them (`_rows`)."""
        with self.lock:
            self._gen += 1
            return SnapshotView(
                index=self.index,
                nodes=dict(self.nodes),
                services=dict(self.services),
                checks=dict(self.checks),
                kv=dict(self.kv),
                topics=dict(self.topics),
                small={name: getattr(self, name).dump() for name in snapshot.SMALL_TABLES},
            )

    def dump(self) -> bytes:
        return snapshot.encode(self.snapshot_view(), pause=False)

    @staticmethod
    def check_snapshot(data: bytes) -> None:
        """Refuse a snapshot that would not load, before it is proposed: load it into a scratch
        store, since a restore that fails half-way through apply would leave half a state."""
        scratch = Store()
        try:
            scratch._load(_decode_snapshot(data))
        except CommandError:
            raise
        except Exception as e:
            raise CommandError(f"not a meshd snapshot: {e}") from None

    def load(self, data: bytes) -> None:
        snap = snapshot.decode(data)
        with self.lock:
            self._load(snap)
            changed = set(self.topics)
        self.watches.notify(changed | {"tbl:nodes", "tbl:services", "tbl:checks", "tbl:kv"})

    def _load(self, snap: SnapshotData) -> None:
        self._reset()
        self.index = snap.index
        self.nodes = {sys.intern(n.Node): n for n in snap.nodes}
        for name, s in snap.services:
            node, s = sys.intern(name), shared_service(s)
            self.services[node][s.ID] = s
            self._index_service(node, s)
        for c in snap.checks:
            node = sys.intern(c.Node)
            svc = self.services.get(node, {}).get(c.ServiceID) if c.ServiceID else None
            self.checks[node][c.CheckID] = shared_check(c, node, svc)
        for node in self.checks:
            self._index_checks(node)
        for e in snap.kv:
            self.kv[e.Key] = e
        self.topics = dict(snap.topics)
        self.mesh.load(snap.mesh)
        self.events.load(snap.events)
        self.sessions.load(snap.sessions, self.kv)
        self.acl.load(snap.acl)
        self.autopilot.load(snap.autopilot)
        self.coordinates.load(snap.coordinates, self.nodes)
        self.prepared_queries.load(snap.prepared_queries)
        self.keyring.load(snap.keyring)
        tombstones = {t[3:] for t in self.topics if t.startswith("kv:")}
        self.kv_keys = sorted(tombstones | set(self.kv))
