"""The list-then-watch loop (agent/k8s_watch.py) against the stand-in API server, directly.

What the agent tests show through the catalog, shown here on the loop itself: a bookmark
moves the resourceVersion on without an object changing, a compacted resourceVersion leads to
exactly one more list whose result replaces the old view, and a field selector is honoured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port
from k8s_apiserver import NODE, FakeAPIServer, pod
from kubernetes_asyncio.client import CoreV1Api

from meshd.agent.k8s import api_client
from meshd.agent.k8s_watch import Obj, Reflector
from meshd.k8s.settings import KubernetesConfig

WAIT = 30.0


class Recorder:
    def __init__(self) -> None:
        self.view: dict[str, str] = {}  # pod key -> its IP, as the handler was told
        self.replaces = 0

    async def replace(self, objects: dict[str, Obj]) -> None:
        self.replaces += 1
        self.view = {k: o["status"]["podIP"] for k, o in objects.items()}

    async def upsert(self, obj: Obj) -> None:
        self.view[f"default/{obj['metadata']['name']}"] = obj["status"]["podIP"]

    async def delete(self, obj: Obj) -> None:
        self.view.pop(f"default/{obj['metadata']['name']}", None)


async def until(pred: Any) -> None:
    async with asyncio.timeout(WAIT):
        while not pred():
            await asyncio.sleep(0.02)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeAPIServer, Reflector, Recorder]]:
    api = FakeAPIServer(free_port(), bookmark_interval=0.2).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(api.kubeconfig()))
    client = await api_client(KubernetesConfig(kubeconfig=str(kubeconfig)))
    rec = Recorder()
    reflector = Reflector(
        "pods",
        CoreV1Api(client).list_pod_for_all_namespaces,
        rec,
        field_selector=f"spec.nodeName={NODE}",
    )
    task = asyncio.create_task(reflector.run())
    try:
        yield api, reflector, rec
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await asyncio.to_thread(api.close)


async def test_bookmarks_move_the_resource_version_without_changes(setup: Any) -> None:
    api, reflector, rec = setup
    await until(lambda: reflector.synced.is_set())
    api.put(pod("elsewhere", "10.9.0.1", node="node-z"))  # moves the counter, not seen
    target = str(api.rv)
    await until(lambda: reflector.resource_version == target)
    assert rec.view == {}  # the bookmark carried no object
    assert api.stat("list") == 1


async def test_a_compacted_version_relists_once_and_replaces_the_view(setup: Any) -> None:
    api, reflector, rec = setup
    api.put(pod("a", "10.0.0.1"))
    await until(lambda: rec.view == {"default/a": "10.0.0.1"})
    lists = reflector.lists

    def meanwhile(server: FakeAPIServer) -> None:
        server.delete("pods", "default", "a")
        server.put(pod("b", "10.0.0.2"))
        server.put(pod("c", "10.0.0.3", node="node-z"))

    await asyncio.to_thread(api.compact, meanwhile)
    await until(lambda: rec.view == {"default/b": "10.0.0.2"})
    assert reflector.lists == lists + 1
    assert rec.replaces == 2
    api.put(pod("d", "10.0.0.4"))  # and the new watch carries on
    await until(lambda: rec.view == {"default/b": "10.0.0.2", "default/d": "10.0.0.4"})
