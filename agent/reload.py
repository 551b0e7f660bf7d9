"""Live reload (SIGHUP, `meshd reload`, PUT /v1/agent/reload): re-read the config files and
apply what can change without a restart, as Consul does.

Reloadable: service and check definitions from config files (added, changed, removed; services
registered over the API are never touched), the log level, TLS certificates, keys and CA files
(the live SSL contexts load the new files, so new connections use them), recursors and
`dns_config`, `watches` (stored; running them comes with the watches issue), and the leave
policy on signals. Everything else (ports, addresses, data_dir, server mode, node name,
datacenter, turning TLS on or off, the verify_* switches...) needs a restart: a change there is
reported and ignored. A reload is all or nothing: the new files are fully parsed and every
definition and certificate is checked before anything is applied, so a bad file changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshd.agent.definitions import (
    CheckDefinition,
    DefinitionError,
    ServiceDefinition,
    parse_check,
    parse_service,
)
from meshd.config import Config, ConfigReport, TLSConfig, collect_config, load_config
from meshd.tls import tls_contexts

if TYPE_CHECKING:
    from meshd.agent.agent import Agent
    from meshd.agent.logs import LogSetup
    from meshd.agent.sdnotify import Notifier

__all__ = [
    "ConfigSource",
    "ReloadError",
    "ReloadResult",
    "Reloader",
    "config_errors",
    "definition_errors",
    "merge_reload",
]

log = logging.getLogger("meshd.reload")

# Config fields applied live; any other field that changed is reported and keeps its old value.
RELOADABLE = (
    "services",
    "checks",
    "log_level",
    "recursors",
    "dns_config",
    "watches",
    "leave_on_terminate",
    "skip_leave_on_interrupt",
)
_TLS_FILES = ("ca_file", "cert_file", "key_file")


class ReloadError(Exception):
    """The new configuration was refused; nothing changed. The text says why."""


@dataclass
class ConfigSource:
    """Where the running config came from, so a reload reads the same files and flags again."""

    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    flags: Mapping[str, Any] = field(default_factory=dict)
    dev: bool = False

    def load(self) -> Config:
        return load_config(files=self.files, dirs=self.dirs, flags=self.flags, dev=self.dev)

    def check(self) -> tuple[Config, list[str]]:
        """The config and every problem in it, definitions included, each naming its file."""
        report = collect_config(files=self.files, dirs=self.dirs, flags=self.flags, dev=self.dev)
        return report.config, config_errors(report)


@dataclass
class ReloadResult:
    applied: list[str]  # reloadable keys whose value changed
    ignored: list[str]  # keys that changed but need a restart

    def to_json(self) -> dict[str, list[str]]:
        return {"Applied": self.applied, "Ignored": self.ignored}


def definition_errors(
    source: str, services: list[dict[str, Any]], checks: list[dict[str, Any]], script_checks: bool
) -> list[str]:
    """Every invalid service or check definition, parsed as the agent parses them at start."""
    errors: list[str] = []
    for key, items in (("services", services), ("checks", checks)):
        for i, raw in enumerate(items):
            where = f"{source}: invalid '{key}[{i}]'"
            name = next((raw[k] for k in ("name", "Name", "id", "ID") if raw.get(k)), None)
            if name:
                where += f" ({name})"
            try:
                defn = parse_service(raw) if key == "services" else parse_check(raw)
            except DefinitionError as e:
                errors.append(f"{where}: {e}")
                continue
            embedded = defn.checks if isinstance(defn, ServiceDefinition) else [defn]
            if not script_checks and any(c.Type == "script" for c in embedded):
                errors.append(
                    f"{where}: script checks are disabled on this agent; "
                    "set enable_script_checks = true"
                )
    return errors


def config_errors(report: ConfigReport) -> list[str]:
    """The loader's errors, then each file's invalid service and check definitions."""
    errors = list(report.errors)
    for path, part in report.files:
        errors.extend(
            definition_errors(
                f"config file {path}",
                part.get("services", []),
                part.get("checks", []),
                report.config.enable_script_checks,
            )
        )
    return errors


def _refresh_tls(
    contexts: tuple[ssl.SSLContext | None, ssl.SSLContext | None], tls: TLSConfig
) -> None:
    """Load new files into the live contexts: listeners and connectors keep the same objects,
    and each new handshake uses what is loaded now. A CA added stays trusted with the old one
    until a restart (OpenSSL stores only grow), which is what a CA rollover needs anyway."""
    for ctx in contexts:
        if ctx is None:
            continue
        if tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file:
            ctx.load_verify_locations(cafile=tls.ca_file)


def merge_reload(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config to run with (reloadable keys from `new`, the rest from `old`), and the
    changed keys split into applied and ignored."""
    applied: list[str] = []
    ignored: list[str] = []
    for f in dataclasses.fields(Config):
        if getattr(old, f.name) != getattr(new, f.name) and f.name != "tls":
            (applied if f.name in RELOADABLE else ignored).append(f.name)
    kept = {k: getattr(new, k) for k in RELOADABLE}
    o, n = old.tls, new.tls
    had_tls, has_tls = bool(o.cert_file), bool(n.cert_file)
    if had_tls != has_tls:
        ignored.append("tls (turning TLS on or off)")
        tls = o
    else:
        tls = dataclasses.replace(o, **{k: getattr(n, k) for k in _TLS_FILES})
        if has_tls:
            applied.append("tls")  # the files are re-read even when their paths are the same
        ignored.extend(
            f"tls.{k}"
            for k in ("verify_incoming", "verify_outgoing", "verify_server_hostname")
            if getattr(o, k) != getattr(n, k)
        )
    return dataclasses.replace(old, **kept, tls=tls), applied, ignored


