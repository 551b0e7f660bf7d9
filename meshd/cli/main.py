"""The `meshd` command: one binary that is both the agent and its operator CLI, like `consul`.

Subcommands live in small modules and are attached here; the agent itself is imported only when
`meshd agent` runs, so `meshd kv get` stays quick and works without the server dependencies.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from meshd.api import APIError
from meshd.cli import CLIError, http_options
from meshd.cli.acl import acl
from meshd.cli.acl_auth import ACL_COMMANDS, login, logout
from meshd.cli.agent_cmd import agent
from meshd.cli.catalog import catalog
from meshd.cli.config_cmd import config
from meshd.cli.connect import connect
from meshd.cli.event import event
from meshd.cli.info import info, members, meshd_version, version
from meshd.cli.intention import intention
from meshd.cli.k8s import k8s
from meshd.cli.kv import kv
from meshd.cli.lock import lock
from meshd.cli.observe import explain, top
from meshd.cli.operator import keygen, leave, operator, snapshot
from meshd.cli.reload_cmd import reload
from meshd.cli.rtt import rtt
from meshd.cli.services import services
from meshd.cli.tls_cmd import tls
from meshd.cli.validate import validate
from meshd.cli.watch import watch

CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "-help", "--help"],
    "max_content_width": 100,
}


class MeshdGroup(click.Group):
    """Turns API failures from any nested command into one `Error: ...` line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except APIError as e:
            raise CLIError.from_api(e) from None


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"meshd v{meshd_version()}")
        ctx.exit(0)


@click.group(cls=MeshdGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "-version",
    "--version",
    "-v",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@http_options
def cli() -> None:
    """meshd: service discovery and service mesh, compatible with Consul's API, DNS and CLI."""


for command in (
    acl,
    agent,
    catalog,
    config,
    connect,
    event,
    explain,
    info,
    intention,
    k8s,
    keygen,
    kv,
    leave,
    lock,
    login,
    logout,
    members,
    operator,
    reload,
    rtt,
    services,
    snapshot,
    tls,
    top,
    validate,
    version,
    watch,
):
    cli.add_command(command)
for command in ACL_COMMANDS:
    acl.add_command(command)


def main() -> None:
    """Console-script entry point (`meshd = meshd.cli.main:main`)."""
    try:
        cli.main(prog_name="meshd")
    except BrokenPipeError:
        # `meshd kv get -recurse | head`: the reader left; exit quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
