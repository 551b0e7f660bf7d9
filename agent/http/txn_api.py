"""`PUT /v1/txn`: Consul's transaction endpoint (server/txn.py applies it)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from aiohttp import web

from meshd import queries as q
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    json_response,
    query_options,
)
from meshd.server.txn import result_value
from meshd.structs import Txn, TxnOp, TxnReply
from meshd.validate_session import MAX_TXN_OPS, txn_is_read_only

routes = web.RouteTableDef()
MAX_REQ_LEN = 512 * 1024  # Consul's limits.txn_max_req_len
KINDS = ("KV", "Node", "Service", "Check")


def _too_large(text: str) -> web.Response:
    return web.Response(status=413, text=text + "\n")


def _no_nulls(obj: Any) -> Any:
    """Consul's clients send null for empty fields (`"ServiceTags": null`); Go reads that as
    the zero value, so do we."""
    if isinstance(obj, dict):
        return {k: _no_nulls(v) for k, v in obj.items() if v is not None}
    return obj


def _defaults(kind: str, inner: dict[str, Any]) -> None:
    """Fields Consul's decoder leaves at zero values but our structs require."""
    if kind == "Service":  # an ID alone names the instance, as in Consul's delete example
        inner.setdefault("Service", inner.get("ID", ""))
        inner.setdefault("ID", inner["Service"])
    elif kind == "Check":
        inner.setdefault("Name", inner.get("CheckID", ""))
        inner.setdefault("Node", "")
        inner.setdefault("CheckID", "")
    elif kind == "Node":
        inner.setdefault("Address", "")
        inner.setdefault("Node", "")


def _op(i: int, raw: Any) -> TxnOp:
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in KINDS:
        raise BadRequestError(f"operation {i}: expected one of {', '.join(KINDS)}")
    kind, body = next(iter(raw.items()))
    if not isinstance(body, dict):
        raise BadRequestError(f"operation {i}: {kind} must be an object")
    body = _no_nulls(body)
    if kind != "KV":
        inner = body.get(kind)
        if not isinstance(inner, dict):
            raise BadRequestError(f"operation {i}: {kind}.{kind} must be an object")
        _defaults(kind, inner)
    try:
        return msgspec.convert({kind: body}, TxnOp)
    except msgspec.ValidationError as e:
        raise BadRequestError(f"operation {i}: {e}") from None


def _body(reply: TxnReply) -> dict[str, Any]:
    return {"Results": reply.Results, "Errors": reply.Errors}


@routes.put("/v1/txn")
async def txn(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    limit = int(agent.config.limits.get("txn_max_req_len", MAX_REQ_LEN))
    if (request.content_length or 0) > limit:
        return _too_large(f"Request body too large, max size: {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        return _too_large(f"Request body too large, max size: {limit} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"Failed to parse body: {e}") from None
    if not isinstance(data, list):
        raise BadRequestError("Failed to parse body: expected a JSON array of operations")
    if len(data) > MAX_TXN_OPS:
        return _too_large(f"Transaction contains too many operations ({len(data)} > {MAX_TXN_OPS})")
    ops = [_op(i, raw_op) for i, raw_op in enumerate(data)]
    max_value = int(agent.config.limits.get("kv_max_value_size", 512 * 1024))
    for op in ops:
        size = len(op.KV.Value or b"") if op.KV else 0
        if size > max_value:
            assert op.KV is not None
            return _too_large(
                f'Value for key "{op.KV.Key}" is too large ({size} > {max_value} bytes)'
            )
    cmd = Txn(Ops=ops)
    if ops and txn_is_read_only(cmd):
        opts = query_options(request)
        res = await agent.backend.read(q.TxnRead(Ops=ops), consistency=opts.consistency)
        reply = result_value(res.value)
        return json_response(_body(reply), status=409 if reply.Errors else 200, result=res)
    reply = result_value(await agent.backend.write(cmd))
    return json_response(_body(reply), status=409 if reply.Errors else 200)
