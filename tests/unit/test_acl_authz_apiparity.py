"""The servers' permission rows for the commands the API parity work added: each is refused
without its permission and admitted with it."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.acl import PermissionDeniedError, build_authorizer, parse_rules
from meshd.server.acl_authz import authorize, authorize_query_owner
from meshd.structs import (
    AutopilotConfigOp,
    CoordinateBatch,
    CoordinateUpdate,
    KeyringOp,
    PreparedQueryOp,
)

COORD: dict[str, Any] = {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5}


def _authz(rules: str) -> Any:
    return build_authorizer(parse_rules(rules), "deny")


def _query(name: str, template: str = "") -> dict[str, Any]:
    return {"Name": name, "Template": {"Type": template}}


@pytest.mark.parametrize(
    ("cmd", "granted", "denied", "permission"),
    [
        (AutopilotConfigOp(Config={}), 'operator = "write"', 'operator = "read"', "operator:write"),
        (KeyringOp(Op="install", Key="k"), 'keyring = "write"', 'operator = "write"', "keyring"),
        (
            PreparedQueryOp(Op="set", ID="1", Query=_query("geo-web")),
            'query_prefix "geo-" { policy = "write" }',
            'query_prefix "geo-" { policy = "read" }',
            "query:write",
        ),
        (
            PreparedQueryOp(Op="set", ID="1", Query=_query("", "name_prefix_match")),
            'query_prefix "" { policy = "write" }',
            'query "x" { policy = "write" }',
            "query:write",
        ),
        (
            CoordinateBatch(Updates=[CoordinateUpdate(Node=n, Coord=COORD) for n in ("n1", "n2")]),
            'node_prefix "n" { policy = "write" }',
            'node "n1" { policy = "write" }',
            "node:write",
        ),
    ],
)
def test_new_command_rows(cmd: Any, granted: str, denied: str, permission: str) -> None:
    authorize(cmd, _authz(granted))
    with pytest.raises(PermissionDeniedError) as err:
        authorize(cmd, _authz(denied))
    assert permission in str(err.value)


def test_unnamed_query_is_managed_by_its_id_holder() -> None:
    authorize(PreparedQueryOp(Op="set", ID="1", Query=_query("")), _authz(""))


def test_changing_a_query_needs_write_on_its_current_name() -> None:
    stored = {"1": _query("team-a-web")}
    rename = PreparedQueryOp(Op="set", ID="1", Query=_query("team-b-web"))
    writer_b = _authz('query_prefix "team-b-" { policy = "write" }')
    authorize(rename, writer_b)  # the new name alone would pass
    with pytest.raises(PermissionDeniedError):
        authorize_query_owner(rename, stored, writer_b)
    authorize_query_owner(
        PreparedQueryOp(Op="delete", ID="1"),
        stored,
        _authz('query_prefix "team-a-" { policy = "write" }'),
    )
