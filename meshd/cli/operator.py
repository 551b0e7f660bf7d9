"""Operating a cluster: `keygen`, `leave`, `operator raft ...`, `snapshot save|restore`."""

from __future__ import annotations

import base64
import os

import click

from meshd.cli import CLIError, client, format_option, http_options
from meshd.cli.output import format_json, format_table
from meshd.fsutil import atomic_write, atomic_write_json


@click.command()
def keygen() -> None:
    """Print a new cluster key for `encrypt` (32 random bytes, base64)."""
    click.echo(base64.b64encode(os.urandom(32)).decode())


@click.command()
@http_options
def leave() -> None:
    """Gracefully leave the cluster and shut the agent down."""
    client().put("/v1/agent/leave")
    click.echo("Graceful leave complete")


@click.group()
def operator() -> None:
    """Cluster-level operations."""


@operator.group()
def raft() -> None:
    """Inspect and change the Raft peer set."""


@raft.command("list-peers")
@http_options
@format_option
def list_peers(fmt: str) -> None:
    conf = client().get("/v1/operator/raft/configuration")
    if fmt == "json":
        click.echo(format_json(conf))
        return
    rows = [
        (
            s["Node"],
            s["ID"],
            s["Address"],
            "leader" if s["Leader"] else "follower",
            str(s["Voter"]).lower(),
            "3",
        )
        for s in conf.get("Servers", [])
    ]
    click.echo(format_table(("Node", "ID", "Address", "State", "Voter", "RaftProtocol"), rows))


@raft.command("remove-peer")
@http_options
@click.option("-address", "--address", required=True, help="IP:port of the Raft peer to remove.")
def remove_peer(address: str) -> None:
    client().delete("/v1/operator/raft/peer", {"address": address})
    click.echo(f'Removed peer with address "{address}"')


@raft.command("recover")
@click.option(
    "-data-dir",
    "--data-dir",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The stopped server's data directory.",
)
@click.option(
    "-peers",
    "--peers",
    required=True,
    help="Comma-separated Raft addresses (IP:port) of the servers that remain.",
)
def recover(data_dir: str, peers: str) -> None:
    """Offline recovery after quorum loss: rewrite a stopped server's peer set.

    Run it on every surviving server while all of them are stopped, with the same list, then
    start them. Writes that only the lost servers had are gone; everything the survivors
    committed stays.
    """
    import json

    addrs = [p.strip() for p in peers.split(",") if p.strip()]
    if not addrs or any(":" not in a for a in addrs):
        raise CLIError("-peers must list IP:port Raft addresses, e.g. 10.0.0.1:8301")
    raft_dir = os.path.join(data_dir, "raft")
    if not os.path.isdir(raft_dir):
        raise CLIError(f"{data_dir} holds no Raft state (no raft/ directory)")
    path = os.path.join(raft_dir, "peers.json")
    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    new = {a: old.get(a, a.rsplit(":", 1)[0] + ":8300") for a in addrs}
    atomic_write_json(path, new)
    click.echo(f"Peer set of {data_dir} is now: {', '.join(addrs)}")


@click.group()
def snapshot() -> None:
    """Save or restore a point-in-time copy of the servers' state."""


@snapshot.command("save")
@http_options
@click.argument("file", type=click.Path(dir_okay=False))
def snapshot_save(file: str) -> None:
    data = client().get("/v1/snapshot", raw=True)
    if not data:
        raise CLIError("the server returned an empty snapshot")
    atomic_write(file, data, 0o600)  # it holds the CA signing key: owner-only
    click.echo(f"Saved snapshot to {file}")


@snapshot.command("restore")
@http_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def snapshot_restore(file: str) -> None:
    with open(file, "rb") as f:
        data = f.read()
    client().put("/v1/snapshot", data)
    click.echo("Restored snapshot")
