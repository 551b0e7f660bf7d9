"""`meshd validate FILE|DIR...`: check config files as `meshd agent` would load them, start nothing.

Provisioning tools (the Ansible role) run this on a rendered config before putting it in place,
so a bad template never reaches a running agent. Unlike the agent, which stops at start-up, it
reports every problem in one run: a fix-rerun loop per typo is slow on a fleet.
"""

from __future__ import annotations

import os
import sys

import click

from meshd.cli import CLIError


def validation_errors(paths: list[str], config_format: str | None = None) -> list[str]:
    """Every problem in the config named by `paths` (files and dirs), in the order met."""
    from meshd.agent.reload import config_errors
    from meshd.config import collect_config

    files = [p for p in paths if not os.path.isdir(p)]
    dirs = [p for p in paths if os.path.isdir(p)]
    return config_errors(collect_config(files=files, dirs=dirs, config_format=config_format))


@click.command("validate")
@click.argument("paths", nargs=-1, metavar="FILE_OR_DIRECTORY...")
@click.option(
    "-config-format",
    "--config-format",
    type=click.Choice(["json", "hcl"]),
    default=None,
    help="Read the named files as this format whatever their extension.",
)
@click.option("-quiet", "--quiet", is_flag=True, help="Print nothing when the config is valid.")
def validate(paths: tuple[str, ...], config_format: str | None, quiet: bool) -> None:
    """Check config files and directories as the agent would load them; exit 1 on any error."""
    if not paths:
        raise CLIError("Must specify at least one config file or directory")
    errors = validation_errors(list(paths), config_format)
    if errors:
        click.echo("Config validation failed:", err=True)
        for e in errors:
            click.echo(f"  {e}", err=True)
        sys.exit(1)
    if not quiet:
        click.echo("Configuration is valid!")
