"""`meshd event`: fire a user event, as `consul event` does (prints the event's ID)."""

from __future__ import annotations

import click

from meshd.cli import CLIError, client, http_options


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("-name", "--name", "name", default="", help="Name of the event (required).")
@click.option("-node", "--node", default="", help="Regexp of the node names that take it.")
@click.option("-service", "--service", default="", help="Regexp of the services that take it.")
@click.option("-tag", "--tag", default="", help="Regexp of the service tags (needs -service).")
@click.argument("payload", required=False, default="")
@http_options
def event(name: str, node: str, service: str, tag: str, payload: str) -> None:
    """Fire a user event to every matching agent; PAYLOAD is opaque (up to 100 KiB)."""
    if not name:
        raise CLIError("Event name must be specified")
    if tag and not service:
        raise CLIError("Cannot provide tag filter without service filter.")
    params = {"node": node or None, "service": service or None, "tag": tag or None}
    ev = client().put(
        f"/v1/event/fire/{name}",
        payload.encode() if payload else None,
        {k: v for k, v in params.items() if v is not None},
    )
    click.echo(f"Event ID: {ev['ID']}")
