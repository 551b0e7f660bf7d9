"""Sessions and KV locks against a real `meshd agent -dev`, as a Consul client sees them."""

from __future__ import annotations

import base64
import threading
import uuid
from typing import Any

import pytest
from helpers import MeshdProcess, wait_for


def _node(agent: MeshdProcess) -> str:
    return str(agent.get("/v1/agent/self").json()["Config"]["NodeName"])


def _create(agent: MeshdProcess, body: Any = None) -> str:
    r = agent.put("/v1/session/create", body)
    assert r.status == 200, r.body
    return str(r.json()["ID"])


def _kv(agent: MeshdProcess, key: str) -> dict[str, Any]:
    r = agent.get(f"/v1/kv/{key}")
    assert r.status == 200, r.body
    return dict(r.json()[0])


def _ext_node(agent: MeshdProcess, name: str, status: str = "passing") -> None:
    body = {
        "Node": name,
        "Address": "10.77.0.1",
        "Check": {"CheckID": "ext-check", "Name": "ext", "Status": status},
    }
    assert agent.put("/v1/catalog/register", body).status == 200


def test_create_defaults_info_node_list(agent: MeshdProcess) -> None:
    node = _node(agent)
    sid = _create(agent, {"Name": "defaults"})
    uuid.UUID(sid)
    r = agent.get(f"/v1/session/info/{sid}")
    assert r.status == 200 and int(r.headers["X-Consul-Index"]) > 0
    (s,) = r.json()
    assert s["Name"] == "defaults" and s["Node"] == node
    assert s["NodeChecks"] == ["serfHealth"] and s["Behavior"] == "release"
    assert s["LockDelay"] == 15 * 10**9 and s["TTL"] == ""
    assert sid in [x["ID"] for x in agent.get(f"/v1/session/node/{node}").json()]
    assert sid in [x["ID"] for x in agent.get("/v1/session/list").json()]
    assert agent.get(f"/v1/session/info/{uuid.uuid4()}").json() == []
    assert agent.put(f"/v1/session/destroy/{sid}").json() is True
    assert agent.get(f"/v1/session/info/{sid}").json() == []


def test_create_without_body_and_legacy_fields(agent: MeshdProcess) -> None:
    s = agent.get(f"/v1/session/info/{_create(agent)}").json()[0]
    assert s["NodeChecks"] == ["serfHealth"]
    sid = _create(agent, {"Checks": [], "LockDelay": 2, "Behavior": "delete", "TTL": "10s"})
    s = agent.get(f"/v1/session/info/{sid}").json()[0]
    assert s["NodeChecks"] == [] and s["LockDelay"] == 2 * 10**9
    assert s["Behavior"] == "delete" and s["TTL"] == "10s"
    sid = _create(agent, {"LockDelay": "250ms"})
    assert agent.get(f"/v1/session/info/{sid}").json()[0]["LockDelay"] == 250_000_000


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"TTL": "9s"}, 400, "Invalid Session TTL"),
        ({"TTL": "25h"}, 400, "Invalid Session TTL"),
        ({"TTL": "abc"}, 400, "Session TTL 'abc' invalid"),
        ({"Behavior": "explode"}, 400, "Invalid Behavior setting 'explode'"),
        ({"LockDelay": "2m"}, 400, "LockDelay must be between"),
        ({"NodeChecks": "serfHealth"}, 400, "must be a list"),
        ({"Node": "no-such-node"}, 500, "Missing node registration"),
        ({"NodeChecks": ["no-such-check"]}, 500, "Missing check 'no-such-check' registration"),
    ],
)
def test_create_refusals_change_nothing(
    agent: MeshdProcess, body: dict[str, Any], status: int, reason: str
) -> None:
    before = agent.get("/v1/session/list").json()
    r = agent.put("/v1/session/create", body)
    assert (r.status, reason in r.body.decode()) == (status, True), r.body
    assert agent.get("/v1/session/list").json() == before


def test_create_refused_when_check_critical(agent: MeshdProcess) -> None:
    _ext_node(agent, "sess-crit", status="critical")
    r = agent.put("/v1/session/create", {"Node": "sess-crit", "NodeChecks": ["ext-check"]})
    assert r.status == 500 and "Check 'ext-check' is in critical state" in r.body.decode()


def test_renew(agent: MeshdProcess) -> None:
    sid = _create(agent, {"TTL": "10s"})
    r = agent.put(f"/v1/session/renew/{sid}")
    assert r.status == 200 and r.json()[0]["ID"] == sid
    missing = uuid.uuid4()
    r = agent.put(f"/v1/session/renew/{missing}")
    assert r.status == 404 and f"Session id '{missing}' not found" in r.body.decode()


def test_ttl_lapse_invalidates_and_releases(agent: MeshdProcess) -> None:
    sid = _create(agent, {"TTL": "10s", "LockDelay": 0})
    assert agent.put(f"/v1/kv/sess/ttl?acquire={sid}", b"x").json() is True
    wait_for(lambda: agent.get(f"/v1/session/info/{sid}").json() == [], timeout=30)
    assert _kv(agent, "sess/ttl").get("Session", "") == ""


