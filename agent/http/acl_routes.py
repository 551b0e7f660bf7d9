"""The permission of every HTTP route (Consul's documented ACL requirement of each endpoint).

One row per (method, route pattern): a `check` run before the handler (403 in Consul's words)
and/or a `keep` predicate for the rows of a list answer. tests/unit/test_acl_routes.py fails
for any registered route without a row.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshd import queries as q
from meshd.acl import Access, Authorizer, PermissionDeniedError
from meshd.agent.http import acl_query_rows as pq_rows
from meshd.agent.http.common import AGENT_KEY
from meshd.agent.http.common import decode_json as _decode

R, W, L = Access.READ, Access.WRITE, Access.LIST
SERVICE_KINDS = frozenset(
    {"service-defaults", "service-resolver", "service-splitter", "service-router"}
)

Check = Callable[[web.Request, Authorizer], Awaitable[None]]
Keep = Callable[[Authorizer, Any], bool]


Skip = Callable[[web.Request, Authorizer], bool]


@dataclass(frozen=True)
class Perm:
    """`skip`: the token reads every row this answer can hold, so `keep` need not run (the
    answer is not decoded at all: the common case, and the hot path)."""

    check: Check | None = None
    keep: Keep | None = None
    skip: Skip | None = None


def reads_all(*resources: str) -> Skip:
    return lambda request, authz: all(authz.reads_all(r) for r in resources)


def _named_service(request: web.Request, authz: Authorizer) -> bool:
    """One service's instances: that service readable and every node readable."""
    return authz.allowed("service", request.match_info["name"], R) and authz.reads_all("node")


# ---- checks -------------------------------------------------------------------------------


def need(resource: str, access: Access, name: Callable[[web.Request], str] | None = None) -> Check:
    """A check on a resource named by the request (path part, query, or nothing)."""

    async def check(request: web.Request, authz: Authorizer) -> None:
        authz.check(resource, name(request) if name else "", access)

    return check


def path(part: str) -> Callable[[web.Request], str]:
    return lambda request: request.match_info.get(part, "")


def query(param: str) -> Callable[[web.Request], str]:
    return lambda request: request.query.get(param, "")


def this_node(request: web.Request) -> str:
    return request.app[AGENT_KEY].config.node_name


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # aiohttp keeps the body: the handler reads it again
    if not raw.strip():
        return {}
    try:
        return _decode(raw)
    except Exception:
        return {}  # the handler answers 400 with the reason


def _local_service(request: web.Request, sid: str) -> str:
    svc = request.app[AGENT_KEY].local.services.get(sid)
    return svc.Service if svc is not None else sid


async def _local_service_write(request: web.Request, authz: Authorizer) -> None:
    authz.check("service", _local_service(request, request.match_info["sid"]), W)


async def _local_service_read(request: web.Request, authz: Authorizer) -> None:
    authz.check("service", _local_service(request, request.match_info["sid"]), R)


async def _local_check_write(request: web.Request, authz: Authorizer) -> None:
    lc = request.app[AGENT_KEY].local.checks.get(request.match_info["cid"])
    sid = lc.check.ServiceID if lc is not None else ""
    if sid:
        authz.check("service", _local_service(request, sid), W)
    else:
        authz.check("node", this_node(request), W)


