"""Shared plumbing of the HTTP API: JSON encoding, Consul's headers, query options, errors.

Consul reports a client error as HTTP 400 with a plain-text reason and never half-applies it;
handlers raise typed errors and `error_middleware` turns each into that shape in one place.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from meshd import queries as q
from meshd.agent.backend import CatalogBackend, ReadResult
from meshd.agent.definitions import DefinitionError
from meshd.agent.leaf import LeafError
from meshd.agent.local import UnknownCheckError, UnknownServiceError
from meshd.config import ConfigError, parse_duration
from meshd.config_entries import ConfigEntryError
from meshd.filter import FilterError, apply_filter
from meshd.jsonshape import MAX_JSON_DEPTH, JSONShapeError, check_json_shape
from meshd.server.authority import CommandForbiddenError
from meshd.server.ca import CAError
from meshd.server.raft import RaftError
from meshd.server.store import CommandError, StateConflictError

if TYPE_CHECKING:
    from meshd.agent.agent import Agent

_encoder = msgspec.json.Encoder()
# The one key under which the HTTP app holds its agent: a typed key gives handlers an `Agent`
# rather than `Any`, and string keys are deprecated by aiohttp (NotAppKeyWarning).
AGENT_KEY: web.AppKey[Agent] = web.AppKey("agent")
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


class BadRequestError(Exception):
    """400 with this text."""


class NoPathToDatacenterError(Exception):
    """A request names a datacenter this agent cannot reach (Consul answers 500)."""

    def __init__(self) -> None:
        super().__init__("No path to datacenter")


def require_local_datacenter(request: web.Request, dc: Any) -> None:
    """A `Datacenter` in a request body names where it must apply: another one fails, as `?dc=`
    does, rather than being applied here."""
    if dc and dc != request.app[AGENT_KEY].config.datacenter:
        raise NoPathToDatacenterError()


class NotFoundError(Exception):
    """404 with this text."""


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def json_response(obj: Any, status: int = 200, result: ReadResult | None = None) -> web.Response:
    resp = web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")
    if result is not None:
        set_read_headers(resp, result)
    return resp


def set_read_headers(resp: web.StreamResponse, result: ReadResult) -> None:
    resp.headers["X-Consul-Index"] = str(result.index)
    resp.headers["X-Consul-KnownLeader"] = "true" if result.known_leader else "false"
    resp.headers["X-Consul-LastContact"] = str(result.last_contact_ms)


def flag(request: web.Request, name: str) -> bool:
    """Consul treats `?passing`, `?passing=`, `?passing=true` as set; `=false` as unset."""
    if name not in request.query:
        return False
    return request.query[name].lower() not in ("false", "0")


@dataclass
class QueryOptions:
    index: int = 0
    wait: float = 0.0
    consistency: str = "default"
    filter: str | None = None


def query_options(request: web.Request) -> QueryOptions:
    qs = request.query
    opts = QueryOptions(filter=qs.get("filter") or None)
    index = query_uint(request, "index")
    if index is not None:
        opts.index = index
        opts.wait = DEFAULT_WAIT
    if "wait" in qs:
        try:
            opts.wait = min(parse_duration(qs["wait"]), MAX_WAIT)
        except (ConfigError, ValueError):
            raise BadRequestError(f"Invalid wait time {qs['wait']!r}") from None
    if flag(request, "stale") and flag(request, "consistent"):
        raise BadRequestError("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if flag(request, "stale"):
        opts.consistency = "stale"
    elif flag(request, "consistent"):
        opts.consistency = "consistent"
    return opts


def query_uint(request: web.Request, name: str) -> int | None:
    """A uint64 query parameter as Go's strconv.ParseUint reads it: digits only, below 2**64.

    Python's int() also takes "1_000", " 7" and "+7", and any size; an index beyond 64 bits
    would block forever and a CAS beyond it cannot be encoded, so both are refused here.
    """
    v = request.query.get(name)
    if v is None:
        return None
    if not (v.isascii() and v.isdigit()) or len(v) > 20 or int(v) >= 2**64:
        raise BadRequestError(f"Invalid {name} value: {v!r}")
    return int(v)


async def blocking_read(backend: CatalogBackend, query: q.Query, opts: QueryOptions) -> ReadResult:
    return await backend.read(
        query, min_index=opts.index, wait=opts.wait, consistency=opts.consistency
    )


def filtered(opts: QueryOptions, rows: list[Any]) -> list[Any]:
    if not opts.filter:
        return rows
    return apply_filter(opts.filter, rows, to_builtins)


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Go's decoder refuses them); Python's accepts them."""
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes | str) -> Any:
    """Strict JSON as Consul reads it, or BadRequestError with the reason."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequestError(
            f"Request decode failed: JSON nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"Request decode failed: {e}") from None
    try:
        check_json_shape(data)
    except JSONShapeError as e:
        raise BadRequestError(f"Request decode failed: {e}") from None
    return data


async def json_body(request: web.Request, kind: type | None = dict) -> Any:
    raw = await request.read()
    if not raw.strip():
        if kind is None:
            return None
        raise BadRequestError("Request decode failed: empty body")
    data = decode_json(raw)
    if kind is not None and not isinstance(data, kind):
        raise BadRequestError(f"Request decode failed: expected a JSON {kind.__name__}")
    return data


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _text(status: int, msg: str) -> web.Response:
    return web.Response(status=status, text=msg if msg.endswith("\n") else msg + "\n")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CommandForbiddenError as e:
        return _text(403, str(e))
    except (StateConflictError, NoPathToDatacenterError) as e:
        return _text(500, str(e))
    except (
        BadRequestError,
        DefinitionError,
        FilterError,
        CommandError,
        ConfigError,
        CAError,
        ConfigEntryError,
        LeafError,
    ) as e:
        return _text(400, str(e))
    except (NotFoundError, UnknownServiceError, UnknownCheckError) as e:
        return _text(404, str(e))
    except msgspec.ValidationError as e:
        return _text(400, f"Request decode failed: {e}")
    except RaftError as e:
        return _text(500, str(e))
    except web.HTTPRequestEntityTooLarge as e:
        return _text(413, f"Request body too large: {e.text}")


@web.middleware
async def datacenter_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`?dc=` naming another datacenter fails as Consul fails it (500 "No path to datacenter"):
    silently answering from this datacenter would hand a caller the wrong data. The agent's own
    endpoints ignore `dc`, as in Consul."""
    dc = request.query.get("dc")
    local = request.app[AGENT_KEY].config.datacenter
    if dc and dc != local and not request.path.startswith("/v1/agent/"):
        return _text(500, str(NoPathToDatacenterError()))
    return await handler(request)
