"""`meshd intention create|delete|get|list|check|match`: Consul's intention commands.

Output lines and exit codes follow `consul intention`, because scripts grep for them: `check`
exits 0 for `Allowed` and 2 for `Denied`, so `if meshd intention check web api` works in a shell.
Intentions are stored as `service-intentions` config entries; these commands use the
per-pair endpoints (`/v1/connect/intentions/exact`) and never touch the other sources of the
destination's entry.
"""

from __future__ import annotations

import json
from typing import Any

import click

from meshd.api import APIError, Client
from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.output import format_json, format_table, parse_pairs

EXACT = "/v1/connect/intentions/exact"


def describe(ixn: dict[str, Any]) -> str:
    """Consul's `Intention.String()`: `web => api (allow)`, or the permission count for L7."""
    perms = ixn.get("Permissions") or []
    if not perms:
        detail = str(ixn.get("Action") or "")
    elif len(perms) == 1:
        detail = "1 permission"
    else:
        detail = f"{len(perms)} permissions"
    return f"{ixn.get('SourceName', '')} => {ixn.get('DestinationName', '')} ({detail})"


def _exact(api: Client, src: str, dst: str) -> dict[str, Any] | None:
    try:
        return api.get(EXACT, {"source": src, "destination": dst})
    except APIError as e:
        if e.status == 404:
            return None
        raise


def _by_id(api: Client, ixn_id: str) -> dict[str, Any]:
    for ixn in api.get("/v1/connect/intentions") or []:
        if ixn.get("ID") == ixn_id:
            return ixn
    raise CLIError(f"Intention with ID {ixn_id!r} not found")


def _lookup(api: Client, args: tuple[str, ...]) -> dict[str, Any]:
    """`SRC DST` or, as in Consul, a single intention ID."""
    if len(args) == 1:
        return _by_id(api, args[0])
    if len(args) == 2:
        found = _exact(api, args[0], args[1])
        if found is None:
            raise CLIError(f"Intention not found: {args[0]} => {args[1]}")
        return found
    raise click.UsageError("expected SRC DST, or an intention ID")


@click.group()
def intention() -> None:
    """Create and inspect intentions: which services may connect to which."""


@intention.command("create")
@http_options
@click.argument("source")
@click.argument("destination")
@click.option("-allow", "--allow", is_flag=True, help="Allow the connection (the default).")
@click.option("-deny", "--deny", is_flag=True, help="Deny the connection.")
@click.option(
    "-replace",
    "--replace",
    is_flag=True,
    help="Replace an existing intention for the same pair instead of failing.",
)
@click.option("-description", "--description", default="", help="Human-readable description.")
@click.option(
    "-meta",
    "--meta",
    "meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata for the intention (repeatable).",
)
def create(
    source: str,
    destination: str,
    allow: bool,
    deny: bool,
    replace: bool,
    description: str,
    meta: tuple[str, ...],
) -> None:
    """Create an intention from SOURCE to DESTINATION (`*`: any service)."""
    if allow and deny:
        raise CLIError("Cannot specify both -allow and -deny")
    try:
        meta_map = parse_pairs(meta, "=", what="-meta")
    except ValueError as e:
        raise CLIError(str(e)) from None
    action = "deny" if deny else "allow"
    label = f"{source} => {destination} ({action})"
    api = client()
    if not replace and _exact(api, source, destination) is not None:
        raise CLIError(
            f'creating intention "{label}": an intention from {source} to '
            f"{destination} already exists (use -replace to overwrite it)"
        )
    body: dict[str, Any] = {"Action": action}
    if description:
        body["Description"] = description
    if meta_map:
        body["Meta"] = meta_map
    try:
        api.put(EXACT, body, {"source": source, "destination": destination})
    except APIError as e:
        raise CLIError(f'creating intention "{label}": {e}') from None
    click.echo(f"Created: {label}")


