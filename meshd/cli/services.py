"""`meshd services register|deregister`: manage this agent's local services.

Definitions can come from the same JSON/HCL files the agent loads at start (a `service` block or
a `services` list), from a bare Consul API body (`{"Name": ...}`), or from flags. They are sent
to the agent verbatim: the agent validates them and folds key case, so the CLI never disagrees
with the server about what a valid definition is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from meshd.cli import CLIError, client, http_options
from meshd.cli.output import parse_pairs
from meshd.hclparse import parse_hcl


def _field(d: dict[str, Any], name: str) -> Any:
    """Consul accepts `ID`, `id` and `Id` alike; look a key up case-insensitively."""
    for key, value in d.items():
        if key.lower() == name:
            return value
    return None


def _as_list(value: Any, where: str) -> list[dict[str, Any]]:
    """HCL gives one block as an object and repeated blocks as a list; accept both."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) for i in items):
        raise CLIError(f"{where}: must be an object or a list of objects")
    return items


def parse_definitions(text: str, source: str) -> list[dict[str, Any]]:
    """Service definitions in a JSON or HCL document (HCL is a superset, so it parses both)."""
    parse = json.loads if source.lower().endswith(".json") else parse_hcl
    try:
        data = parse(text)
    except (ValueError, TypeError) as e:  # pyhcl's lexer and parser both raise ValueError
        raise CLIError(f"{source}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{source}: the top level must be an object")
    found: list[dict[str, Any]] = []
    for key, value in data.items():
        if key.lower() in ("service", "services"):
            found.extend(_as_list(value, f"{source}: {key}"))
    if not found and _field(data, "name") is not None:
        found = [data]  # a bare /v1/agent/service/register body
    if not found:
        raise CLIError(
            f"{source}: no service definition found "
            "(expected a 'service' block or a 'services' list)"
        )
    return found


def load_definitions(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        out.extend(parse_definitions(text, path))
    return out


@click.group()
def services() -> None:
    """Register and deregister services on the local agent."""


@services.command("register")
@http_options
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("-name", "--name", default=None, help="Service name.")
@click.option("-id", "--id", "service_id", default=None, help="Service ID (default: the name).")
@click.option("-address", "--address", default=None, help="Service address.")
@click.option("-port", "--port", type=click.IntRange(0, 65535), default=None, help="Port.")
@click.option("-tag", "--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option(
    "-meta",
    "--meta",
    "meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Service metadata (repeatable).",
)
def register(
    files: tuple[str, ...],
    name: str | None,
    service_id: str | None,
    address: str | None,
    port: int | None,
    tags: tuple[str, ...],
    meta: tuple[str, ...],
) -> None:
    """Register services from definition FILEs, or one service described by flags."""
    flag_given = any(v not in (None, ()) for v in (name, service_id, address, port, tags, meta))
    if files and flag_given:
        raise click.UsageError("give either definition files or flags, not both")
    if files:
        definitions = load_definitions(files)
    elif name:
        body: dict[str, Any] = {"Name": name}
        if service_id:
            body["ID"] = service_id
        if address is not None:
            body["Address"] = address
        if port is not None:
            body["Port"] = port
        if tags:
            body["Tags"] = list(tags)
        if meta:
            try:
                body["Meta"] = parse_pairs(meta, "=", what="-meta")
            except ValueError as e:
                raise click.UsageError(str(e)) from None
        definitions = [body]
    else:
        raise click.UsageError("give a definition FILE or at least -name")
    api = client()
    for definition in definitions:
        api.register_service(definition)
        click.echo(f"Registered service: {_field(definition, 'name')}")


@services.command("deregister")
@http_options
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("-id", "--id", "service_id", default=None, help="ID of the service to remove.")
def deregister(files: tuple[str, ...], service_id: str | None) -> None:
    """Deregister a service by -id, or every service defined in FILEs (by ID, else name)."""
    if files and service_id:
        raise click.UsageError("give either -id or definition files, not both")
    if service_id:
        ids = [service_id]
    elif files:
        ids = []
        for definition in load_definitions(files):
            sid = _field(definition, "id") or _field(definition, "name")
            if not sid:
                raise CLIError("a service definition has neither an ID nor a name")
            ids.append(str(sid))
    else:
        raise click.UsageError("give -id=ID or a definition FILE")
    api = client()
    for sid in ids:
        api.deregister_service(sid)
        click.echo(f"Deregistered service: {sid}")
