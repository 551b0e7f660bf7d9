"""List-then-watch of one Kubernetes collection, as client-go's reflector does it.

The protocol (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
list, remember the list's `resourceVersion`, watch from it; every event and every BOOKMARK
moves that version on, so a watch that ends (the server's timeout, a dropped connection, an API
server restart) resumes from where it was without missing or repeating anything. When the API
server no longer has that version (`410 Gone`, as an ERROR event or a status), the only safe
answer is a new list: deletions that happened meanwhile are found by comparing it with what we
held. Failures back off exponentially (with jitter) so a down API server is not hammered by
every node's agent at once.

Objects stay plain dicts (the JSON the API server sent): the translation code is shared with
the webhook and tested on real objects, and no model class can drop a field it does not know.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

log = logging.getLogger("meshd.k8s")

Obj = dict[str, Any]
ListCall = Callable[..., Awaitable[Any]]

WATCH_TIMEOUT = 300  # seconds the API server keeps one watch open (it adds jitter)
LIST_TIMEOUT = aiohttp.ClientTimeout(total=60)
BACKOFF_MIN, BACKOFF_MAX = 0.2, 30.0


class Handler(Protocol):
    """What a reflector tells its owner, in order; a slow handler delays only this watch."""

    async def replace(self, objects: dict[str, Obj]) -> None:
        """A (re)list: this is the whole collection now."""

    async def upsert(self, obj: Obj) -> None: ...

    async def delete(self, obj: Obj) -> None: ...


class ResourceExpiredError(Exception):
    """The API server forgot our resourceVersion (410 Gone): relist."""


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Backoff:
    def __init__(self) -> None:
        self.delay = BACKOFF_MIN

    def reset(self) -> None:
        self.delay = BACKOFF_MIN

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, BACKOFF_MAX)


class Reflector:
    """Keeps a `Handler` in step with one collection until cancelled."""

    def __init__(
        self, kind: str, list_call: ListCall, handler: Handler, field_selector: str | None = None
    ) -> None:
        self.kind = kind
        self.list_call = list_call
        self.handler = handler
        self.field_selector = field_selector
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = 0  # how many (re)lists: a test reads it to know a 410 was answered
        self.objects: dict[str, Obj] = {}

    def _params(self) -> dict[str, Any]:
        return {"field_selector": self.field_selector} if self.field_selector else {}

    async def _list(self) -> None:
        resp = await self.list_call(
            **self._params(), _preload_content=False, _request_timeout=LIST_TIMEOUT
        )
        try:
            if resp.status != 200:  # unread bodies: the raw response is not checked for us
                raise ApiException(status=resp.status, reason=(await resp.text())[:200])
            body = json.loads(await resp.read())
        finally:
            resp.release()
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        items = {object_key(o): o for o in body.get("items") or []}
        self.objects = items
        self.lists += 1
        await self.handler.replace(dict(items))
        self.synced.set()

    async def _watch(self, backoff: Backoff) -> None:
        """One watch request, until the server ends it."""
        watch = Watch(return_type="object")  # keep the JSON: no model round trip
        try:
            stream = watch.stream(
                self.list_call,
                **self._params(),
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT,
                # a half-open connection must not stall the watch forever
                _request_timeout=aiohttp.ClientTimeout(connect=10, sock_read=WATCH_TIMEOUT + 30),
            )
            async for event in stream:
                backoff.reset()  # the server answers again
                await self._event(event["type"], event["raw_object"])
        except ApiException as e:
            if e.status == 410:
                raise ResourceExpiredError(str(e.reason)) from None
            raise
        finally:
            await watch.close()

    async def _event(self, kind: str, obj: Obj) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if kind == "BOOKMARK":
            return
        key = object_key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
            await self.handler.delete(obj)
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[key] = obj
            await self.handler.upsert(obj)

    async def run(self) -> None:
        backoff = Backoff()
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    backoff.reset()
                await self._watch(backoff)
            except asyncio.CancelledError:
                raise
            except ResourceExpiredError as e:
                log.info("%s watch expired (%s): listing again", self.kind, e)
                need_list = True
            except Exception as e:  # whatever the API server sent: never give up
                log.warning("%s list/watch failed, retrying: %s", self.kind, _reason(e))
                await backoff.sleep()


def _reason(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {e.reason}"
    if isinstance(e, json.JSONDecodeError):
        return "the API server sent a body that is not JSON"
    if isinstance(e, aiohttp.ClientError | OSError | TimeoutError):
        return f"{type(e).__name__}: {e}"
    return repr(e)
