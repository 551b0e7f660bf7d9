"""`meshd validate FILE|DIR...`: check config files as `meshd agent` would load them, start nothing.

Provisioning tools (the Ansible role) run this on a rendered config before putting it in place,
so a bad template never reaches a running agent. Unlike the agent, which stops at start-up, it
reports every problem in one run: a fix-rerun loop per typo is slow on a fleet.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from meshd.cli import CLIError


def definition_errors(path: str, part: dict[str, Any], script_checks: bool) -> list[str]:
    """Service and check definitions in one file, parsed as the agent parses them at start."""
    from meshd.agent.definitions import DefinitionError, parse_check, parse_service

    errors: list[str] = []
    for key, parse in (("services", parse_service), ("checks", parse_check)):
        for i, raw in enumerate(part.get(key, [])):
            where = f"config file {path}: invalid '{key}[{i}]'"
            name = raw.get("name") or raw.get("Name") or raw.get("id") or raw.get("ID")
            if name:
                where += f" ({name})"
            try:
                defn = parse(raw)
            except DefinitionError as e:
                errors.append(f"{where}: {e}")
                continue
            checks = getattr(defn, "checks", [defn])
            if not script_checks and any(c.Type == "script" for c in checks):
                errors.append(
                    f"{where}: script checks are disabled on this agent; "
                    "set enable_script_checks = true"
                )
    return errors


def validation_errors(paths: list[str]) -> list[str]:
    """Every problem in the config named by `paths` (files and dirs), in the order met."""
    from meshd.config import collect_config

    files = [p for p in paths if not os.path.isdir(p)]
    dirs = [p for p in paths if os.path.isdir(p)]
    report = collect_config(files=files, dirs=dirs)
    errors = list(report.errors)
    for path, part in report.files:
        errors.extend(definition_errors(path, part, report.config.enable_script_checks))
    return errors


@click.command("validate")
@click.argument("paths", nargs=-1, metavar="FILE_OR_DIRECTORY...")
@click.option("-quiet", "--quiet", is_flag=True, help="Print nothing when the config is valid.")
def validate(paths: tuple[str, ...], quiet: bool) -> None:
    """Check config files and directories as the agent would load them; exit 1 on any error."""
    if not paths:
        raise CLIError("Must specify at least one config file or directory")
    errors = validation_errors(list(paths))
    if errors:
        click.echo("Config validation failed:", err=True)
        for e in errors:
            click.echo(f"  {e}", err=True)
        sys.exit(1)
    if not quiet:
        click.echo("Configuration is valid!")
