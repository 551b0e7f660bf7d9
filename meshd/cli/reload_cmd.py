"""`meshd reload`: ask the agent to re-read its config files (PUT /v1/agent/reload)."""

from __future__ import annotations

import click

from meshd.cli import client, http_options


@click.command("reload")
@http_options
def reload() -> None:
    """Reload the agent's config files without a restart."""
    result = client().put("/v1/agent/reload") or {}
    click.echo("Configuration reload triggered")
    ignored = result.get("Ignored") if isinstance(result, dict) else None
    if ignored:
        click.echo(f"Changes that need a restart were ignored: {', '.join(ignored)}", err=True)
