"""`meshd acl ...`: Consul's ACL commands (bootstrap, token, policy, role) over the HTTP API.

The pretty output follows `consul acl`'s field layout; `-format=json` prints the API's JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from meshd.api import APIError
from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.output import format_json

_TOKEN_FIELDS = (
    ("AccessorID", "AccessorID"),
    ("SecretID", "SecretID"),
    ("Description", "Description"),
    ("Local", "Local"),
    ("CreateTime", "Create Time"),
    ("ExpirationTime", "Expiration Time"),
)


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except APIError as e:
        raise CLIError.from_api(e) from None


def _links(title: str, links: Sequence[dict[str, Any]] | None) -> list[str]:
    if not links:
        return []
    return [f"{title}:", *(f"   {link.get('ID', '')} - {link.get('Name', '')}" for link in links)]


def _pretty_token(t: dict[str, Any]) -> str:
    lines = [
        f"{label}:".ljust(18) + str(t.get(key, "")).lower()
        if isinstance(t.get(key), bool)
        else f"{label}:".ljust(18) + str(t.get(key, ""))
        for key, label in _TOKEN_FIELDS
        if t.get(key) not in (None, "") or key in ("AccessorID", "SecretID", "Local")
    ]
    lines += _links("Policies", t.get("Policies"))
    lines += _links("Roles", t.get("Roles"))
    for s in t.get("ServiceIdentities") or []:
        lines += ["Service Identities:", f"   {s['ServiceName']} (Datacenters: all)"]
    for n in t.get("NodeIdentities") or []:
        lines += ["Node Identities:", f"   {n['NodeName']} (Datacenter: {n.get('Datacenter', '')})"]
    for p in t.get("TemplatedPolicies") or []:
        lines += [
            "Templated Policies:",
            f"   {p['TemplateName']} {p.get('TemplateVariables') or ''}",
        ]
    if t.get("AuthMethod"):
        lines.append(f"Auth Method:      {t['AuthMethod']}")
    return "\n".join(lines)


def _pretty_policy(p: dict[str, Any]) -> str:
    lines = [f"ID:           {p['ID']}", f"Name:         {p['Name']}"]
    lines += [f"Description:  {p.get('Description', '')}", "Rules:", p.get("Rules", "")]
    return "\n".join(lines)


def _pretty_role(r: dict[str, Any]) -> str:
    lines = [f"ID:           {r['ID']}", f"Name:         {r['Name']}"]
    lines += [f"Description:  {r.get('Description', '')}", *_links("Policies", r.get("Policies"))]
    return "\n".join(lines)


def _show(fmt: str, value: Any, pretty: Callable[[dict[str, Any]], str]) -> None:
    if fmt == "json":
        click.echo(format_json(value))
    elif isinstance(value, list):
        click.echo("\n\n".join(pretty(v) for v in value))
    else:
        click.echo(pretty(value))


def _rules(value: str) -> str:
    """Consul's `-rules=@file` reads the rules from a file; `-` from stdin."""
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except OSError as e:
            raise CLIError(f"Failed to read rules from {value[1:]}: {e.strerror}") from None
    return value


def _policy_links(ids: Sequence[str], names: Sequence[str]) -> list[dict[str, str]]:
    return [{"ID": i} for i in ids] + [{"Name": n} for n in names]


@click.group()
def acl() -> None:
    """Bootstrap ACLs and manage tokens, policies and roles."""


@acl.command()
@format_option
@http_options
def bootstrap(fmt: str) -> None:
    """Create the first management token (once per cluster)."""
    _show(fmt, _call(lambda: client().put("/v1/acl/bootstrap")), _pretty_token)


# ---- tokens ---------------------------------------------------------------------------------


@acl.group()
def token() -> None:
    """Create, read, list and delete tokens."""


@token.command("create")
@click.option("-description", "--description", default="")
@click.option("-policy-id", "--policy-id", "policy_ids", multiple=True)
@click.option("-policy-name", "--policy-name", "policy_names", multiple=True)
@click.option("-role-id", "--role-id", "role_ids", multiple=True)
@click.option("-role-name", "--role-name", "role_names", multiple=True)
@click.option("-service-identity", "--service-identity", "services", multiple=True)
@click.option("-node-identity", "--node-identity", "nodes", multiple=True, metavar="NODE:DC")
@click.option("-templated-policy", "--templated-policy", "templated", default="")
@click.option("-var", "--var", "variables", multiple=True, metavar="name:VALUE")
@click.option("-local", "--local", is_flag=True)
@click.option("-expires-ttl", "--expires-ttl", default="")
@click.option("-secret", "--secret", default="", help="Use this SecretID (a UUID).")
@format_option
@http_options
def token_create(
    description: str,
    policy_ids: Sequence[str],
    policy_names: Sequence[str],
    role_ids: Sequence[str],
    role_names: Sequence[str],
    services: Sequence[str],
    nodes: Sequence[str],
    templated: str,
    variables: Sequence[str],
    local: bool,
    expires_ttl: str,
    secret: str,
    fmt: str,
) -> None:
    """Create a token."""
    body: dict[str, Any] = {
        "Description": description,
        "Policies": _policy_links(policy_ids, policy_names),
        "Roles": _policy_links(role_ids, role_names),
        "ServiceIdentities": [{"ServiceName": s.split(":", 1)[0]} for s in services],
        "NodeIdentities": [
            {"NodeName": n.split(":", 1)[0], "Datacenter": n.split(":", 1)[-1]} for n in nodes
        ],
        "Local": local,
    }
    if templated:  # Consul's `-templated-policy builtin/service -var name:api`
        pairs = dict(v.split(":", 1) for v in variables if ":" in v)
        body["TemplatedPolicies"] = [{"TemplateName": templated, "TemplateVariables": pairs}]
    if expires_ttl:
        body["ExpirationTTL"] = expires_ttl
    if secret:
        body["SecretID"] = secret
    _show(fmt, _call(lambda: client().put("/v1/acl/token", body)), _pretty_token)


