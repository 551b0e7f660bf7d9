"""`meshd rtt NODE [NODE]`: the estimated round-trip time between two nodes, like `consul rtt`."""

from __future__ import annotations

from typing import Any

import click

from meshd.cli import CLIError, client, http_options
from meshd.coordinate import Coordinate, CoordinateError


def _coordinate(rows: list[dict[str, Any]], node: str) -> Coordinate:
    for row in rows:
        if row.get("Node") == node and not row.get("Segment"):
            try:
                return Coordinate.from_json(row.get("Coord"))
            except CoordinateError as e:
                raise CLIError(f"the coordinate of node {node!r} is unusable: {e}") from None
    raise CLIError(f'Could not find a coordinate for node "{node}"')


@click.command()
@http_options
@click.option("-wan", "--wan", is_flag=True, help="WAN coordinates (not supported: no WAN).")
@click.argument("nodes", nargs=-1, required=True)
def rtt(wan: bool, nodes: tuple[str, ...]) -> None:
    """Estimate the network round-trip time between two nodes from their coordinates.

    With one NODE, the other is the node of the agent being asked.
    """
    if wan:
        raise CLIError("WAN coordinates are not supported: meshd has no WAN federation")
    if len(nodes) > 2:
        raise click.UsageError("give one or two node names")
    api = client()
    if len(nodes) == 1:
        me = api.get("/v1/agent/self")["Config"]["NodeName"]
        nodes = (nodes[0], me)
    rows = api.get("/v1/coordinate/nodes") or []
    a, b = (_coordinate(rows, n) for n in nodes)
    ms = a.distance(b) * 1000.0
    click.echo(f"Estimated {nodes[0]} <-> {nodes[1]} rtt: {ms:.3f} ms (using LAN coordinates)")