@intention.command("delete")
@http_options
@click.argument("args", nargs=-1, metavar="SRC DST | ID")
def delete(args: tuple[str, ...]) -> None:
    """Delete the intention from SRC to DST (or with the given ID)."""
    api = client()
    if len(args) == 1:
        ixn = _by_id(api, args[0])
        src, dst = ixn["SourceName"], ixn["DestinationName"]
    elif len(args) == 2:
        src, dst = args
    else:
        raise click.UsageError("expected SRC DST, or an intention ID")
    api.delete(EXACT, {"source": src, "destination": dst})
    click.echo("Intention deleted.")


@intention.command("get")
@http_options
@format_option
@click.argument("args", nargs=-1, metavar="SRC DST | ID")
def get(args: tuple[str, ...], fmt: str) -> None:
    """Show one intention."""
    ixn = _lookup(client(), args)
    if fmt == "json":
        click.echo(format_json(ixn))
        return
    rows: list[list[Any]] = [
        ["Source:", ixn.get("SourceName")],
        ["Destination:", ixn.get("DestinationName")],
    ]
    perms = ixn.get("Permissions") or []
    if perms:
        rows.append(["Permissions:", json.dumps(perms)])
    else:
        rows.append(["Action:", ixn.get("Action")])
    rows += [["ID:", ixn.get("ID")], ["Precedence:", ixn.get("Precedence")]]
    if ixn.get("Description"):
        rows.append(["Description:", ixn["Description"]])
    for key, value in sorted((ixn.get("Meta") or {}).items()):
        rows.append([f"Meta[{key}]:", value])
    for field in ("CreatedAt", "UpdatedAt"):
        if ixn.get(field):
            rows.append([f"{field[:-2]} At:", ixn[field]])
    rows += [["Create Index:", ixn.get("CreateIndex")], ["Modify Index:", ixn.get("ModifyIndex")]]
    click.echo(format_table(None, rows))


@intention.command("list")
@http_options
@format_option
def list_cmd(fmt: str) -> None:
    """List every intention, in evaluation order."""
    ixns = client().get("/v1/connect/intentions") or []
    if fmt == "json":
        click.echo(format_json(ixns))
        return
    if not ixns:
        click.echo("There are no intentions.")
        return
    click.echo(
        format_table(
            ["ID", "Source", "Action", "Destination", "Precedence"],
            (
                [
                    i.get("ID"),
                    i.get("SourceName"),
                    i.get("Action", ""),
                    i.get("DestinationName"),
                    i.get("Precedence"),
                ]
                for i in ixns
            ),
        )
    )


@intention.command("check")
@http_options
@click.argument("source")
@click.argument("destination")
def check(source: str, destination: str) -> None:
    """Check whether SOURCE may connect to DESTINATION (exit 0 allowed, 2 denied)."""
    res = (
        client().get("/v1/connect/intentions/check", {"source": source, "destination": destination})
        or {}
    )
    if res.get("Allowed"):
        click.echo("Allowed")
        return
    click.echo("Denied")
    click.get_current_context().exit(2)


@intention.command("match")
@http_options
@format_option
@click.argument("name")
@click.option(
    "-source", "--source", "by_source", is_flag=True, help="Match intentions whose source is NAME."
)
@click.option(
    "-destination",
    "--destination",
    "by_destination",
    is_flag=True,
    help="Match intentions whose destination is NAME (the default).",
)
def match(name: str, by_source: bool, by_destination: bool, fmt: str) -> None:
    """List the intentions that apply to NAME, in evaluation order."""
    if by_source and by_destination:
        raise CLIError("Cannot specify both -source and -destination")
    by = "source" if by_source else "destination"
    res = client().get("/v1/connect/intentions/match", {"by": by, "name": name}) or {}
    ixns = res.get(name) or []
    if fmt == "json":
        click.echo(format_json(ixns))
        return
    for ixn in ixns:
        click.echo(describe(ixn))