def test_acquire_release_lock_index_and_holder(agent: MeshdProcess) -> None:
    a, b = _create(agent), _create(agent)
    assert agent.put(f"/v1/kv/sess/lock?acquire={a}", b"one").json() is True
    e = _kv(agent, "sess/lock")
    assert (e["Session"], e["LockIndex"], base64.b64decode(e["Value"])) == (a, 1, b"one")
    assert agent.put(f"/v1/kv/sess/lock?acquire={b}", b"two").json() is False
    assert base64.b64decode(_kv(agent, "sess/lock")["Value"]) == b"one"
    assert agent.put(f"/v1/kv/sess/lock?release={b}").json() is False
    assert agent.put(f"/v1/kv/sess/lock?release={a}", b"done").json() is True
    e = _kv(agent, "sess/lock")
    assert e["Session"] == "" and e["LockIndex"] == 1
    assert agent.put(f"/v1/kv/sess/lock?acquire={b}").json() is True
    assert _kv(agent, "sess/lock")["LockIndex"] == 2


def test_acquire_with_unknown_or_missing_session(agent: MeshdProcess) -> None:
    ghost = uuid.uuid4()
    r = agent.put(f"/v1/kv/sess/ghost?acquire={ghost}", b"x")
    assert r.status == 500 and f'invalid session "{ghost}"' in r.body.decode()
    r = agent.put("/v1/kv/sess/ghost?acquire=", b"x")
    assert r.status == 400 and "missing session" in r.body.decode()
    assert agent.get("/v1/kv/sess/ghost").status == 404


def test_destroy_releases_and_lock_delay_holds_key(agent: MeshdProcess) -> None:
    a, b = _create(agent, {"LockDelay": "3s"}), _create(agent)
    assert agent.put(f"/v1/kv/sess/delay?acquire={a}").json() is True
    agent.put(f"/v1/session/destroy/{a}")
    assert _kv(agent, "sess/delay")["Session"] == ""
    assert agent.put(f"/v1/kv/sess/delay?acquire={b}").json() is False  # within the delay
    wait_for(lambda: agent.put(f"/v1/kv/sess/delay?acquire={b}").json() is True, timeout=10)
    assert _kv(agent, "sess/delay")["Session"] == b


def test_delete_behavior(agent: MeshdProcess) -> None:
    a = _create(agent, {"Behavior": "delete"})
    assert agent.put(f"/v1/kv/sess/eph?acquire={a}").json() is True
    agent.put(f"/v1/session/destroy/{a}")
    assert agent.get("/v1/kv/sess/eph").status == 404


def test_check_critical_and_node_deregister_invalidate(agent: MeshdProcess) -> None:
    _ext_node(agent, "sess-ext")
    body = {"Node": "sess-ext", "NodeChecks": ["ext-check"], "LockDelay": 0}
    a = _create(agent, body)
    assert agent.put(f"/v1/kv/sess/ext?acquire={a}").json() is True
    _ext_node(agent, "sess-ext", status="critical")
    assert agent.get(f"/v1/session/info/{a}").json() == []
    assert _kv(agent, "sess/ext")["Session"] == ""
    _ext_node(agent, "sess-ext")
    b = _create(agent, {"Node": "sess-ext", "NodeChecks": []})
    agent.put("/v1/catalog/deregister", {"Node": "sess-ext"})
    assert agent.get(f"/v1/session/info/{b}").json() == []


def test_session_list_blocks_until_a_change(agent: MeshdProcess) -> None:
    idx = agent.get("/v1/session/list").headers["X-Consul-Index"]
    created: list[str] = []
    t = threading.Timer(0.3, lambda: created.append(_create(agent)))
    t.start()
    r = agent.get(f"/v1/session/list?index={idx}&wait=20s", timeout=30)
    t.join()
    assert int(r.headers["X-Consul-Index"]) > int(idx)
    assert created[0] in [s["ID"] for s in r.json()]


def test_destroy_of_a_non_uuid_is_refused(agent: MeshdProcess) -> None:
    r = agent.put("/v1/session/destroy/not-a-uuid")
    assert r.status == 400 and "not a UUID" in r.body.decode()


def test_field_names_are_case_insensitive_and_service_checks(agent: MeshdProcess) -> None:
    body = {
        "Node": "sess-svc",
        "Address": "10.77.0.2",
        "Service": {"ID": "pg", "Service": "pg"},
        "Check": {"CheckID": "pg-alive", "Name": "pg", "Status": "passing", "ServiceID": "pg"},
    }
    assert agent.put("/v1/catalog/register", body).status == 200
    # py-consul's spelling: lower-case keys, durations as strings
    sid = _create(
        agent,
        {
            "node": "sess-svc",
            "checks": [],
            "servicechecks": [{"id": "pg-alive"}],
            "lockdelay": "1s",
            "ttl": "20s",
            "behavior": "delete",
        },
    )
    s = agent.get(f"/v1/session/info/{sid}").json()[0]
    assert s["ServiceChecks"] == [{"ID": "pg-alive", "Namespace": ""}] and s["NodeChecks"] == []
    assert (s["TTL"], s["LockDelay"], s["Behavior"]) == ("20s", 10**9, "delete")
    assert agent.put(f"/v1/kv/sess/svc?acquire={sid}").json() is True
    agent.put("/v1/catalog/deregister", {"Node": "sess-svc", "ServiceID": "pg"})
    assert agent.get(f"/v1/session/info/{sid}").json() == []
    assert agent.get("/v1/kv/sess/svc").status == 404  # Behavior delete
