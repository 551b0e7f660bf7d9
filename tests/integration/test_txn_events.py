"""/v1/txn and /v1/event/* against a real `meshd agent -dev`."""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

from helpers import MeshdProcess


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def kv_op(verb: str, key: str, value: str | None = None, **kw: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"Verb": verb, "Key": key, **kw}
    if value is not None:
        op["Value"] = b64(value)
    return {"KV": op}


def kv_value(agent: MeshdProcess, key: str) -> bytes | None:
    r = agent.get(f"/v1/kv/{key}?raw")
    return r.body if r.status == 200 else None


def test_txn_kv_and_catalog_writes_commit_together(agent: MeshdProcess) -> None:
    agent.put("/v1/kv/txn1/old", b"x")
    ops = [
        kv_op("set", "txn1/a", "alpha", Flags=7),
        kv_op("delete", "txn1/old"),
        {"Node": {"Verb": "set", "Node": {"Node": "txn-node", "Address": "10.7.0.1"}}},
        {
            "Service": {
                "Verb": "set",
                "Node": "txn-node",
                "Service": {"ID": "txn-db", "Service": "txn-db", "Port": 5432, "Tags": ["a"]},
            }
        },
        {
            "Check": {
                "Verb": "set",
                "Check": {
                    "Node": "txn-node",
                    "CheckID": "txn-db-alive",
                    "Name": "alive",
                    "Status": "passing",
                    "ServiceID": "txn-db",
                    "ServiceTags": None,
                },
            }
        },
    ]
    r = agent.put("/v1/txn", ops)
    assert r.status == 200, r.body
    body = r.json()
    assert body["Errors"] is None
    results = body["Results"]
    assert results[0]["KV"]["Key"] == "txn1/a" and results[0]["KV"]["Value"] is None
    assert results[0]["KV"]["Flags"] == 7
    assert results[1]["Node"]["Address"] == "10.7.0.1"
    assert results[2]["Service"]["Port"] == 5432
    assert results[3]["Check"]["ServiceName"] == "txn-db"
    assert kv_value(agent, "txn1/a") == b"alpha" and kv_value(agent, "txn1/old") is None
    rows = agent.get("/v1/health/service/txn-db?passing").json()
    assert [row["Node"]["Node"] for row in rows] == ["txn-node"]
    # one Raft entry: every write carries the same index
    idx = results[0]["KV"]["ModifyIndex"]
    assert {
        results[i][k]["ModifyIndex"] for i, k in enumerate(["KV", "Node", "Service", "Check"])
    } == {idx}


def test_txn_rolled_back_with_409_leaves_state_unchanged(agent: MeshdProcess) -> None:
    agent.put("/v1/kv/txn2/k", b"before")
    index = agent.get("/v1/kv/txn2/k").json()[0]["ModifyIndex"]
    ops = [
        kv_op("set", "txn2/new", "n"),
        kv_op("delete", "txn2/k"),
        {"Node": {"Verb": "set", "Node": {"Node": "txn2-node", "Address": "10.7.0.2"}}},
        kv_op("cas", "txn2/k", "after", Index=index + 1000),
        kv_op("get", "txn2/missing"),
    ]
    r = agent.put("/v1/txn", ops)
    assert r.status == 409
    body = r.json()
    assert body["Results"] is None
    assert body["Errors"] == [
        {"OpIndex": 3, "What": 'failed to set key "txn2/k", index is stale'},
        {"OpIndex": 4, "What": 'key "txn2/missing" doesn\'t exist'},
    ]
    assert kv_value(agent, "txn2/k") == b"before"
    assert kv_value(agent, "txn2/new") is None
    assert agent.get("/v1/kv/txn2/k").json()[0]["ModifyIndex"] == index
    assert all(n["Node"] != "txn2-node" for n in agent.get("/v1/catalog/nodes").json())


def test_read_only_txn_is_served_as_a_read(agent: MeshdProcess) -> None:
    agent.put("/v1/kv/txn3/a", b"1")
    agent.put("/v1/kv/txn3/b", b"2")
    r = agent.put("/v1/txn?stale", [kv_op("get-tree", "txn3/"), kv_op("check-not-exists", "x")])
    assert r.status == 200
    assert "X-Consul-Index" in r.headers and "X-Consul-KnownLeader" in r.headers
    got = [(e["KV"]["Key"], base64.b64decode(e["KV"]["Value"])) for e in r.json()["Results"]]
    assert got == [("txn3/a", b"1"), ("txn3/b", b"2")]
    r = agent.put("/v1/txn?consistent", [kv_op("get", "txn3/none")])
    assert r.status == 409 and r.json()["Errors"][0]["OpIndex"] == 0


