"""A stand-in Kubernetes API server for the agent's Kubernetes mode (no real one runs here).

It implements the parts of the real protocol the agent relies on, as the API concepts page
describes them (https://kubernetes.io/docs/reference/using-api/api-concepts/):

- collections of pods, Services (core/v1) and EndpointSlices (discovery.k8s.io/v1), listed
  cluster-wide with a `metadata.resourceVersion` taken from one global counter;
- `?watch=1&resourceVersion=N`: every change after N (from a bounded history), then live ones,
  as newline-delimited `{"type", "object"}` events; `fieldSelector=spec.nodeName=X`, with an
  object that stops matching sent as DELETED and one that starts matching as ADDED;
- `allowWatchBookmarks=true`: BOOKMARK events carrying only the current resourceVersion;
- a resourceVersion older than the history (compacted, or lost in a restart) answers the watch
  with an ERROR event holding a `410 Expired` Status, as the real server does;
- `timeoutSeconds`: the server ends the watch;
- create, replace and delete of Services in a namespace (the `to_k8s` sync writes them), with
  409 on a stale resourceVersion or an existing name.

Every object stored, whether a test puts it or meshd writes it, is first validated strictly
against the official Kubernetes 1.30 schema (`kubernetes-validate`); a write that fails is
refused with 422 as the real server would. Runs on its own event loop in a thread; the test
calls its methods from the test's thread.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

Obj = dict[str, Any]
SCHEMA_VERSION = "1.30"
# (API path prefix, plural) -> (apiVersion, kind)
KINDS = {
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
}


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


def _matches(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        node: Any = obj
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (node or "") != value:
            return False
    return True


@dataclass
class _Watcher:
    plural: str
    selector: str | None
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)


class FakeAPIServer:
    def __init__(self, port: int, bookmark_interval: float = 0.5, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.bookmark_interval = bookmark_interval
        self.objects: dict[str, dict[str, Obj]] = {p: {} for p in KINDS}
        self.rv = 100
        self.history: list[tuple[int, str, str, Obj, Obj | None]] = []  # rv, plural, type, obj, old
        self.oldest = self.rv + 1  # the first resourceVersion still in the history
        self.watchers: list[_Watcher] = []
        self.counts = {"list": 0, "watch": 0, "expired": 0, "bookmark": 0}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.refuse_watches = False

    # ---- driving it from a test (thread-safe) ------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def start(self) -> FakeAPIServer:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)

    def restart(self, while_down: Callable[[FakeAPIServer], None] | None = None) -> None:
        """Down (every connection dropped), changed meanwhile, up with an empty watch history:
        a client resuming from its old resourceVersion gets 410 and must relist."""
        self.stop()
        if while_down is not None:
            while_down(self)
        self._call(self._forget_history)
        self.start()

    def put(self, obj: Obj) -> Obj:
        """Create or update; the object is validated strictly first (ValidationError if not)."""
        return self._call(lambda: self._put(copy.deepcopy(obj)))

    def delete(self, plural: str, namespace: str, name: str) -> None:
        self._call(lambda: self._delete(plural, namespace, name))

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self._call(lambda: copy.deepcopy(self.objects[plural].get(f"{namespace}/{name}")))

    def compact(self, while_cut: Callable[[FakeAPIServer], None]) -> None:
        """Every watch ends and new ones are refused (503) while `while_cut` changes objects;
        then the history is compacted away, as etcd does: the watchers' events for those
        changes are gone, and a watch from an old resourceVersion gets 410."""
        # both steps on the server's loop, in one go: a watch must not slip in between them
        self._call(lambda: self._cut_watches(refuse=True))  # also ends the open watches
        try:
            while_cut(self)
        finally:
            self._call(lambda: self._cut_watches(refuse=False))

    def _cut_watches(self, *, refuse: bool) -> None:
        self._forget_history()
        self.refuse_watches = refuse

    def stat(self, name: str) -> int:
        return int(self._call(lambda: self.counts[name]))

    # ---- the store (on the server's loop) --------------------------------------------------

    def _forget_history(self) -> None:
        self.history.clear()
        self.oldest = self.rv + 1
        for w in self.watchers:
            w.queue.put_nowait(None)

    @staticmethod
    def _plural(obj: Obj) -> str:
        for plural, (_, kind) in KINDS.items():
            if kind == obj.get("kind"):
                return plural
        raise ValueError(f"kind {obj.get('kind')!r} is not served here")

    def _put(self, obj: Obj) -> Obj:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
        plural = self._plural(obj)
        meta = obj["metadata"]
        meta.setdefault("namespace", "default")
        key = f"{meta['namespace']}/{meta['name']}"
        old = self.objects[plural].get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{plural}-{self.rv}")
        self.objects[plural][key] = obj
        self._record(plural, "MODIFIED" if old else "ADDED", obj, old)
        return obj

    def _delete(self, plural: str, namespace: str, name: str) -> Obj | None:
        old = self.objects[plural].pop(f"{namespace}/{name}", None)
        if old is not None:
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(plural, "DELETED", gone, old)
        return old

    def _record(self, plural: str, kind: str, obj: Obj, old: Obj | None) -> None:
        self.history.append((self.rv, plural, kind, obj, old))
        for w in self.watchers:
            if w.plural == plural:
                event = self._as_seen(w.selector, kind, obj, old)
                if event is not None:
                    w.queue.put_nowait(event)

    @staticmethod
    def _as_seen(selector: str | None, kind: str, obj: Obj, old: Obj | None) -> Obj | None:
        """The event a watcher with this field selector gets (the real server's rule)."""
        now = kind != "DELETED" and _matches(obj, selector)
        before = old is not None and _matches(old, selector)
        if kind == "DELETED":
            return {"type": "DELETED", "object": obj} if before else None
        if now and before:
            return {"type": "MODIFIED", "object": obj}
        if now:
            return {"type": "ADDED", "object": obj}
        if before:
            return {"type": "DELETED", "object": obj}
        return None

    # ---- HTTP ----------------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application()
        for prefix in ("/api/v1", "/apis/discovery.k8s.io/v1"):
            app.router.add_get(prefix + "/{plural}", self._collection)
            app.router.add_get(prefix + "/namespaces/{ns}/{plural}", self._collection)
            app.router.add_post(prefix + "/namespaces/{ns}/{plural}", self._create)
            app.router.add_put(prefix + "/namespaces/{ns}/{plural}/{name}", self._replace)
            app.router.add_delete(prefix + "/namespaces/{ns}/{plural}/{name}", self._remove)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def _stop(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _served(self, request: web.Request) -> str:
        plural = request.match_info["plural"]
        api = "v1" if request.path.startswith("/api/v1") else "discovery.k8s.io/v1"
        if plural not in KINDS or KINDS[plural][0] != api:
            raise web.HTTPNotFound(text=json.dumps(_status(404, "NotFound", "no such resource")))
        return plural

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        plural = self._served(request)
        q = request.query
        ns = request.match_info.get("ns")
        selector = q.get("fieldSelector") or None
        if ns:
            selector = ",".join(filter(None, [selector, f"metadata.namespace={ns}"]))
        if _flag(q.get("watch")):
            return await self._watch(request, plural, selector)
        self.counts["list"] += 1
        api, kind = KINDS[plural]
        items = [o for o in self.objects[plural].values() if _matches(o, selector)]
        return web.json_response(
            {
                "kind": f"{kind}List",
                "apiVersion": api,
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    async def _watch(
        self, request: web.Request, plural: str, selector: str | None
    ) -> web.StreamResponse:
        if self.refuse_watches:
            return web.json_response(_status(503, "ServiceUnavailable", "cut"), status=503)
        self.counts["watch"] += 1
        q = request.query
        since = int(q.get("resourceVersion") or self.rv)
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        timeout = float(q.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)

        async def send(event: Obj) -> None:
            await resp.write(json.dumps(event).encode() + b"\n")

        if since + 1 < self.oldest:
            self.counts["expired"] += 1
            message = f"too old resource version: {since} ({self.oldest - 1})"
            await send({"type": "ERROR", "object": _status(410, "Expired", message)})
            return resp
        watcher = _Watcher(plural, selector)
        for rv, p, kind, obj, old in self.history:  # replay, then live
            if rv > since and p == plural:
                event = self._as_seen(selector, kind, obj, old)
                if event is not None:
                    watcher.queue.put_nowait(event)
        self.watchers.append(watcher)
        deadline = self.loop.time() + timeout
        try:
            while (left := deadline - self.loop.time()) > 0:
                try:
                    wait = min(left, self.bookmark_interval) if bookmarks else left
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and self.loop.time() < deadline:
                        self.counts["bookmark"] += 1
                        api, kind = KINDS[plural]
                        meta = {"resourceVersion": str(self.rv)}
                        bookmark = {"apiVersion": api, "kind": kind, "metadata": meta}
                        await send({"type": "BOOKMARK", "object": bookmark})
                    continue
                if event is None:
                    break  # the server drops this watch (compaction, shutdown)
                await send(event)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        return resp

    async def _body(self, request: web.Request, plural: str) -> Obj:
        body = await request.json()
        api, kind = KINDS[plural]
        body.setdefault("apiVersion", api)
        body.setdefault("kind", kind)
        body.setdefault("metadata", {})["namespace"] = request.match_info["ns"]
        return dict(body)

    def _write(self, obj: Obj, status: int) -> web.Response:
        try:
            stored = self._put(obj)
        except kubernetes_validate.ValidationError as e:
            return web.json_response(_status(422, "Invalid", str(e)), status=422)
        return web.json_response(stored, status=status)

    async def _create(self, request: web.Request) -> web.Response:
        plural = self._served(request)
        obj = await self._body(request, plural)
        obj["metadata"].pop("resourceVersion", None)
        if f"{request.match_info['ns']}/{obj['metadata'].get('name')}" in self.objects[plural]:
            return web.json_response(_status(409, "AlreadyExists", "exists"), status=409)
        return self._write(obj, 201)

    async def _replace(self, request: web.Request) -> web.Response:
        plural = self._served(request)
        obj = await self._body(request, plural)
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        have = self.objects[plural].get(key)
        if have is None:
            return web.json_response(_status(404, "NotFound", key), status=404)
        given = obj["metadata"].get("resourceVersion")
        if given and given != have["metadata"]["resourceVersion"]:
            return web.json_response(_status(409, "Conflict", "stale resourceVersion"), status=409)
        obj["metadata"].pop("resourceVersion", None)
        return self._write(obj, 200)

    async def _remove(self, request: web.Request) -> web.Response:
        plural = self._served(request)
        old = self._delete(plural, request.match_info["ns"], request.match_info["name"])
        if old is None:
            return web.json_response(_status(404, "NotFound", "not found"), status=404)
        return web.json_response(_status(200, "", "deleted") | {"status": "Success"})

    def kubeconfig(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "stand-in", "cluster": {"server": f"http://{self.host}:{self.port}"}}
            ],
            "users": [{"name": "meshd", "user": {"token": "test-token"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "meshd"}}],
            "current-context": "stand-in",
        }

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


# ---- objects for the tests (each still validated by put) -----------------------------------

NODE = "node-a"


def pod(
    name: str,
    ip: str,
    *,
    node: str = NODE,
    ready: bool = True,
    ns: str = "default",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels or {"app": name},
            "annotations": annotations or {},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example/app:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"},
                {"type": "PodScheduled", "status": "True"},
            ],
        },
    }


def service(name: str, ns: str, selector: dict[str, str], annotations: dict[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_slice(service_name: str, ns: str, endpoints: list[tuple[str, bool]]) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-abc12",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints
        ],
    }
