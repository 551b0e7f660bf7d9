"""`meshd agent`: parse Consul's agent flags, load the configuration, run the agent.

Flag names are Consul's so existing unit files and scripts work unchanged. The CLI only collects
what was given; merging with files, defaults and validation all belong to `meshd.config`, so a
flag and the equivalent config-file key can never disagree.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# (flag, kind, help). kind: "flag" (switch), "multi" (repeatable), "int" or "str".
AGENT_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("dev", "flag", "Development mode: one in-memory server+agent on 127.0.0.1."),
    ("server", "flag", "Run as a server (a Raft voter holding the catalog)."),
    ("bootstrap", "flag", "Bootstrap a single server on its own (prefer -bootstrap-expect)."),
    ("bootstrap-expect", "int", "Servers to wait for before electing the first leader."),
    ("config-file", "multi", "A JSON or HCL config file (repeatable; later files win)."),
    ("config-dir", "multi", "Load every *.json and *.hcl file here (repeatable)."),
    ("data-dir", "str", "Where a server keeps its Raft journal and snapshots."),
    ("node", "str", "Node name (default: the host name)."),
    ("datacenter", "str", "Datacenter name (default dc1)."),
    ("bind", "str", "Address for cluster communication."),
    ("advertise", "str", "Address other nodes should use to reach this one."),
    ("client", "str", "Address(es) for the HTTP, DNS and gRPC listeners."),
    ("http-port", "int", "HTTP API port (-1 disables)."),
    ("https-port", "int", "HTTPS API port (-1 disables)."),
    ("dns-port", "int", "DNS port (-1 disables)."),
    ("grpc-port", "int", "gRPC/xDS port (-1 disables)."),
    ("server-port", "int", "Server RPC port."),
    ("serf-lan-port", "int", "Accepted for Consul compatibility."),
    ("serf-wan-port", "int", "Accepted for Consul compatibility."),
    ("retry-join", "multi", "Address of a server to join, retried until it works (repeatable)."),
    ("retry-interval", "str", "Time between join attempts, e.g. 30s."),
    ("encrypt", "str", "Base64 cluster key that peers must prove they hold."),
    ("domain", "str", "DNS domain (default consul.)."),
    ("alt-domain", "str", "An additional DNS domain to answer for."),
    ("recursor", "multi", "Upstream DNS server for other names (repeatable)."),
    ("log-level", "str", "trace, debug, info, warn or error."),
    ("node-meta", "multi", "Node metadata as key:value (repeatable)."),
    ("enable-script-checks", "flag", "Allow health checks that run commands."),
    ("log-json", "flag", "Log one JSON object per line."),
    ("log-file", "str", "Also log to this file (a path ending in / is a directory)."),
    ("log-rotate-bytes", "int", "Rotate the log file past this size (0: no limit)."),
    ("log-rotate-duration", "str", "Rotate the log file this often (default 24h)."),
    ("log-rotate-max-files", "int", "Rotated log files to keep (0: all, -1: none)."),
    ("pid-file", "str", "Write the agent's PID to this file."),
)

# Passed to load_config as files/dirs, not as flags.
_SOURCE_FLAGS = {"config-file": "files", "config-dir": "dirs"}


def _param_name(flag: str) -> str:
    return flag.replace("-", "_")


def _agent_options(f: F) -> F:
    for flag, kind, help_text in reversed(AGENT_FLAGS):
        names = (f"-{flag}", f"--{flag}", _param_name(flag))
        if kind == "flag":
            f = click.option(*names, is_flag=True, default=False, help=help_text)(f)
        elif kind == "multi":
            f = click.option(*names, multiple=True, help=help_text)(f)
        elif kind == "int":
            f = click.option(*names, type=int, default=None, help=help_text)(f)
        else:
            f = click.option(*names, default=None, help=help_text)(f)
    return f


def build_flags(params: dict[str, Any]) -> dict[str, Any]:
    """Flags keyed by Consul's name; None when not given, lists for repeatables."""
    flags: dict[str, Any] = {}
    for flag, kind, _ in AGENT_FLAGS:
        if flag in _SOURCE_FLAGS:
            continue
        value = params.get(_param_name(flag))
        if kind == "flag":
            flags[flag] = True if value else None
        elif kind == "multi":
            flags[flag] = list(value or ())
        else:
            flags[flag] = value
    return flags


@click.command(context_settings={"max_content_width": 100})
@_agent_options
def agent(**params: Any) -> None:
    """Run a meshd agent (and, with -server or -dev, a server) until SIGINT/SIGTERM."""
    from meshd.agent.reload import ConfigSource
    from meshd.agent.run import run_agent  # heavy (aiohttp, grpc, Raft); only the agent needs it
    from meshd.config import ConfigError

    source = ConfigSource(
        files=list(params.get("config_file") or ()),
        dirs=list(params.get("config_dir") or ()),
        flags=build_flags(params),
        dev=bool(params.get("dev")),
    )
    try:
        cfg = source.load()
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    sys.exit(run_agent(cfg, source))
