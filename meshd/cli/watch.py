"""`meshd watch`: run a watch plan (meshd/watchplan.py) from the command line, as `consul watch`.

Without a handler the first answer is printed as JSON and the command exits; with one the
handler runs on every change until interrupted, and a failing handler ends the watch with exit
status 1, both as Consul's command does.
"""

from __future__ import annotations

import json
from typing import Any

import click

from meshd.cli import CLIError, client, http_options
from meshd.watchplan import Plan, WatchError, parse_watch, run_handler

CLIENT_TIMEOUT = 360.0  # longer than a blocking wait of 5 minutes plus its jitter


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "-type",
    "--type",
    "wtype",
    required=True,
    help="key, keyprefix, services, nodes, service, checks or event.",
)
@click.option("-key", "--key", default="", help="The key (type key).")
@click.option("-prefix", "--prefix", default="", help="The key prefix (type keyprefix).")
@click.option("-service", "--service", default="", help="The service (types service, checks).")
@click.option("-tag", "--tag", default="", help="Only instances with this tag (type service).")
@click.option("-passingonly", "--passingonly", is_flag=True, help="Only passing instances.")
@click.option("-state", "--state", default="", help="Check state (type checks).")
@click.option("-name", "--name", default="", help="Event name (type event).")
@click.option("-datacenter", "--datacenter", default="", help="Datacenter to query.")
@click.option(
    "-shell/-no-shell",
    "--shell/--no-shell",
    default=True,
    help="Run the handler through `sh -c` (default) or exec it directly.",
)
@click.option(
    "-http-handler",
    "--http-handler",
    default="",
    metavar="URL",
    help="POST each answer to URL instead of running a command.",
)
@click.argument("handler", nargs=-1, type=click.UNPROCESSED)
@http_options
def watch(
    wtype: str,
    key: str,
    prefix: str,
    service: str,
    tag: str,
    passingonly: bool,
    state: str,
    name: str,
    datacenter: str,
    shell: bool,
    http_handler: str,
    handler: tuple[str, ...],
) -> None:
    """Watch a view of the catalog, KV or events and run HANDLER (JSON on stdin) on changes."""
    raw: dict[str, Any] = {"type": wtype}
    for field, value in (
        ("key", key),
        ("prefix", prefix),
        ("service", service),
        ("tag", tag),
        ("state", state),
        ("name", name),
        ("datacenter", datacenter),
    ):
        if value:
            raw[field] = value
    if passingonly:
        raw["passingonly"] = True
    if http_handler and handler:
        raise CLIError("give a handler command or -http-handler, not both")
    if http_handler:
        raw["http_handler_config"] = {"path": http_handler}
    elif handler and shell:
        raw["handler"] = " ".join(handler)
    elif handler:
        raw["args"] = list(handler)
    try:
        spec = parse_watch(raw)
    except WatchError as e:
        raise CLIError(str(e)) from None
    api = client()
    api.timeout = CLIENT_TIMEOUT
    plan = Plan(spec, api, on_error=lambda msg: click.echo(msg, err=True))
    try:
        if not handler and not http_handler:
            plan.run(once=True, handler=lambda idx, data: click.echo(json.dumps(data, indent=4)))
            return
        plan.run(handler=lambda idx, data: run_handler(spec, idx, data), raise_errors=True)
    except WatchError as e:
        raise CLIError(f"Error executing handler: {e}") from None
    except KeyboardInterrupt:
        plan.stop()
