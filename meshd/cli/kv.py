"""`meshd kv get|put|delete`: Consul's KV commands, same flags and same `Success!` lines.

Scripts written against `consul kv` grep for those lines and rely on the exit status (a missing
key or a lost CAS race is exit 1), so both are kept exactly.
"""

from __future__ import annotations

import base64
import binascii
import sys
from typing import Any

import click

from meshd.cli import CLIError, client, http_options
from meshd.cli.output import format_kv_detail, kv_display

DETAIL_FIELDS = ("CreateIndex", "Flags", "Key", "LockIndex", "ModifyIndex", "Session")


def _kv_error(message: str) -> CLIError:
    return CLIError(message, prefix="Error! ")


def _normalize_key(key: str | None) -> str:
    """Consul drops one leading slash, so `/app/x` and `app/x` name the same key."""
    return (key or "").removeprefix("/")


def _detail(entry: dict[str, Any], as_base64: bool) -> str:
    fields = {f: entry.get(f) for f in DETAIL_FIELDS}
    fields["Session"] = fields["Session"] or "-"  # Consul's placeholder for "no lock holder"
    raw = entry.get("Value") or ""
    fields["Value"] = raw if as_base64 else kv_display(base64.b64decode(raw))
    return format_kv_detail(fields)


@click.group()
def kv() -> None:
    """Read and write the key/value store."""


@kv.command("get")
@http_options
@click.argument("key", required=False)
@click.option("-recurse", "--recurse", is_flag=True, help="Every key under the prefix KEY.")
@click.option(
    "-keys",
    "--keys",
    "keys_only",
    is_flag=True,
    help="Only key names under the prefix KEY, up to -separator.",
)
@click.option(
    "-separator",
    "--separator",
    default="/",
    show_default=True,
    help="With -keys: list only up to this separator ('' for every key).",
)
@click.option("-detailed", "--detailed", is_flag=True, help="Indexes, flags and session too.")
@click.option("-base64", "--base64", "as_base64", is_flag=True, help="Print values base64-encoded.")
def kv_get(
    key: str | None, recurse: bool, keys_only: bool, separator: str, detailed: bool, as_base64: bool
) -> None:
    """Print the value at KEY (or every key under it with -recurse / -keys)."""
    key = _normalize_key(key)
    if keys_only and recurse:
        raise _kv_error("Cannot specify both -keys and -recurse!")
    api = client()
    if keys_only:
        for name in api.kv_keys(key, separator):
            click.echo(name)
        return
    if recurse:
        entries = api.kv_get(key, recurse=True) or []
        blocks = []
        for entry in entries:
            if detailed:
                blocks.append(_detail(entry, as_base64))
                continue
            value = entry.get("Value") or ""
            shown = value if as_base64 else kv_display(base64.b64decode(value))
            click.echo(f"{entry.get('Key', '')}:{shown}")
        if blocks:
            click.echo("\n\n".join(blocks))
        return
    if not key:
        raise _kv_error("Missing KEY argument")
    if detailed:
        found = api.kv_get(key)
        if not found:
            raise _kv_error(f"No key exists at: {key}")
        click.echo(_detail(found[0], as_base64))
        return
    raw = api.kv_get_raw(key)
    if raw is None:
        raise _kv_error(f"No key exists at: {key}")
    if as_base64:
        click.echo(kv_display(raw, as_base64=True))
    else:
        click.echo(raw)  # bytes go out untouched, so binary values survive `> file`


def _read_value(value: str | None, as_base64: bool) -> bytes:
    """VALUE as Consul reads it: `-` is stdin, `@path` a file, otherwise the literal text."""
    if value is None:
        data = b""
    elif value == "-":
        data = sys.stdin.buffer.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                data = f.read()
        except OSError as e:
            raise _kv_error(f"Failed to read file {value[1:]}: {e.strerror or e}") from None
    else:
        data = value.encode("utf-8")
    if as_base64:
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _kv_error(f"Failed to base64 decode data: {e}") from None
    return data


@kv.command("put")
@http_options
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "-cas",
    "--cas",
    is_flag=True,
    help="Check-and-set: write only if the key's ModifyIndex is -modify-index.",
)
@click.option(
    "-modify-index",
    "--modify-index",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Index for -cas (0: only if the key does not exist).",
)
@click.option(
    "-flags",
    "--flags",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Opaque unsigned integer stored with the key.",
)
@click.option(
    "-base64",
    "--base64",
    "as_base64",
    is_flag=True,
    help="VALUE is base64-encoded; store the decoded bytes.",
)
def kv_put(
    key: str,
    value: str | None,
    cas: bool,
    modify_index: int | None,
    flags: int | None,
    as_base64: bool,
) -> None:
    """Write VALUE (or stdin with `-`, or a file with `@path`) to KEY."""
    key = _normalize_key(key)
    if not key:
        raise _kv_error("Missing KEY argument")
    if cas and modify_index is None:
        raise _kv_error("Must specify -modify-index with -cas!")
    data = _read_value(value, as_base64)
    ok = client().kv_put(key, data, cas=modify_index if cas else None, flags=flags)
    if not ok:
        if cas:
            raise _kv_error(f"Did not write to {key}: CAS failed")
        raise _kv_error(f"Failed writing data to {key}")
    click.echo(f"Success! Data written to: {key}")


@kv.command("delete")
@http_options
@click.argument("key", required=False)
@click.option("-recurse", "--recurse", is_flag=True, help="Delete every key under the prefix.")
@click.option(
    "-cas", "--cas", is_flag=True, help="Delete only if the key's ModifyIndex is -modify-index."
)
@click.option(
    "-modify-index",
    "--modify-index",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Index for -cas.",
)
def kv_delete(key: str | None, recurse: bool, cas: bool, modify_index: int | None) -> None:
    """Delete KEY, or with -recurse every key under it."""
    key = _normalize_key(key)
    if not key and not recurse:
        raise _kv_error("Missing KEY argument")
    if cas and recurse:
        raise _kv_error("Cannot specify both -cas and -recurse!")
    if cas and modify_index is None:
        raise _kv_error("Must specify -modify-index with -cas!")
    ok = client().kv_delete(key, recurse=recurse, cas=modify_index if cas else None)
    if not ok:
        if cas:
            raise _kv_error(f"Did not delete key {key}: CAS failed")
        raise _kv_error(f"Failed to delete key {key}")
    if recurse:
        click.echo(f"Success! Deleted keys with prefix: {key}")
    else:
        click.echo(f"Success! Deleted key: {key}")