@token.command("read")
@click.option("-id", "--id", "accessor", default="")
@click.option("-self", "--self", "own", is_flag=True)
@format_option
@http_options
def token_read(accessor: str, own: bool, fmt: str) -> None:
    """Read a token by AccessorID, or the token in use (-self)."""
    if not accessor and not own:
        raise CLIError("Must specify the -id parameter or -self")
    path = "/v1/acl/token/self" if own else f"/v1/acl/token/{accessor}"
    _show(fmt, _call(lambda: client().get(path)), _pretty_token)


@token.command("list")
@format_option
@http_options
def token_list(fmt: str) -> None:
    """List every token."""
    _show(fmt, _call(lambda: client().get("/v1/acl/tokens")), _pretty_token)


@token.command("delete")
@click.option("-id", "--id", "accessor", required=True)
@http_options
def token_delete(accessor: str) -> None:
    """Delete a token."""
    _call(lambda: client().delete(f"/v1/acl/token/{accessor}"))
    click.echo(f"Token {accessor!r} deleted successfully")


# ---- policies and roles ----------------------------------------------------------------------


def _by_id_or_name(kind: str, ident: str, name: str) -> dict[str, Any]:
    if not ident and not name:
        raise CLIError("Must specify either the -id or -name parameters")
    path = f"/v1/acl/{kind}/{ident}" if ident else f"/v1/acl/{kind}/name/{name}"
    result: dict[str, Any] = _call(lambda: client().get(path))
    return result


@acl.group()
def policy() -> None:
    """Create, read, list and delete policies."""


@policy.command("create")
@click.option("-name", "--name", required=True)
@click.option("-description", "--description", default="")
@click.option("-rules", "--rules", default="", help="Rules (HCL or JSON), @FILE, or - (stdin).")
@format_option
@http_options
def policy_create(name: str, description: str, rules: str, fmt: str) -> None:
    """Create a policy."""
    body = {"Name": name, "Description": description, "Rules": _rules(rules)}
    _show(fmt, _call(lambda: client().put("/v1/acl/policy", body)), _pretty_policy)


@policy.command("read")
@click.option("-id", "--id", "ident", default="")
@click.option("-name", "--name", default="")
@format_option
@http_options
def policy_read(ident: str, name: str, fmt: str) -> None:
    """Read a policy by ID or name."""
    _show(fmt, _by_id_or_name("policy", ident, name), _pretty_policy)


@policy.command("list")
@format_option
@http_options
def policy_list(fmt: str) -> None:
    """List every policy."""
    _show(fmt, _call(lambda: client().get("/v1/acl/policies")), _pretty_policy)


@policy.command("delete")
@click.option("-id", "--id", "ident", default="")
@click.option("-name", "--name", default="")
@http_options
def policy_delete(ident: str, name: str) -> None:
    """Delete a policy by ID or name."""
    row = _by_id_or_name("policy", ident, name)
    _call(lambda: client().delete(f"/v1/acl/policy/{row['ID']}"))
    click.echo(f"Policy {row['Name']!r} deleted successfully")


@acl.group()
def role() -> None:
    """Create, read, list and delete roles."""


@role.command("create")
@click.option("-name", "--name", required=True)
@click.option("-description", "--description", default="")
@click.option("-policy-id", "--policy-id", "policy_ids", multiple=True)
@click.option("-policy-name", "--policy-name", "policy_names", multiple=True)
@click.option("-service-identity", "--service-identity", "services", multiple=True)
@format_option
@http_options
def role_create(
    name: str,
    description: str,
    policy_ids: Sequence[str],
    policy_names: Sequence[str],
    services: Sequence[str],
    fmt: str,
) -> None:
    """Create a role."""
    body = {
        "Name": name,
        "Description": description,
        "Policies": _policy_links(policy_ids, policy_names),
        "ServiceIdentities": [{"ServiceName": s} for s in services],
    }
    _show(fmt, _call(lambda: client().put("/v1/acl/role", body)), _pretty_role)


@role.command("read")
@click.option("-id", "--id", "ident", default="")
@click.option("-name", "--name", default="")
@format_option
@http_options
def role_read(ident: str, name: str, fmt: str) -> None:
    """Read a role by ID or name."""
    _show(fmt, _by_id_or_name("role", ident, name), _pretty_role)


@role.command("list")
@format_option
@http_options
def role_list(fmt: str) -> None:
    """List every role."""
    _show(fmt, _call(lambda: client().get("/v1/acl/roles")), _pretty_role)


@role.command("delete")
@click.option("-id", "--id", "ident", default="")
@click.option("-name", "--name", default="")
@http_options
def role_delete(ident: str, name: str) -> None:
    """Delete a role by ID or name."""
    row = _by_id_or_name("role", ident, name)
    _call(lambda: client().delete(f"/v1/acl/role/{row['ID']}"))
    click.echo(f"Role {row['Name']!r} deleted successfully")


@acl.command("set-agent-token")
@click.argument("kind", metavar="TYPE")
@click.argument("secret", metavar="TOKEN")
@http_options
def set_agent_token(kind: str, secret: str) -> None:
    """Set one of the agent's tokens (default, agent, agent_recovery, dns, ...): until restart,
    or kept in the agent's data dir with acl.enable_token_persistence."""
    _call(lambda: client().put(f"/v1/agent/token/{kind}", {"Token": secret}))
    click.echo("ACL token set successfully")
