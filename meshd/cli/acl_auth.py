"""`meshd acl templated-policy|auth-method|binding-rule ...`, `meshd login` and `meshd logout`.

Consul's commands and flag names over the HTTP API; `-format=json` prints the API's JSON.
`login` writes the new token's SecretID to `-token-sink-file` (mode 0600), as `consul login`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.acl import _call, _rules, _show


def _post(path: str, body: Any = None) -> Any:
    payload = json.dumps(body).encode() if body is not None else None
    ctype = "application/json" if body is not None else None
    _, data = _call(lambda: client().request("POST", path, body=payload, content_type=ctype))
    return json.loads(data) if data.strip() else None


def _pairs(values: Sequence[str], flag: str, seps: str = ":=") -> dict[str, str]:
    """`-var name:web` / `-meta k=v` pairs."""
    out: dict[str, str] = {}
    for v in values:
        cut = min((i for i in (v.find(s) for s in seps) if i > 0), default=-1)
        if cut < 0:
            raise CLIError(f"{flag} must be KEY{seps[0]}VALUE, got {v!r}")
        out[v[:cut].strip()] = v[cut + 1 :]
    return out


def _lines(fields: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(f"{label}:".ljust(16) + ("" if v is None else str(v)) for label, v in fields)


# ---- templated policies ---------------------------------------------------------------------


def _pretty_template(t: dict[str, Any]) -> str:
    head = _lines([("Name", t.get("TemplateName")), ("Description", t.get("Description"))])
    needs = (
        "\tName: String - Required - The name of the service or node." if t.get("Schema") else ""
    )
    return f"{head}\nInput variables:\n{needs}\nRaw Template:\n{t.get('Template', '')}"


@click.group("templated-policy")
def templated_policy() -> None:
    """List, read and preview the builtin templated policies."""


@templated_policy.command("list")
@format_option
@http_options
def templated_list(fmt: str) -> None:
    """List the templated policies."""
    rows = _call(lambda: client().get("/v1/acl/templated-policies"))
    _show(fmt, rows if fmt == "json" else list(rows.values()), _pretty_template)


@templated_policy.command("read")
@click.option("-name", "--name", required=True)
@format_option
@http_options
def templated_read(name: str, fmt: str) -> None:
    """Read a templated policy by name."""
    _show(
        fmt, _call(lambda: client().get(f"/v1/acl/templated-policy/name/{name}")), _pretty_template
    )


@templated_policy.command("preview")
@click.option("-name", "--name", required=True)
@click.option("-var", "--var", "variables", multiple=True, metavar="NAME:VALUE")
@format_option
@http_options
def templated_preview(name: str, variables: Sequence[str], fmt: str) -> None:
    """Show the policy a templated policy expands to."""
    body = {k.capitalize(): v for k, v in _pairs(variables, "-var").items()}
    policy = _post(f"/v1/acl/templated-policy/preview/{name}", body)
    _show(fmt, policy, lambda p: _lines([("Name", p["Name"])]) + "\nRules:\n" + p["Rules"])


# ---- auth methods ---------------------------------------------------------------------------


def _pretty_method(m: dict[str, Any]) -> str:
    out = _lines(
        [
            ("Name", m.get("Name")),
            ("Type", m.get("Type")),
            ("DisplayName", m.get("DisplayName", "")),
            ("Description", m.get("Description", "")),
            ("MaxTokenTTL", m.get("MaxTokenTTL", "")),
            ("TokenLocality", m.get("TokenLocality", "")),
        ]
    )
    if "Config" in m:
        out += "\nConfig:\n" + json.dumps(m["Config"], indent=2)
    return out


def _config(value: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        config = json.loads(_rules(value))
    except ValueError as e:
        raise CLIError(f"-config is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CLIError("-config must be a JSON object")
    return config


def _method_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("-display-name", "--display-name", default=None),
            click.option("-description", "--description", default=None),
            click.option("-max-token-ttl", "--max-token-ttl", default=None),
            click.option("-token-locality", "--token-locality", default=None),
            click.option("-config", "--config", default="", help="JSON, @FILE, or - (stdin)."),
            click.option("-kubernetes-host", "--kubernetes-host", default=""),
            click.option(
                "-kubernetes-ca-cert", "--kubernetes-ca-cert", default="", help="PEM or @FILE."
            ),
            click.option(
                "-kubernetes-service-account-jwt", "--kubernetes-service-account-jwt", default=""
            ),
        ]
    ):
        f = opt(f)
    return f


def _method_body(opts: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for flag, key in (
        ("display_name", "DisplayName"),
        ("description", "Description"),
        ("max_token_ttl", "MaxTokenTTL"),
        ("token_locality", "TokenLocality"),
    ):
        if opts[flag] is not None:
            body[key] = opts[flag]
    config = dict(body.get("Config") or {})
    config.update(_config(opts["config"]))
    for flag, key in (
        ("kubernetes_host", "Host"),
        ("kubernetes_ca_cert", "CACert"),
        ("kubernetes_service_account_jwt", "ServiceAccountJWT"),
    ):
        if opts[flag]:
            config[key] = _rules(opts[flag])
    body["Config"] = config
    return body


@click.group("auth-method")
def auth_method() -> None:
    """Create, read, update, list and delete auth methods."""


@auth_method.command("create")
@click.option("-type", "--type", "kind", required=True, type=click.Choice(["jwt", "kubernetes"]))
@click.option("-name", "--name", required=True)
@_method_options
@format_option
@http_options
def method_create(kind: str, name: str, fmt: str, **opts: Any) -> None:
    """Create an auth method."""
    body = _method_body(opts, {"Name": name, "Type": kind})
    _show(fmt, _call(lambda: client().put("/v1/acl/auth-method", body)), _pretty_method)


@auth_method.command("read")
@click.option("-name", "--name", required=True)
@format_option
@http_options
def method_read(name: str, fmt: str) -> None:
    """Read an auth method."""
    _show(fmt, _call(lambda: client().get(f"/v1/acl/auth-method/{name}")), _pretty_method)


@auth_method.command("update")
@click.option("-name", "--name", required=True)
@click.option("-no-merge", "--no-merge", is_flag=True, help="Replace instead of merging.")
@_method_options
@format_option
@http_options
def method_update(name: str, no_merge: bool, fmt: str, **opts: Any) -> None:
    """Update an auth method (the given fields, merged into the current ones)."""
    current = _call(lambda: client().get(f"/v1/acl/auth-method/{name}"))
    base = {"Name": name, "Type": current["Type"]} if no_merge else current
    body = _method_body(opts, base)
    _show(fmt, _call(lambda: client().put(f"/v1/acl/auth-method/{name}", body)), _pretty_method)


@auth_method.command("delete")
@click.option("-name", "--name", required=True)
@http_options
def method_delete(name: str) -> None:
    """Delete an auth method, its binding rules and the tokens its logins made."""
    _call(lambda: client().delete(f"/v1/acl/auth-method/{name}"))
    click.echo(f'Auth-method "{name}" deleted successfully')


@auth_method.command("list")
@format_option
@http_options
def method_list(fmt: str) -> None:
    """List the auth methods."""
    _show(fmt, _call(lambda: client().get("/v1/acl/auth-methods")), _pretty_method)


# ---- binding rules --------------------------------------------------------------------------


def _pretty_rule(r: dict[str, Any]) -> str:
    fields = [
        ("ID", r.get("ID")),
        ("AuthMethod", r.get("AuthMethod")),
        ("Description", r.get("Description", "")),
        ("BindType", r.get("BindType")),
        ("BindName", r.get("BindName")),
        ("Selector", r.get("Selector", "")),
    ]
    if r.get("BindVars"):
        fields.append(("BindVars", json.dumps(r["BindVars"])))
    return _lines(fields)


def _rule_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("-description", "--description", default=None),
            click.option("-selector", "--selector", default=None),
            click.option(
                "-bind-type",
                "--bind-type",
                default=None,
                type=click.Choice(["service", "node", "role", "policy", "templated-policy"]),
            ),
            click.option("-bind-name", "--bind-name", default=None),
            click.option(
                "-bind-vars", "--bind-vars", "bind_vars", multiple=True, metavar="NAME=VALUE"
            ),
        ]
    ):
        f = opt(f)
    return f


def _rule_body(opts: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    body = dict(base)
    for flag, key in (
        ("description", "Description"),
        ("selector", "Selector"),
        ("bind_type", "BindType"),
        ("bind_name", "BindName"),
    ):
        if opts[flag] is not None:
            body[key] = opts[flag]
    if opts["bind_vars"]:
        body["BindVars"] = {
            k.capitalize(): v for k, v in _pairs(opts["bind_vars"], "-bind-vars", "=:").items()
        }
    return body


@click.group("binding-rule")
def binding_rule() -> None:
    """Create, read, update, list and delete binding rules."""


@binding_rule.command("create")
@click.option("-method", "--method", required=True)
@_rule_options
@format_option
@http_options
def rule_create(method: str, fmt: str, **opts: Any) -> None:
    """Create a binding rule for an auth method."""
    body = _rule_body(opts, {"AuthMethod": method})
    _show(fmt, _call(lambda: client().put("/v1/acl/binding-rule", body)), _pretty_rule)


@binding_rule.command("read")
@click.option("-id", "--id", "rid", required=True)
@format_option
@http_options
def rule_read(rid: str, fmt: str) -> None:
    """Read a binding rule."""
    _show(fmt, _call(lambda: client().get(f"/v1/acl/binding-rule/{rid}")), _pretty_rule)


@binding_rule.command("update")
@click.option("-id", "--id", "rid", required=True)
@_rule_options
@format_option
@http_options
def rule_update(rid: str, fmt: str, **opts: Any) -> None:
    """Update a binding rule (the given fields, merged into the current ones)."""
    current = _call(lambda: client().get(f"/v1/acl/binding-rule/{rid}"))
    body = _rule_body(opts, current)
    _show(fmt, _call(lambda: client().put(f"/v1/acl/binding-rule/{rid}", body)), _pretty_rule)


@binding_rule.command("delete")
@click.option("-id", "--id", "rid", required=True)
@http_options
def rule_delete(rid: str) -> None:
    """Delete a binding rule."""
    _call(lambda: client().delete(f"/v1/acl/binding-rule/{rid}"))
    click.echo(f"Binding rule {rid!r} deleted successfully")


@binding_rule.command("list")
@click.option("-method", "--method", default="")
@format_option
@http_options
def rule_list(method: str, fmt: str) -> None:
    """List binding rules (of one auth method with -method)."""
    params = {"authmethod": method} if method else None
    _show(fmt, _call(lambda: client().get("/v1/acl/binding-rules", params)), _pretty_rule)


# ---- login and logout -----------------------------------------------------------------------


@click.command()
@click.option("-method", "--method", required=True, help="The auth method to log in with.")
@click.option("-bearer-token-file", "--bearer-token-file", required=True, type=click.Path())
@click.option("-token-sink-file", "--token-sink-file", required=True, type=click.Path())
@click.option("-meta", "--meta", multiple=True, metavar="KEY=VALUE")
@http_options
def login(method: str, bearer_token_file: str, token_sink_file: str, meta: Sequence[str]) -> None:
    """Exchange a bearer token (a Kubernetes service account token, a JWT) for an ACL token."""
    try:
        bearer = Path(bearer_token_file).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise CLIError(f"Error reading bearer token file: {e.strerror}") from None
    if not bearer:
        raise CLIError(f"No bearer token found in {bearer_token_file}")
    body = {"AuthMethod": method, "BearerToken": bearer, "Meta": _pairs(meta, "-meta", "=")}
    token = _post("/v1/acl/login", body)
    fd = os.open(token_sink_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token["SecretID"])
    os.chmod(token_sink_file, 0o600)  # an existing file keeps its old mode through O_CREAT


@click.command()
@http_options
def logout() -> None:
    """Delete the token given with -token (only a token made by `meshd login`)."""
    _post("/v1/acl/logout")


ACL_COMMANDS = (templated_policy, auth_method, binding_rule)
