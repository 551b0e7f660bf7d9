"""Consul's `consul.http.<METHOD>.<path>` timers for the HTTP API.

The timer of a request is found by its (method, matched route) pair, looked up in a dict on
every request; the dotted name is built once per pair. Paths name the route, not the request:
a route's variable parts are `_` (`consul.http.GET.v1.kv._`), as in Consul, so the number of
timers is bounded by the route table, whatever clients send.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd.metrics import Stats, Timer

#: anything else (a made-up method) is timed under OTHER, so clients cannot mint timers
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


def _name(method: str, resource: Any) -> str:
    if resource is None:
        return f"consul.http.{method}._unmatched"
    parts = [p for p in str(resource.canonical).split("/") if p]
    path = ".".join("_" if "{" in p else p for p in parts)
    return f"consul.http.{method}.{path or '_'}"


def route_timer(stats: Stats, request: web.Request) -> Timer:
    method = request.method if request.method in METHODS else "OTHER"
    resource = request.match_info.route.resource
    key = (method, resource)
    t = stats.route_timers.get(key)
    if t is None:
        t = stats.route_timers[key] = stats.timer(_name(method, resource))
    return t
