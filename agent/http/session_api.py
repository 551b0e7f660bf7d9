"""`/v1/session/*`: Consul's session endpoints.

The session ID is a UUID chosen here (Consul's server picks it the same way, before Raft); a
collision is refused by the state machine rather than silently merged.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from meshd import queries as q
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    NotFoundError,
    blocking_read,
    json_body,
    json_response,
    query_options,
)
from meshd.durations import DurationError, parse_duration_seconds
from meshd.structs import SERF_CHECK_ID, ServiceCheck, Session, SessionOp

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

routes = web.RouteTableDef()
DEFAULT_LOCK_DELAY_NS = 15 * 10**9
_LOCK_DELAY_SECONDS_BELOW = 1000  # Consul: a bare number under this is seconds, else ns


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT_KEY]


def _lock_delay(raw: Any) -> int:
    """Nanoseconds from Consul's forms: "15s", 15 (seconds), 15000000000 (nanoseconds)."""
    if isinstance(raw, bool):
        raise BadRequestError(f"Request decode failed: invalid LockDelay {raw!r}")
    if isinstance(raw, (int, float)) and math.isfinite(raw):
        return int(raw * 1e9) if raw < _LOCK_DELAY_SECONDS_BELOW else int(raw)
    if isinstance(raw, str):
        try:
            return int(parse_duration_seconds(raw) * 1e9)
        except DurationError as e:
            raise BadRequestError(f"Request decode failed: invalid LockDelay: {e}") from None
    raise BadRequestError(f"Request decode failed: invalid LockDelay {raw!r}")


def _string_list(body: dict[str, Any], field: str) -> list[str] | None:
    raw = body.get(field)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise BadRequestError(f"Request decode failed: {field} must be a list of check IDs")
    return list(raw)


def _node_checks(body: dict[str, Any]) -> list[str]:
    """Consul's rules for the deprecated `Checks` beside `NodeChecks` (default serfHealth):
    whichever of the two is given wins; both given are merged."""
    legacy, node = _string_list(body, "Checks"), _string_list(body, "NodeChecks")
    if legacy is None and node is None:
        return [SERF_CHECK_ID]
    return [*(node or []), *(c for c in legacy or [] if c not in (node or []))]


_FIELDS = ("Name", "Node", "NodeChecks", "ServiceChecks", "Checks", "Behavior", "LockDelay", "TTL")
_BY_LOWER = {f.lower(): f for f in _FIELDS}


def _fold(body: dict[str, Any]) -> dict[str, Any]:
    """Consul decodes field names case-insensitively (py-consul sends `ttl`, `lockdelay`)."""
    return {_BY_LOWER[k.lower()]: v for k, v in body.items() if k.lower() in _BY_LOWER}


def _service_check(raw: dict[str, Any]) -> ServiceCheck:
    fields = {k.lower(): v for k, v in raw.items()}
    try:
        return msgspec.convert(
            {"ID": fields.get("id", ""), "Namespace": fields.get("namespace") or ""}, ServiceCheck
        )
    except msgspec.ValidationError as e:
        raise BadRequestError(f"Request decode failed: ServiceChecks: {e}") from None


def session_from_body(raw: dict[str, Any], default_node: str) -> Session:
    body = _fold(raw)
    service_checks = body.get("ServiceChecks") or []
    if not isinstance(service_checks, list) or not all(isinstance(c, dict) for c in service_checks):
        raise BadRequestError("Request decode failed: ServiceChecks must be a list of objects")
    checks = [_service_check(c) for c in service_checks]
    fields = {"Name": "", "Node": "", "Behavior": "", "TTL": ""}
    for key in fields:
        v = body.get(key)
        if v is not None and not isinstance(v, str):
            raise BadRequestError(f"Request decode failed: {key} must be a string")
        fields[key] = v or ""
    return Session(
        ID=str(uuid.uuid4()),
        Name=fields["Name"],
        Node=fields["Node"] or default_node,
        LockDelay=_lock_delay(body.get("LockDelay", DEFAULT_LOCK_DELAY_NS)),
        Behavior=fields["Behavior"] or "release",
        TTL=fields["TTL"],
        NodeChecks=_node_checks(body),
        ServiceChecks=checks,
    )


@routes.put("/v1/session/create")
async def session_create(request: web.Request) -> web.Response:
    agent = _agent(request)
    body = await json_body(request, kind=None) or {}
    if not isinstance(body, dict):
        raise BadRequestError("Request decode failed: expected a JSON object")
    s = session_from_body(body, agent.config.node_name)
    sid = await agent.backend.write(SessionOp(Op="create", Session=s))
    return json_response({"ID": sid})


def _id(request: web.Request) -> str:
    return request.match_info["id"]


@routes.put("/v1/session/destroy/{id}")
async def session_destroy(request: web.Request) -> web.Response:
    sid = _id(request)  # not a UUID: refused by the command's validation (400)
    await _agent(request).backend.write(SessionOp(Op="destroy", Session=Session(ID=sid)))
    return json_response(True)


@routes.put("/v1/session/renew/{id}")
async def session_renew(request: web.Request) -> web.Response:
    sid = _id(request)
    rows = await _agent(request).backend.renew_session(sid)
    if not rows:
        raise NotFoundError(f"Session id '{sid}' not found")
    return json_response(rows)


async def _read(request: web.Request, query: q.Sessions) -> web.Response:
    res = await blocking_read(_agent(request).backend, query, query_options(request))
    return json_response(res.value, result=res)


@routes.get("/v1/session/info/{id}")
async def session_info(request: web.Request) -> web.Response:
    return await _read(request, q.Sessions(ID=_id(request)))


@routes.get("/v1/session/node/{node}")
async def session_node(request: web.Request) -> web.Response:
    return await _read(request, q.Sessions(Node=request.match_info["node"]))


@routes.get("/v1/session/list")
async def session_list(request: web.Request) -> web.Response:
    return await _read(request, q.Sessions())
