"""Consul's templated policy, auth method, binding rule, login and logout endpoints.

Permissions are rows in `acl_routes.PERMISSIONS` (acl:read / acl:write; login needs no token,
logout needs the login token itself). Login and logout are sent to the servers as `ACLLogin` /
`ACLLogout`: the servers verify the bearer token and write the token (server/acl_login.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from meshd import queries as q
from meshd.acl import templates
from meshd.acl.auth_model import (
    ACLAuthMethod,
    ACLAuthMethodOp,
    ACLBindingRule,
    ACLBindingRuleOp,
    ACLLogin,
    ACLLogout,
)
from meshd.acl.model import ACLTemplatedPolicy
from meshd.agent.http.acl_guard import token_of
from meshd.agent.http.common import (
    AGENT_KEY,
    BadRequestError,
    NotFoundError,
    json_body,
    json_response,
    to_builtins,
)
from meshd.server.authority import CommandForbiddenError

routes = web.RouteTableDef()
_STUB_FIELDS = ("Config",)  # the list shows stubs: no Config (Consul's ACLAuthMethodListStub)


async def _write(request: web.Request, cmd: Any, token: str | None = None) -> Any:
    agent = request.app[AGENT_KEY]
    result = await agent.backend.write(cmd, token_of(request) if token is None else token)
    agent.acl.forget()
    return result


async def _read(request: web.Request, query: Any) -> Any:
    return await request.app[AGENT_KEY].backend.read(query)


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "MaxTokenTTL":
        return f"{value}s"
    if not isinstance(value, str):
        raise BadRequestError(f"Request decode failed: {key} must be a string")
    return value


# ---- templated policies ---------------------------------------------------------------------


def _template_json(t: templates.Template) -> dict[str, str]:
    return {
        "TemplateName": t.name,
        "Schema": t.schema,
        "Template": t.template,
        "Description": t.description,
    }


@routes.get("/v1/acl/templated-policies")
async def templated_list(request: web.Request) -> web.Response:
    return json_response({n: _template_json(t) for n, t in sorted(templates.TEMPLATES.items())})


@routes.get("/v1/acl/templated-policy/name/{name:.+}")
async def templated_read(request: web.Request) -> web.Response:
    found = templates.TEMPLATES.get(request.match_info["name"])
    if found is None:
        raise NotFoundError(f"ACL templated policy not found: {request.match_info['name']}")
    return json_response(_template_json(found))


@routes.post("/v1/acl/templated-policy/preview/{name:.+}")
async def templated_preview(request: web.Request) -> web.Response:
    body = await json_body(request, None)
    try:
        tp = ACLTemplatedPolicy(
            TemplateName=request.match_info["name"],
            TemplateVariables=templates.variables_from_json(body or {}),
        )
        return json_response(to_builtins(templates.synthetic_policy(tp)))
    except templates.TemplateError as e:
        raise BadRequestError(str(e)) from None


# ---- auth methods ---------------------------------------------------------------------------


def _method_from(body: dict[str, Any], name: str) -> ACLAuthMethod:
    config = body.get("Config") or {}
    if not isinstance(config, dict):
        raise BadRequestError("Request decode failed: Config must be an object")
    return ACLAuthMethod(
        Name=name,
        Type=_string(body, "Type"),
        DisplayName=_string(body, "DisplayName"),
        Description=_string(body, "Description"),
        MaxTokenTTL=_string(body, "MaxTokenTTL"),
        TokenLocality=_string(body, "TokenLocality"),
        Config=config,
    )


async def _method(request: web.Request, name: str) -> ACLAuthMethod:
    ans = await _read(request, q.ACLAuthMethods(Name=name))
    if not ans.value:
        raise NotFoundError("ACL auth method not found")
    return msgspec.convert(to_builtins(ans.value[0]), ACLAuthMethod)


@routes.put("/v1/acl/auth-method")
async def method_create(request: web.Request) -> web.Response:
    body = await json_body(request)
    method = _method_from(body, _string(body, "Name"))
    stored = await _write(request, ACLAuthMethodOp(Op="set", AuthMethod=method))
    return json_response(to_builtins(stored))


@routes.get("/v1/acl/auth-method/{name}")
async def method_read(request: web.Request) -> web.Response:
    return json_response(to_builtins(await _method(request, request.match_info["name"])))


@routes.put("/v1/acl/auth-method/{name}")
async def method_update(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await json_body(request)
    if body.get("Name") and body["Name"] != name:
        raise BadRequestError("Auth Method Name in URL and payload do not match")
    old = await _method(request, name)
    method = _method_from(body, name)
    if not method.Type:
        method = msgspec.structs.replace(method, Type=old.Type)
    stored = await _write(request, ACLAuthMethodOp(Op="set", AuthMethod=method))
    return json_response(to_builtins(stored))


@routes.delete("/v1/acl/auth-method/{name}")
async def method_delete(request: web.Request) -> web.Response:
    await _write(request, ACLAuthMethodOp(Op="delete", Name=request.match_info["name"]))
    return json_response(True)


@routes.get("/v1/acl/auth-methods")
async def method_list(request: web.Request) -> web.Response:
    ans = await _read(request, q.ACLAuthMethods())
    rows = [{k: v for k, v in to_builtins(m).items() if k not in _STUB_FIELDS} for m in ans.value]
    return json_response(rows, result=ans)


# ---- binding rules --------------------------------------------------------------------------


def _rule_from(body: dict[str, Any], rid: str, method: str) -> ACLBindingRule:
    try:
        bind_vars = templates.variables_from_json(body.get("BindVars"))
    except templates.TemplateError as e:
        raise BadRequestError(f"Request decode failed: BindVars: {e}") from None
    return ACLBindingRule(
        ID=rid,
        AuthMethod=method,
        Description=_string(body, "Description"),
        Selector=_string(body, "Selector"),
        BindType=_string(body, "BindType"),
        BindName=_string(body, "BindName"),
        BindVars=bind_vars,
    )


async def _rule(request: web.Request, rid: str) -> ACLBindingRule:
    ans = await _read(request, q.ACLBindingRules(ID=rid))
    if not ans.value:
        raise NotFoundError("ACL binding rule not found")
    return msgspec.convert(to_builtins(ans.value[0]), ACLBindingRule)


@routes.put("/v1/acl/binding-rule")
async def rule_create(request: web.Request) -> web.Response:
    body = await json_body(request)
    rule = _rule_from(body, str(uuid.uuid4()), _string(body, "AuthMethod"))
    stored = await _write(request, ACLBindingRuleOp(Op="set", BindingRule=rule))
    return json_response(to_builtins(stored))


@routes.get("/v1/acl/binding-rule/{id}")
async def rule_read(request: web.Request) -> web.Response:
    return json_response(to_builtins(await _rule(request, request.match_info["id"])))


@routes.put("/v1/acl/binding-rule/{id}")
async def rule_update(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    body = await json_body(request)
    if body.get("ID") and body["ID"] != rid:
        raise BadRequestError("BindingRule ID in URL and payload do not match")
    old = await _rule(request, rid)
    rule = _rule_from(body, rid, _string(body, "AuthMethod") or old.AuthMethod)
    stored = await _write(request, ACLBindingRuleOp(Op="set", BindingRule=rule))
    return json_response(to_builtins(stored))


@routes.delete("/v1/acl/binding-rule/{id}")
async def rule_delete(request: web.Request) -> web.Response:
    try:
        uuid.UUID(request.match_info["id"])
    except ValueError:
        raise BadRequestError("Binding Rule ID invalid UUID") from None
    await _write(request, ACLBindingRuleOp(Op="delete", ID=request.match_info["id"]))
    return json_response(True)


@routes.get("/v1/acl/binding-rules")
async def rule_list(request: web.Request) -> web.Response:
    ans = await _read(request, q.ACLBindingRules(AuthMethod=request.query.get("authmethod", "")))
    return json_response(to_builtins(ans.value), result=ans)


# ---- login and logout -----------------------------------------------------------------------


@routes.post("/v1/acl/login")
async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    meta = body.get("Meta") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadRequestError("Request decode failed: Meta must map names to strings")
    cmd = ACLLogin(
        AuthMethod=_string(body, "AuthMethod"),
        BearerToken=_string(body, "BearerToken"),
        AccessorID=str(uuid.uuid4()),
        SecretID=str(uuid.uuid4()),
        CreateTime=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        Meta={str(k): v for k, v in meta.items()},
    )
    # the bearer token is the credential: the write carries no ACL token of the caller's
    return json_response(to_builtins(await _write(request, cmd, token="")))


@routes.post("/v1/acl/logout")
async def logout(request: web.Request) -> web.Response:
    secret = token_of(request)
    if not secret:
        raise CommandForbiddenError("ACL not found")
    await _write(request, ACLLogout(), token=secret)
    return json_response(True)
