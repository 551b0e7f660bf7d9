"""KV tombstone GC against a real `meshd agent -dev`: deleted keys stop growing the state, and
blocking reads on their prefix keep working with indexes that never go backwards."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import MeshdProcess, dev_agent, wait_for

KEYS = 1200
TXN_OPS = 60  # under Consul's 64 operations per transaction


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshdProcess]:
    conf = tmp_path_factory.mktemp("conf") / "gc.json"
    conf.write_text(json.dumps({"kv_tombstone_ttl": "1s"}))
    agent = dev_agent(f"-config-file={conf}").start()
    yield agent
    agent.stop()


def _txn(agent: MeshdProcess, verb: str, keys: list[str]) -> None:
    value = base64.b64encode(b"v").decode()
    for i in range(0, len(keys), TXN_OPS):
        ops: list[dict[str, Any]] = [
            {"KV": {"Verb": verb, "Key": k, **({"Value": value} if verb == "set" else {})}}
            for k in keys[i : i + TXN_OPS]
        ]
        r = agent.put("/v1/txn", ops)
        assert r.status == 200, r.body


def test_deleted_keys_are_collected_and_prefix_blocking_still_wakes(short_ttl: MeshdProcess):
    agent = short_ttl
    keys = [f"gc/churn/key-{i:05d}" for i in range(KEYS)]
    baseline = len(agent.get("/v1/snapshot").body)
    _txn(agent, "set", keys)
    _txn(agent, "delete", keys)
    r = agent.get("/v1/kv/gc/?recurse")
    assert r.status == 404
    deleted_at = int(r.headers["X-Consul-Index"])
    # collected within a few TTLs: the snapshot falls back near where it started
    wait_for(lambda: len(agent.get("/v1/snapshot").body) < baseline + 2000, timeout=20)

    r = agent.get("/v1/kv/gc/?recurse")
    idx = int(r.headers["X-Consul-Index"])
    assert r.status == 404 and idx >= deleted_at  # never backwards after the reap
    result: dict[str, Any] = {}

    def block() -> None:
        result["r"] = agent.get(f"/v1/kv/gc/?recurse&index={idx}&wait=10s", timeout=20)

    t = threading.Thread(target=block)
    t.start()
    wait_for(lambda: not t.is_alive() or agent.get("/v1/kv/gc/?recurse").status == 404)
    assert agent.put("/v1/kv/gc/churn/back", b"again").json() is True
    t.join(20)
    woke = result["r"]
    assert woke.status == 200 and int(woke.headers["X-Consul-Index"]) > idx
    assert [e["Key"] for e in woke.json()] == ["gc/churn/back"]
