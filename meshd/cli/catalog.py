"""`meshd catalog services|nodes`: read the cluster-wide catalog, as `consul catalog` does."""

from __future__ import annotations

from typing import Any

import click

from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.output import format_json, format_table, node_rows, service_lines


@click.group()
def catalog() -> None:
    """Query the catalog of nodes and services."""


def _node_services(node: str) -> dict[str, list[str]]:
    """One node's services in /v1/catalog/services' shape, so both paths print the same way."""
    found = client().catalog_node(node)
    if not found:
        raise CLIError(f"No node found with name {node!r}")
    out: dict[str, set[str]] = {}
    services: dict[str, Any] = found.get("Services") or {}
    for svc in services.values():
        out.setdefault(str(svc.get("Service", "")), set()).update(svc.get("Tags") or [])
    return {name: sorted(tags) for name, tags in out.items()}


@catalog.command("services")
@http_options
@format_option
@click.option("-tags", "--tags", is_flag=True, help="Also show each service's tags.")
@click.option(
    "-node", "--node", default=None, metavar="NAME", help="Only services registered on this node."
)
def catalog_services(fmt: str, tags: bool, node: str | None) -> None:
    """List service names, one per line, sorted.

    With -format=json prints a {name: [tags]} object, also when -node is given.
    """
    services = _node_services(node) if node else client().catalog_services()
    if fmt == "json":
        click.echo(format_json(services))
        return
    if services:
        click.echo(service_lines(services, tags=tags))


@catalog.command("nodes")
@http_options
@format_option
@click.option(
    "-service",
    "--service",
    default=None,
    metavar="NAME",
    help="Only nodes running an instance of this service.",
)
@click.option(
    "-detailed",
    "--detailed",
    is_flag=True,
    help="Full node IDs, tagged addresses and node metadata.",
)
def catalog_nodes(fmt: str, service: str | None, detailed: bool) -> None:
    """List nodes: name, ID (first 8 characters), address and datacenter."""
    api = client()
    nodes = api.catalog_service(service) if service else api.catalog_nodes()
    if fmt == "json":
        click.echo(format_json(nodes))
        return
    if not nodes:
        # Consul's wording; an empty answer is not a failure, so the exit status stays 0.
        click.echo("No nodes match the given query - try expanding your search.", err=True)
        return
    headers, rows = node_rows(nodes, detailed=detailed)
    click.echo(format_table(headers, rows))
