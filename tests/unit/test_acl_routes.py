"""Every HTTP route has an ACL row: a new endpoint without one fails here, not in production."""

from __future__ import annotations

from typing import Any

from meshd.agent.http.acl_routes import PERMISSIONS, route_key
from meshd.agent.http.server import make_app


def _routes() -> set[tuple[str, str]]:
    app = make_app(Any)  # type: ignore[arg-type]  # the routes do not need a live agent
    out = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is not None and route.method != "*":
            out.add(route_key(route.method, resource.canonical))
    return out


def test_every_route_has_a_permission_row() -> None:
    missing = sorted(_routes() - set(PERMISSIONS))
    assert missing == [], f"routes without an ACL permission in acl_routes.PERMISSIONS: {missing}"


def test_no_row_for_a_route_that_does_not_exist() -> None:
    assert sorted(set(PERMISSIONS) - _routes()) == []


def test_route_key_drops_patterns_and_maps_head() -> None:
    assert route_key("HEAD", "/v1/kv/{key:.*}") == ("GET", "/v1/kv/{key}")
