"""Watch definitions and when a plan hands an answer to its handler (meshd/watchplan.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshd.api import Client
from meshd.watchplan import Plan, WatchError, parse_watch, run_handler


@pytest.mark.parametrize(
    ("raw", "path", "params"),
    [
        ({"type": "key", "key": "a/b"}, "/v1/kv/a/b", {}),
        ({"type": "keyprefix", "prefix": "a/"}, "/v1/kv/a/", {"recurse": True}),
        ({"type": "services"}, "/v1/catalog/services", {}),
        ({"type": "nodes", "datacenter": "dc2"}, "/v1/catalog/nodes", {"dc": "dc2"}),
        (
            {"type": "service", "service": "web", "tag": ["v2"], "passingonly": True},
            "/v1/health/service/web",
            {"tag": "v2", "passing": True},
        ),
        ({"type": "checks", "service": "web"}, "/v1/health/checks/web", {}),
        ({"type": "checks", "state": "critical"}, "/v1/health/state/critical", {}),
        ({"type": "checks"}, "/v1/health/state/any", {}),
        ({"type": "event", "name": "deploy"}, "/v1/event/list", {"name": "deploy"}),
    ],
)
def test_each_type_reads_consuls_endpoint(raw: dict[str, Any], path: str, params: dict) -> None:
    assert parse_watch(raw).request() == (path, params)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"type": "nope"}, "watch type must be one of"),
        ({"type": "keyprefix"}, "needs 'prefix'"),
        ({"type": "key", "key": "k", "prefix": "p"}, "does not take prefix"),
        ({"type": "key", "key": "k", "args": "not-a-list"}, "list of strings"),
        ({"type": "key", "key": "k", "args": ["a"], "handler": "b"}, "not both"),
        ({"type": "key", "key": "k", "handler_type": "http"}, "needs http_handler_config"),
        ({"type": "key", "key": "k", "handler_type": "ftp"}, "handler_type must be"),
        (
            {
                "type": "key",
                "key": "k",
                "http_handler_config": {"path": "http://x", "timeout": "x"},
            },
            "timeout",
        ),
    ],
)
def test_bad_watches_are_refused_with_the_reason(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(WatchError, match=reason):
        parse_watch(raw)


def test_plan_hands_over_the_first_answer_then_only_changes() -> None:
    plan = Plan(parse_watch({"type": "nodes"}), Client("http://127.0.0.1:1"))
    assert plan.step(5, ["a"])  # the first answer, always
    assert not plan.step(5, ["a"])  # the wait ran out: same index
    assert not plan.step(6, ["a"])  # the index moved but nothing the watch sees changed
    assert plan.step(7, ["a", "b"])
    assert plan.step(3, ["a"])  # the index went back (a restore): a new answer
    assert plan.index == 0  # and the next read does not block on the old index


def test_script_handler_gets_json_on_stdin_and_the_index(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = parse_watch(
        {"type": "key", "key": "k", "handler": f'cat > {out}; echo "$CONSUL_INDEX" >> {out}.i'}
    )
    run_handler(spec, 42, {"Key": "k", "Value": None})
    assert json.loads(out.read_text()) == {"Key": "k", "Value": None}
    assert (tmp_path / "out.i").read_text().strip() == "42"
    failing = parse_watch(
        {"type": "key", "key": "k", "args": ["/bin/sh", "-c", "echo no >&2; exit 4"]}
    )
    with pytest.raises(WatchError, match="exited with 4: no"):
        run_handler(failing, 1, None)
