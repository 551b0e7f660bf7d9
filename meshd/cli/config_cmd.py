"""`meshd config write|read|list|delete`: Consul's config-entry commands.

Entries are written as the user gave them (JSON or HCL, any key spelling Consul accepts:
`Kind`, `kind`, `path_prefix`...); the server folds keys and validates, so the CLI never
disagrees with the server about what a valid entry is. The only shaping done here is HCL's:
a block written once (`Sources { ... }`) parses as an object where the entry wants a list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from meshd.cli import CLIError, client, http_options
from meshd.hclparse import parse_hcl

# Fields that are lists of objects in every config entry kind (compared with `_`/`-` removed
# and lower-cased, as the server folds them); HCL yields a lone block as a bare object.
_LIST_FIELDS = {
    "sources",
    "permissions",
    "header",
    "overrides",
    "envoyextensions",
    "paths",
    "accesslogs",
    "splits",
    "routes",
    "queryparam",
    "hashpolicies",
    "targets",
}
# User maps whose keys belong to the user: never reshaped.
_OPAQUE = {"meta", "config", "arguments", "legacymeta"}


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def _listify(value: Any) -> Any:
    if isinstance(value, list):
        return [_listify(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        folded = _fold(str(key))
        if folded in _OPAQUE:
            out[key] = item
            continue
        if folded in _LIST_FIELDS and isinstance(item, dict):
            item = [item]
        out[key] = _listify(item)
    return out


def _field(entry: dict[str, Any], name: str) -> Any:
    for key, value in entry.items():
        if _fold(str(key)) == name:
            return value
    return None


def parse_entry(text: str, source: str) -> dict[str, Any]:
    """One config entry from JSON or HCL text; `source` names it in error messages."""
    try:
        if source.lower().endswith(".json") or text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = parse_hcl(text)
    except (ValueError, TypeError) as e:  # json and pyhcl's lexer/parser raise ValueError
        raise CLIError(
            f"Failed to decode config entry input from {source}: {' '.join(str(e).split())}"
        ) from None
    if not isinstance(data, dict):
        raise CLIError(
            f"Failed to decode config entry input from {source}: the top level must be an object"
        )
    return _listify(data)


def _read_input(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "stdin"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"Failed to read file {path}: {getattr(e, 'strerror', None) or e}") from None


def _need(value: str | None, flag: str) -> str:
    if not value:
        raise CLIError(f"Must specify the {flag} parameter")
    return value


@click.group("config")
def config() -> None:
    """Write, read, list and delete config entries (service-defaults, intentions...)."""


@config.command("write")
@http_options
@click.argument("path", metavar="FILE")
@click.option(
    "-cas",
    "--cas",
    is_flag=True,
    help="Check-and-set: write only if the entry's ModifyIndex is -modify-index.",
)
@click.option(
    "-modify-index",
    "--modify-index",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Index for -cas (0: only if the entry does not exist).",
)
def write(path: str, cas: bool, modify_index: int | None) -> None:
    """Write the config entry in FILE (JSON or HCL; `-` reads stdin)."""
    if cas and modify_index is None:
        raise CLIError("Must specify a -modify-index with -cas")
    text, source = _read_input(path)
    entry = parse_entry(text, source)
    params = {"cas": modify_index} if cas else None
    written = client().put("/v1/config", entry, params)
    kind = _field(entry, "kind") or ""
    name = _field(entry, "name") or ("global" if kind == "proxy-defaults" else "")
    if not written:
        raise CLIError(f"Config entry not updated: {kind}/{name}")
    click.echo(f"Config entry written: {kind}/{name}")


@config.command("read")
@http_options
@click.option("-kind", "--kind", default=None, help="The config entry's kind.")
@click.option("-name", "--name", default=None, help="The config entry's name.")
@click.option(
    "-chain",
    "--chain",
    is_flag=True,
    help="Print the compiled discovery chain of service -name instead (no -kind).",
)
def read(kind: str | None, name: str | None, chain: bool) -> None:
    """Print one config entry as JSON, or with -chain the service's compiled chain."""
    if chain:
        if kind:
            raise CLIError("-chain shows a service's whole chain: give -name only, not -kind")
        compiled = client().get(f"/v1/discovery-chain/{_need(name, '-name')}")
        click.echo(json.dumps(compiled["Chain"], indent=4))
        return
    kind, name = _need(kind, "-kind"), _need(name, "-name")
    entry = client().get(f"/v1/config/{kind}/{name}")
    click.echo(json.dumps(entry, indent=4))


@config.command("list")
@http_options
@click.option("-kind", "--kind", default=None, help="The kind of config entries to list.")
def list_cmd(kind: str | None) -> None:
    """List the names of every config entry of one kind."""
    for entry in client().get(f"/v1/config/{_need(kind, '-kind')}") or []:
        click.echo(entry.get("Name", ""))


@config.command("delete")
@http_options
@click.option("-kind", "--kind", default=None, help="The config entry's kind.")
@click.option("-name", "--name", default=None, help="The config entry's name.")
def delete(kind: str | None, name: str | None) -> None:
    """Delete one config entry."""
    kind, name = _need(kind, "-kind"), _need(name, "-name")
    client().delete(f"/v1/config/{kind}/{name}")
    click.echo(f"Config entry deleted: {kind}/{name}")