class Reloader:
    """Owns the reload of one agent; reloads are serialized."""

    def __init__(
        self,
        agent: Agent,
        source: ConfigSource,
        logs: LogSetup | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.agent = agent
        self.source = source
        self.logs = logs
        self.notifier = notifier
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:
            if self.notifier is not None:
                self.notifier.reloading()
            try:
                result = await self._reload()
            except ReloadError as e:
                log.error("reload refused, nothing changed: %s", e)
                raise
            finally:
                if self.notifier is not None:
                    self.notifier.ready("Running (reloaded)")
            if result.ignored:
                log.warning(
                    "reload: changes to %s need a restart; ignored", ", ".join(result.ignored)
                )
            log.info("reload: applied %s", ", ".join(result.applied) or "no changes")
            return result

    async def _reload(self) -> ReloadResult:
        agent = self.agent
        old = agent.config
        new, errors = await asyncio.to_thread(self.source.check)
        if errors:
            raise ReloadError("\n".join(errors))
        cfg, applied, ignored = merge_reload(old, new)
        if cfg.tls.cert_file:
            try:  # load into throwaway contexts first: a bad file must change nothing
                await asyncio.to_thread(tls_contexts, cfg)
            except (OSError, ssl.SSLError) as e:
                raise ReloadError(f"tls: cannot load the new certificate files: {e}") from None
        services = {d.service.ID: d for d in map(parse_service, cfg.services)}
        checks = {d.CheckID: d for d in map(parse_check, cfg.checks)}
        old_services = {d.service.ID: d for d in map(parse_service, old.services)}
        old_checks = {d.CheckID: d for d in map(parse_check, old.checks)}

        agent.config = cfg
        if self.logs is not None:
            self.logs.apply(cfg)
        if cfg.tls.cert_file:
            _refresh_tls(agent.ssl_contexts, cfg.tls)
        if agent.dns is not None and ("recursors" in applied or "dns_config" in applied):
            from meshd.agent.agent import dns_settings

            agent.dns.reconfigure(dns_settings(cfg))
        if "watches" in applied:
            log.info(
                "reload: %d watches stored; running watches is not implemented yet",
                len(cfg.watches),
            )
        await self._apply_definitions(old_services, services, old_checks, checks)
        return ReloadResult(applied, ignored)

    async def _apply_definitions(
        self,
        old_services: dict[str, ServiceDefinition],
        services: dict[str, ServiceDefinition],
        old_checks: dict[str, CheckDefinition],
        checks: dict[str, CheckDefinition],
    ) -> None:
        agent = self.agent
        # (a removed definition may already be gone: deregistered over the API since)
        for sid in old_services.keys() - services.keys():
            if sid in agent.local.services:
                await agent.deregister_service(sid)
        for cid in old_checks.keys() - checks.keys():
            if cid in agent.local.checks:
                await agent.deregister_check(cid)
        for sid, d in services.items():
            old = old_services.get(sid)
            # Also when deregistered over the API since: the files are the truth, as in Consul.
            if old is None or old.raw != d.raw or sid not in agent.local.services:
                await agent.register_service(d, replace_checks=True, wait=False, persist=False)
        for cid, c in checks.items():
            old_check = old_checks.get(cid)
            if old_check is None or old_check.raw != c.raw or cid not in agent.local.checks:
                await agent.register_check(c, wait=False, persist=False)
        if not await agent.ae.wait_synced():
            log.warning("reload applied locally; catalog sync pending: %s", agent.ae.last_error)
