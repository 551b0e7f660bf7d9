"""`meshd top` and `meshd explain`: the service graph in a terminal.

`explain` exits 0 when SRC can reach DST and 2 when a step fails, like `intention check`, so a
script can branch on it.
"""

from __future__ import annotations

import time
from typing import Any

import click

from meshd.cli import client, format_option, http_options
from meshd.cli.output import format_json, format_table

HEADERS = ("SERVICE", "RPS", "SUCCESS", "P50", "P99", "DENIED/S", "CONNS/S", "ACTIVE", "IN FROM")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}ms"


def top_rows(graph: dict[str, Any]) -> list[list[str]]:
    """One row per service: its inbound golden metrics and who calls it."""
    callers: dict[str, list[str]] = {}
    for e in graph.get("Edges", []):
        mark = "!" if e.get("Denied") else ""
        callers.setdefault(e["Destination"], []).append(e["Source"] + mark)
    rows = []
    for svc in graph.get("Services", []):
        m = svc["Inbound"]
        rows.append(
            [
                svc["Name"],
                f"{m['RequestsPerSecond']:.2f}",
                _pct(m["SuccessRate"]),
                _ms(m["P50Ms"]),
                _ms(m["P99Ms"]),
                f"{m['DeniedPerSecond']:.2f}",
                f"{m['ConnectionsPerSecond']:.2f}",
                str(m["ActiveConnections"]),
                ",".join(sorted(callers.get(svc["Name"], []))) or "-",
            ]
        )
    return rows


@click.command("top")
@http_options
@format_option
@click.option("-once", "--once", is_flag=True, help="Print one table and exit (scripts, tests).")
@click.option("-interval", "--interval", default=2.0, show_default=True, help="Refresh (s).")
@click.option("-window", "--window", default="30s", show_default=True, help="Rate window.")
def top(fmt: str, once: bool, interval: float, window: str) -> None:
    """Golden metrics per service (inbound, from its sidecars), refreshed; `!` marks a caller
    an intention denies."""
    api = client()
    while True:
        graph = api.get("/v1/meshd/graph", {"window": window})
        out = format_json(graph) if fmt == "json" else format_table(HEADERS, top_rows(graph))
        if once:
            click.echo(out)
            return
        click.clear()
        click.echo(out)
        time.sleep(max(interval, 0.2))


@click.command("explain")
@http_options
@format_option
@click.argument("source")
@click.argument("destination")
def explain(source: str, destination: str, fmt: str) -> None:
    """Why SOURCE can or cannot reach DESTINATION, step by step."""
    res = client().get("/v1/meshd/explain", {"source": source, "destination": destination})
    if fmt == "json":
        click.echo(format_json(res))
    else:
        for step in res["Steps"]:
            click.echo(f"[{'ok' if step['OK'] else 'FAIL'}] {step['Step']}: {step['Detail']}")
        verdict = "can" if res["Allowed"] else "cannot"
        click.echo(f"{source} {verdict} reach {destination}")
    if not res["Allowed"]:
        click.get_current_context().exit(2)