async def _service_register(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    name = body.get("Name") or body.get("Service") if isinstance(body, dict) else ""
    authz.check("service", str(name or ""), W)


async def _check_register(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    sid = str(body.get("ServiceID") or "") if isinstance(body, dict) else ""
    if sid:
        authz.check("service", _local_service(request, sid), W)
    else:
        authz.check("node", this_node(request), W)


async def _catalog_register(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    body = body if isinstance(body, dict) else {}
    node = str(body.get("Node") or "")
    svc = body.get("Service")
    if isinstance(svc, dict) and not authz.allowed("node", node, W):
        authz.check("service", str(svc.get("Service") or ""), W)
    else:
        authz.check("node", node, W)


async def _catalog_deregister(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    authz.check("node", str(body.get("Node") or "") if isinstance(body, dict) else "", W)


def _config_check(authz: Authorizer, kind: str, name: str, access: Access) -> None:
    if kind == "service-intentions":
        authz.check("intention", name, access)
    elif kind in SERVICE_KINDS:
        authz.check("service", name, access)
    else:
        authz.check("mesh", "", access)


def _config(access: Access) -> Check:
    async def check(request: web.Request, authz: Authorizer) -> None:
        if "kind" in request.match_info:
            kind, name = request.match_info["kind"], request.match_info.get("name", "")
        else:
            body = await _body(request)
            body = body if isinstance(body, dict) else {}
            kind, name = str(body.get("Kind") or ""), str(body.get("Name") or "")
        _config_check(authz, kind, name, access)

    return check


async def _intention_create(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    dest = body.get("DestinationName") if isinstance(body, dict) else ""
    authz.check("intention", str(dest or ""), W)


async def _intention_match(request: web.Request, authz: Authorizer) -> None:
    """Every name asked about: the answer holds each one's intentions."""
    for name in request.query.getall("name", []) or [""]:
        authz.check("intention", name, R)


async def _session_create(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    node = body.get("Node") if isinstance(body, dict) else None
    authz.check("session", str(node or this_node(request)), W)


async def _session_by_id(request: web.Request, authz: Authorizer) -> None:
    ans = await request.app[AGENT_KEY].backend.read(q.Sessions(ID=request.match_info["id"]))
    node = ans.value[0].Node if ans.value else this_node(request)
    authz.check("session", node, W)


async def _authorize_target(request: web.Request, authz: Authorizer) -> None:
    body = await _body(request)
    authz.check("service", str(body.get("Target") or "") if isinstance(body, dict) else "", W)


async def _txn(request: web.Request, authz: Authorizer) -> None:
    ops = await _body(request)
    for op in ops if isinstance(ops, list) else []:
        if not isinstance(op, dict):
            continue
        kv, node, svc, chk = (op.get(k) or {} for k in ("KV", "Node", "Service", "Check"))
        if kv:
            verb = str(kv.get("Verb", ""))
            authz.check("key", str(kv.get("Key", "")), R if verb.startswith("get") else W)
        if node:
            authz.check("node", str((node.get("Node") or {}).get("Node", "")), W)
        if svc:
            authz.check("service", str((svc.get("Service") or {}).get("Service", "")), W)
        if chk:
            authz.check("node", str((chk.get("Check") or {}).get("Node", "")), W)


async def _kv_read(request: web.Request, authz: Authorizer) -> None:
    """A single key is refused without key:read; `?recurse`/`?keys` answers are filtered."""
    if "recurse" not in request.query and "keys" not in request.query:
        authz.check("key", request.match_info["key"], R)


# ---- row filters --------------------------------------------------------------------------


def _svc(authz: Authorizer, name: Any) -> bool:
    return authz.allowed("service", str(name or ""), R)


def _node(authz: Authorizer, name: Any) -> bool:
    return authz.allowed("node", str(name or ""), R)


def _check_row(authz: Authorizer, row: Any) -> bool:
    return _node(authz, row.get("Node")) and (
        not row.get("ServiceName") or _svc(authz, row["ServiceName"])
    )


def _instance_row(authz: Authorizer, row: Any) -> bool:
    return _node(authz, row["Node"]["Node"]) and _svc(authz, row["Service"]["Service"])


def _config_row(authz: Authorizer, row: Any) -> bool:
    try:
        _config_check(authz, str(row.get("Kind", "")), str(row.get("Name", "")), R)
    except PermissionDeniedError:
        return False
    return True


def keep_service_key(a: Authorizer, row: Any) -> bool:
    return _svc(a, row)  # catalog/services: the keys of the answer


def keep_catalog_row(a: Authorizer, row: Any) -> bool:
    return _node(a, row.get("Node")) and _svc(a, row.get("ServiceName"))


def keep_node_row(a: Authorizer, row: Any) -> bool:
    return _node(a, row.get("Node"))


def keep_agent_service(a: Authorizer, row: Any) -> bool:
    return _svc(a, row.get("Service"))


def keep_member(a: Authorizer, row: Any) -> bool:
    return _node(a, row.get("Name"))


def keep_kv(a: Authorizer, row: Any) -> bool:
    return a.allowed("key", row if isinstance(row, str) else str(row.get("Key", "")), R)


def keep_session(a: Authorizer, row: Any) -> bool:
    return a.allowed("session", str(row.get("Node", "")), R)


def keep_event(a: Authorizer, row: Any) -> bool:
    return a.allowed("event", str(row.get("Name", "")), R)


def keep_intention(a: Authorizer, row: Any) -> bool:
    return a.allowed("intention", str(row.get("DestinationName", "")), R)


# ---- the table ----------------------------------------------------------------------------

OPEN = Perm()  # no permission needed (Consul: status, datacenters, CA roots, bootstrap, self)
ACL_READ = Perm(need("acl", R))
ACL_WRITE = Perm(need("acl", W))
AGENT_READ = Perm(need("agent", R, this_node))
AGENT_WRITE = Perm(need("agent", W, this_node))
SERVICE_READ = Perm(need("service", R, path("name")))
CHECK_ROWS = Perm(keep=_check_row, skip=reads_all("node", "service"))
SESSION_ROWS = Perm(keep=keep_session, skip=reads_all("session"))
INSTANCES = Perm(keep=_instance_row, skip=_named_service)
CATALOG_ROWS = Perm(keep=keep_catalog_row, skip=_named_service)
OPERATOR_READ = Perm(need("operator", R))
OPERATOR_WRITE = Perm(need("operator", W))
KEYRING_WRITE = Perm(need("keyring", W))


async def _both_ends(request: web.Request, authz: Authorizer) -> None:
    """The explainer reads about both services of an edge."""
    for end in ("source", "destination"):
        authz.check("service", request.query.get(end, ""), R)


PERMISSIONS: dict[tuple[str, str], Perm] = {
    # the web UI (static files: its pages call the API with the user's token) and the graph
    ("GET", "/ui"): OPEN,
    ("GET", "/ui/"): OPEN,
    ("GET", "/ui/assets/{name}"): OPEN,
    ("GET", "/v1/internal/ui/service-topology/{service}"): Perm(
        need("service", R, path("service"))
    ),
    ("GET", "/v1/meshd/graph"): OPERATOR_READ,  # every service's edges: an operator's view
    ("GET", "/v1/meshd/explain"): Perm(_both_ends),
    # agent
    ("GET", "/v1/agent/checks"): CHECK_ROWS,
    ("GET", "/v1/agent/connect/ca/leaf/{service}"): Perm(need("service", W, path("service"))),
    ("GET", "/v1/agent/health/service/id/{sid}"): Perm(_local_service_read),
    ("GET", "/v1/agent/health/service/name/{name}"): SERVICE_READ,
    ("GET", "/v1/agent/members"): Perm(keep=keep_member, skip=reads_all("node")),
    ("GET", "/v1/agent/metrics"): AGENT_READ,
    ("GET", "/v1/agent/self"): AGENT_READ,
    ("GET", "/v1/agent/service/{sid}"): Perm(_local_service_read),
    ("GET", "/v1/agent/services"): Perm(keep=keep_agent_service, skip=reads_all("service")),
    ("POST", "/v1/agent/connect/authorize"): Perm(_authorize_target),
    ("PUT", "/v1/agent/check/deregister/{cid}"): Perm(_local_check_write),
    ("PUT", "/v1/agent/check/fail/{cid}"): Perm(_local_check_write),
    ("PUT", "/v1/agent/check/pass/{cid}"): Perm(_local_check_write),
    ("PUT", "/v1/agent/check/warn/{cid}"): Perm(_local_check_write),
    ("PUT", "/v1/agent/check/update/{cid}"): Perm(_local_check_write),
    ("PUT", "/v1/agent/check/register"): Perm(_check_register),
    ("PUT", "/v1/agent/leave"): AGENT_WRITE,
    ("PUT", "/v1/agent/reload"): AGENT_WRITE,
    ("PUT", "/v1/agent/maintenance"): Perm(need("node", W, this_node)),
    ("PUT", "/v1/agent/service/register"): Perm(_service_register),
    ("PUT", "/v1/agent/token/{type}"): AGENT_WRITE,  # Consul: agent:write on this node
    ("PUT", "/v1/agent/service/deregister/{sid}"): Perm(_local_service_write),
    ("PUT", "/v1/agent/service/maintenance/{sid}"): Perm(_local_service_write),
    ("GET", "/v1/agent/version"): OPEN,  # Consul: none
    ("GET", "/v1/agent/host"): OPERATOR_READ,
    ("GET", "/v1/agent/monitor"): AGENT_READ,
    ("PUT", "/v1/agent/join/{address}"): AGENT_WRITE,
    ("PUT", "/v1/agent/force-leave/{node}"): OPERATOR_WRITE,
    # catalog and health: reads are filtered
    ("GET", "/v1/catalog/connect/{name}"): CATALOG_ROWS,
    ("GET", "/v1/catalog/datacenters"): OPEN,
    ("GET", "/v1/catalog/node/{node}"): Perm(need("node", R, path("node"))),
    ("GET", "/v1/catalog/nodes"): Perm(keep=keep_node_row, skip=reads_all("node")),
    ("GET", "/v1/catalog/service/{name}"): CATALOG_ROWS,
    ("GET", "/v1/catalog/services"): Perm(keep=keep_service_key, skip=reads_all("service")),
    ("PUT", "/v1/catalog/register"): Perm(_catalog_register),
    ("PUT", "/v1/catalog/deregister"): Perm(_catalog_deregister),
    ("GET", "/v1/health/checks/{service}"): CHECK_ROWS,
    ("GET", "/v1/health/connect/{name}"): INSTANCES,
    ("GET", "/v1/health/node/{node}"): CHECK_ROWS,
    ("GET", "/v1/health/service/{name}"): INSTANCES,
    ("GET", "/v1/health/state/{state}"): CHECK_ROWS,
    ("GET", "/v1/catalog/gateway-services/{gateway}"): Perm(need("service", R, path("gateway"))),
    ("GET", "/v1/health/ingress/{service}"): Perm(
        need("service", R, path("service")), _instance_row, reads_all("node", "service")
    ),
    # coordinates: reads filtered by node:read, as Consul
    ("GET", "/v1/coordinate/datacenters"): OPEN,
    ("GET", "/v1/coordinate/nodes"): Perm(keep=keep_node_row, skip=reads_all("node")),
    ("GET", "/v1/coordinate/node/{node}"): Perm(need("node", R, path("node"))),
    ("PUT", "/v1/coordinate/update"): Perm(pq_rows.coordinate_update),
    # prepared queries: guarded by the query's name (a template's is a prefix)
    ("POST", "/v1/query"): Perm(pq_rows.query_create),
    ("GET", "/v1/query"): Perm(keep=pq_rows.keep_query),
    ("GET", "/v1/query/{id}"): Perm(pq_rows.query_read),
    ("PUT", "/v1/query/{id}"): Perm(pq_rows.query_update),
    ("DELETE", "/v1/query/{id}"): Perm(pq_rows.query_update),
    ("GET", "/v1/query/{id}/explain"): Perm(pq_rows.query_resolved),
    ("GET", "/v1/query/{id}/execute"): Perm(pq_rows.query_resolved),
    # config entries, CA, intentions, discovery chains
    ("GET", "/v1/config/{kind}"): Perm(
        keep=_config_row, skip=reads_all("service", "intention", "mesh")
    ),
    ("GET", "/v1/config/{kind}/{name}"): Perm(_config(R)),
    ("PUT", "/v1/config"): Perm(_config(W)),
    ("DELETE", "/v1/config/{kind}/{name}"): Perm(_config(W)),
    ("GET", "/v1/connect/ca/configuration"): Perm(need("operator", R)),
    ("PUT", "/v1/connect/ca/configuration"): Perm(need("operator", W)),
    ("GET", "/v1/connect/ca/roots"): OPEN,
    ("GET", "/v1/connect/intentions"): Perm(keep=keep_intention, skip=reads_all("intention")),
    ("POST", "/v1/connect/intentions"): Perm(_intention_create),
    ("GET", "/v1/connect/intentions/check"): Perm(need("intention", R, query("destination"))),
    ("GET", "/v1/connect/intentions/exact"): Perm(need("intention", R, query("destination"))),
    ("PUT", "/v1/connect/intentions/exact"): Perm(need("intention", W, query("destination"))),
    ("DELETE", "/v1/connect/intentions/exact"): Perm(need("intention", W, query("destination"))),
    ("GET", "/v1/connect/intentions/match"): Perm(_intention_match),
    ("GET", "/v1/discovery-chain/{service}"): Perm(need("service", R, path("service"))),
    ("POST", "/v1/discovery-chain/{service}"): Perm(need("service", R, path("service"))),
    # events, KV, sessions, transactions
    ("GET", "/v1/event/list"): Perm(keep=keep_event, skip=reads_all("event")),
    ("PUT", "/v1/event/fire/{name}"): Perm(need("event", W, path("name"))),
    ("GET", "/v1/kv/{key}"): Perm(_kv_read, keep_kv, reads_all("key")),
    ("PUT", "/v1/kv/{key}"): Perm(need("key", W, path("key"))),
    ("DELETE", "/v1/kv/{key}"): Perm(need("key", W, path("key"))),
    ("GET", "/v1/session/info/{id}"): SESSION_ROWS,
    ("GET", "/v1/session/list"): SESSION_ROWS,
    ("GET", "/v1/session/node/{node}"): SESSION_ROWS,
    ("PUT", "/v1/session/create"): Perm(_session_create),
    ("PUT", "/v1/session/destroy/{id}"): Perm(_session_by_id),
    ("PUT", "/v1/session/renew/{id}"): Perm(_session_by_id),
    ("PUT", "/v1/txn"): Perm(_txn),
    # operator, snapshots, status
    ("GET", "/v1/operator/raft/configuration"): Perm(need("operator", R)),
    ("DELETE", "/v1/operator/raft/peer"): OPERATOR_WRITE,
    ("POST", "/v1/operator/raft/transfer-leader"): OPERATOR_WRITE,
    ("PUT", "/v1/operator/raft/transfer-leader"): OPERATOR_WRITE,
    ("GET", "/v1/operator/autopilot/configuration"): OPERATOR_READ,
    ("PUT", "/v1/operator/autopilot/configuration"): OPERATOR_WRITE,
    ("GET", "/v1/operator/autopilot/health"): OPERATOR_READ,
    ("GET", "/v1/operator/autopilot/state"): OPERATOR_READ,
    ("GET", "/v1/operator/usage"): OPERATOR_READ,
    ("GET", "/v1/operator/keyring"): Perm(need("keyring", R)),
    ("POST", "/v1/operator/keyring"): KEYRING_WRITE,
    ("PUT", "/v1/operator/keyring"): KEYRING_WRITE,
    ("DELETE", "/v1/operator/keyring"): KEYRING_WRITE,
    ("GET", "/v1/snapshot"): ACL_WRITE,  # Consul: a management token
    ("PUT", "/v1/snapshot"): ACL_WRITE,
    ("GET", "/v1/status/leader"): OPEN,
    ("GET", "/v1/status/peers"): OPEN,
    # ACLs
    ("PUT", "/v1/acl/bootstrap"): OPEN,  # once; the state refuses a second
    ("GET", "/v1/acl/token/self"): OPEN,  # the token must exist (resolved first)
    ("PUT", "/v1/acl/token"): ACL_WRITE,
    ("GET", "/v1/acl/token/{id}"): ACL_READ,
    ("PUT", "/v1/acl/token/{id}"): ACL_WRITE,
    ("DELETE", "/v1/acl/token/{id}"): ACL_WRITE,
    ("PUT", "/v1/acl/token/{id}/clone"): ACL_WRITE,
    ("GET", "/v1/acl/tokens"): ACL_READ,
    **{
        row: perm
        for kind, plural in (("policy", "policies"), ("role", "roles"))
        for row, perm in {
            ("PUT", f"/v1/acl/{kind}"): ACL_WRITE,
            ("GET", f"/v1/acl/{kind}/{{id}}"): ACL_READ,
            ("GET", f"/v1/acl/{kind}/name/{{name}}"): ACL_READ,
            ("PUT", f"/v1/acl/{kind}/{{id}}"): ACL_WRITE,
            ("DELETE", f"/v1/acl/{kind}/{{id}}"): ACL_WRITE,
            ("GET", f"/v1/acl/{plural}"): ACL_READ,
        }.items()
    },
    # templated policies, auth methods, binding rules (agent/http/acl_auth_api.py)
    ("GET", "/v1/acl/templated-policies"): ACL_READ,
    ("GET", "/v1/acl/templated-policy/name/{name}"): ACL_READ,
    ("POST", "/v1/acl/templated-policy/preview/{name}"): ACL_READ,
    **{
        row: perm
        for kind, key in (("auth-method", "name"), ("binding-rule", "id"))
        for row, perm in {
            ("PUT", f"/v1/acl/{kind}"): ACL_WRITE,
            ("GET", f"/v1/acl/{kind}/{{{key}}}"): ACL_READ,
            ("PUT", f"/v1/acl/{kind}/{{{key}}}"): ACL_WRITE,
            ("DELETE", f"/v1/acl/{kind}/{{{key}}}"): ACL_WRITE,
            ("GET", f"/v1/acl/{kind}s"): ACL_READ,
        }.items()
    },
    ("POST", "/v1/acl/login"): OPEN,  # the bearer token is the credential (checked by servers)
    ("POST", "/v1/acl/logout"): OPEN,  # the servers delete the caller's token, if login made it
}


@functools.lru_cache(maxsize=1024)
def route_key(method: str, canonical: str) -> tuple[str, str]:
    """The table's key: HEAD is GET's, and a path part's regex (`{key:.*}`) is dropped."""
    parts = [
        p.split(":", 1)[0] + "}" if p.startswith("{") and ":" in p else p
        for p in canonical.split("/")
    ]
    return ("GET" if method == "HEAD" else method, "/".join(parts))