def test_txn_limits_and_malformed_ops(agent: MeshdProcess) -> None:
    r = agent.put("/v1/txn", [kv_op("set", f"txn4/{i}", "v") for i in range(65)])
    assert r.status == 413 and b"too many operations (65 > 64)" in r.body
    big = "x" * (512 * 1024 + 1)
    r = agent.put("/v1/txn", [{"KV": {"Verb": "set", "Key": "txn4/big", "Value": big}}])
    assert r.status == 413
    cases = [
        ([kv_op("bogus", "txn4/a")], b"unknown KV verb"),
        ([{"Nope": {}}], b"expected one of KV, Node, Service, Check"),
        ({"KV": {}}, b"JSON array"),
        ([{"KV": {"Verb": "set", "Key": "txn4/a", "Value": "%%%"}}], b"operation 0"),
        ([kv_op("lock", "txn4/a", "v")], b"needs a Session"),
        ([{"Service": {"Verb": "set", "Node": "n", "Service": {"Service": "bad\x01name"}}}], b""),
    ]
    for body, reason in cases:
        r = agent.put("/v1/txn", body)
        assert r.status == 400, (body, r.status, r.body)
        assert reason in r.body
    assert agent.get("/v1/kv/txn4/?recurse").status == 404
    assert agent.request("PUT", "/v1/txn", b"not json").status == 400


def test_event_fire_and_list(agent: MeshdProcess) -> None:
    r = agent.put("/v1/event/fire/deploy-1?node=.*", b"v1.2.3")
    assert r.status == 200
    ev = r.json()
    assert ev["Name"] == "deploy-1" and base64.b64decode(ev["Payload"]) == b"v1.2.3"
    assert ev["NodeFilter"] == ".*" and ev["Version"] == 1 and ev["LTime"] >= 1
    assert len(ev["ID"]) == 36
    listed = agent.get("/v1/event/list?name=deploy-1")
    assert [e["ID"] for e in listed.json()] == [ev["ID"]]
    hexid = ev["ID"].replace("-", "")
    assert int(listed.headers["X-Consul-Index"]) == int(hexid[:16], 16) ^ int(hexid[16:], 16)
    # filters are applied by the receiving agent: this node is not "nomatch"
    miss = agent.put("/v1/event/fire/deploy-2?node=^nomatch$").json()
    assert miss["NodeFilter"] == "^nomatch$"
    svc_miss = agent.put("/v1/event/fire/deploy-2?service=^no-such-service$&tag=x").json()
    ids = [e["ID"] for e in agent.get("/v1/event/list").json()]
    assert ev["ID"] in ids and miss["ID"] not in ids and svc_miss["ID"] not in ids
    assert agent.get("/v1/event/list?name=nothing-here").headers["X-Consul-Index"] == "1"


def test_event_fire_refuses_bad_input(agent: MeshdProcess) -> None:
    before = agent.get("/v1/event/list").json()
    r = agent.put("/v1/event/fire/big", b"x" * (100 * 1024 + 1))
    assert r.status == 413
    assert agent.put("/v1/event/fire/t?tag=x").status == 400  # tag needs service
    assert agent.put("/v1/event/fire/t?node=(").status == 400
    assert agent.put("/v1/event/fire/_internal").status == 400
    assert agent.get("/v1/event/list").json() == before
    assert agent.get("/v1/event/list?node=(").status == 400


def test_event_list_blocks_until_a_new_event(agent: MeshdProcess) -> None:
    agent.put("/v1/event/fire/blocker", b"first")
    first = agent.get("/v1/event/list?name=blocker")
    index = first.headers["X-Consul-Index"]
    box: dict[str, Any] = {}

    def block() -> None:
        box["r"] = agent.get(f"/v1/event/list?name=blocker&index={index}&wait=30s", timeout=40)

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)
    assert "r" not in box  # still waiting: nothing new
    second = agent.put("/v1/event/fire/blocker", b"second").json()
    t.join(35)
    r = box["r"]
    assert r.status == 200
    assert r.json()[-1]["ID"] == second["ID"]
    assert r.headers["X-Consul-Index"] != index
    # a wait with nothing new ends at the deadline with the same index
    r = agent.get(f"/v1/event/list?name=blocker&index={r.headers['X-Consul-Index']}&wait=1s")
    assert r.json()[-1]["ID"] == second["ID"]


def test_txn_lock_unlock_with_a_real_session(agent: MeshdProcess) -> None:
    node = agent.get("/v1/agent/self").json()["Config"]["NodeName"]
    s1 = agent.put("/v1/session/create", {"Node": node, "LockDelay": "0s"}).json()["ID"]
    s2 = agent.put("/v1/session/create", {"Node": node, "LockDelay": "0s"}).json()["ID"]
    r = agent.put("/v1/txn", [kv_op("lock", "txn5/leader", "me", Session=s1)])
    assert r.status == 200, r.body
    assert r.json()["Results"][0]["KV"]["Session"] == s1
    r = agent.put(
        "/v1/txn",
        [kv_op("set", "txn5/side", "x"), kv_op("lock", "txn5/leader", "you", Session=s2)],
    )
    assert r.status == 409
    assert r.json()["Errors"] == [
        {"OpIndex": 1, "What": 'failed to lock key "txn5/leader", lock is already held'}
    ]
    assert kv_value(agent, "txn5/side") is None
    r = agent.put("/v1/txn", [kv_op("check-session", "txn5/leader", Session=s1)])
    assert r.status == 200  # read-only: served without a Raft entry
    r = agent.put("/v1/txn", [kv_op("unlock", "txn5/leader", "bye", Session=s1)])
    assert r.status == 200
    entry = agent.get("/v1/kv/txn5/leader").json()[0]
    assert entry.get("Session", "") == "" and base64.b64decode(entry["Value"]) == b"bye"
