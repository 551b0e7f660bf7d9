"""`meshd version`, `meshd members` and `meshd info`: what is this agent and who are its peers."""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

import click

from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.output import (
    format_json,
    format_sections,
    format_table,
    member_rows,
    member_status,
)


def meshd_version() -> str:
    """The installed distribution's version, or the source tree's when run uninstalled."""
    try:
        return metadata.version("meshd")
    except metadata.PackageNotFoundError:
        from meshd import __version__

        return __version__


@click.command()
def version() -> None:
    """Print the meshd version."""
    click.echo(f"meshd v{meshd_version()}")


@click.command()
@http_options
@format_option
@click.option("-detailed", "--detailed", is_flag=True, help="Show every Serf-style tag.")
@click.option(
    "-status",
    "--status",
    "status_re",
    default=None,
    metavar="REGEX",
    help="Only members whose status (alive, left, failed...) matches REGEX.",
)
def members(fmt: str, detailed: bool, status_re: str | None) -> None:
    """List the cluster members this agent knows about."""
    rows: list[dict[str, Any]] = client().members()
    if status_re:
        try:
            pattern = re.compile(status_re)
        except re.error as e:
            raise click.UsageError(f"invalid -status regex: {e}") from None
        rows = [m for m in rows if pattern.search(member_status(m.get("Status")))]
    if fmt == "json":
        click.echo(format_json(rows))
        return
    headers, table = member_rows(rows, detailed=detailed)
    if table:
        click.echo(format_table(headers, table))


def info_sections(
    self_info: dict[str, Any],
    leader: str,
    peers: list[str],
) -> dict[str, dict[str, Any]]:
    """The subset of `consul info` meshd can report, under the same section and key names."""
    cfg = self_info.get("Config") or {}
    member = self_info.get("Member") or {}
    agent = {
        "node_name": cfg.get("NodeName", ""),
        "node_id": cfg.get("NodeID", ""),
        "datacenter": cfg.get("Datacenter", ""),
        "server": bool(cfg.get("Server", False)),
        "version": cfg.get("Version", ""),
    }
    if member.get("Addr"):
        agent["address"] = member["Addr"]
    raft = {"leader": leader, "num_peers": len(peers), "peers": ",".join(peers)}
    sections: dict[str, dict[str, Any]] = {"agent": agent, "raft": raft}
    build = {"version": cfg.get("Version", ""), "revision": cfg.get("Revision", "")}
    sections["build"] = build
    meta = self_info.get("Meta") or {}
    if meta:
        sections["node_meta"] = dict(meta)
    return sections


@click.command()
@http_options
@format_option
def info(fmt: str) -> None:
    """Show this agent's identity and the Raft cluster state, like `consul info`."""
    api = client()
    self_info = api.agent_self()
    if not isinstance(self_info, dict):
        raise CLIError("unexpected /v1/agent/self response")
    leader = api.status_leader()
    peers = api.status_peers()
    if fmt == "json":
        click.echo(format_json({"Self": self_info, "Leader": leader, "Peers": peers}))
        return
    click.echo(format_sections(info_sections(self_info, leader, peers)))
