"""Watch plans, as `consul watch` and the agent's `watches` config run them.

A plan is a blocking query on the agent's HTTP API repeated forever; whenever its
X-Consul-Index moves and the answer differs from the last one, the handler runs with the answer
as JSON: a command with the JSON on stdin (and CONSUL_INDEX in its environment), or an HTTP
request with the JSON as body. The same code serves the CLI and the agent: the agent runs each
plan on a thread of its own (agent/watches.py), since a plan blocks on HTTP and on its handler.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshd.api import APIConnectionError, APIError, Client
from meshd.durations import DurationError, parse_duration_seconds

TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")
HANDLER_TYPES = ("script", "http")
# the parameters each type needs and may take (Consul's watch funcs)
_REQUIRED = {"key": ("key",), "keyprefix": ("prefix",), "service": ("service",)}
_ALLOWED = {
    "key": {"key"},
    "keyprefix": {"prefix"},
    "services": set(),
    "nodes": set(),
    "service": {"service", "tag", "passingonly"},
    "checks": {"service", "state"},
    "event": {"name"},
}
_COMMON = {
    "type",
    "datacenter",
    "token",
    "args",
    "handler",
    "handler_type",
    "http_handler_config",
}
CHECK_STATES = ("any", "passing", "warning", "critical")


class WatchError(ValueError):
    """A watch definition that cannot run; the text says which field and why."""


@dataclass
class HTTPHandler:
    path: str
    method: str = "POST"
    header: dict[str, list[str]] = field(default_factory=dict)
    timeout: float = 10.0
    tls_skip_verify: bool = False


@dataclass
class WatchSpec:
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # a command, exec'd as is
    shell: str = ""  # a command line run by `sh -c` (`handler`, and the CLI's default)
    http: HTTPHandler | None = None
    datacenter: str = ""
    token: str = ""

    def request(self) -> tuple[str, dict[str, str | bool]]:
        """The HTTP read this plan blocks on: (path, query parameters)."""
        p = self.params
        q: dict[str, str | bool] = {}
        if self.datacenter:
            q["dc"] = self.datacenter
        if self.type == "key":
            return f"/v1/kv/{p['key']}", q
        if self.type == "keyprefix":
            return f"/v1/kv/{p['prefix']}", {**q, "recurse": True}
        if self.type == "services":
            return "/v1/catalog/services", q
        if self.type == "nodes":
            return "/v1/catalog/nodes", q
        if self.type == "service":
            if p.get("tag"):
                q["tag"] = str(p["tag"])
            if p.get("passingonly"):
                q["passing"] = True
            return f"/v1/health/service/{p['service']}", q
        if self.type == "checks":
            if p.get("service"):
                return f"/v1/health/checks/{p['service']}", q
            return f"/v1/health/state/{p.get('state') or 'any'}", q
        if p.get("name"):
            q["name"] = str(p["name"])
        return "/v1/event/list", q

    def result(self, body: Any) -> Any:
        """A key watch hands over the entry itself; a missing key or prefix is null."""
        if self.type == "key":
            return body[0] if body else None
        return body


def _str(raw: Mapping[str, Any], key: str) -> str:
    v = raw.get(key, "")
    if not isinstance(v, str):
        raise WatchError(f"watch {key!r} must be a string")
    return v


def parse_watch(raw: Mapping[str, Any]) -> WatchSpec:
    """A watch from the agent config (Consul's keys) or the CLI's flags, checked whole."""
    wtype = _str(raw, "type")
    if wtype not in TYPES:
        raise WatchError(f"watch type must be one of {', '.join(TYPES)}, not {wtype!r}")
    unknown = sorted(set(raw) - _COMMON - _ALLOWED[wtype])
    if unknown:
        raise WatchError(f"watch type {wtype!r} does not take {', '.join(unknown)}")
    for need in _REQUIRED.get(wtype, ()):
        if not raw.get(need):
            raise WatchError(f"watch type {wtype!r} needs {need!r}")
    if wtype == "checks":
        if raw.get("service") and raw.get("state"):
            raise WatchError("watch type 'checks' takes 'service' or 'state', not both")
        if raw.get("state") and raw["state"] not in CHECK_STATES:
            raise WatchError(f"watch state must be one of {', '.join(CHECK_STATES)}")
    params = {k: v for k, v in raw.items() if k in _ALLOWED[wtype]}
    if isinstance(params.get("tag"), list):  # Consul takes a list; the API one tag
        params["tag"] = params["tag"][0] if params["tag"] else ""
    spec = WatchSpec(
        type=wtype,
        params=params,
        datacenter=_str(raw, "datacenter"),
        token=_str(raw, "token"),
    )
    _handler(spec, raw)
    return spec


def _duration(value: Any) -> float:
    try:
        return parse_duration_seconds(value)
    except DurationError as e:
        raise WatchError(f"http_handler_config.timeout: {e}") from None


def _handler(spec: WatchSpec, raw: Mapping[str, Any]) -> None:
    htype = raw.get("handler_type") or ("http" if raw.get("http_handler_config") else "script")
    if htype not in HANDLER_TYPES:
        raise WatchError(f"handler_type must be 'script' or 'http', not {htype!r}")
    if htype == "http":
        cfg = raw.get("http_handler_config")
        if not isinstance(cfg, Mapping) or not cfg.get("path"):
            raise WatchError("an http handler needs http_handler_config with a 'path'")
        headers = {
            str(k): [str(x) for x in v] if isinstance(v, list) else [str(v)]
            for k, v in (cfg.get("header") or {}).items()
        }
        spec.http = HTTPHandler(
            path=str(cfg["path"]),
            method=str(cfg.get("method") or "POST").upper(),
            header=headers,
            timeout=_duration(cfg.get("timeout") or "10s"),
            tls_skip_verify=bool(cfg.get("tls_skip_verify")),
        )
        return
    args = raw.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise WatchError("watch 'args' must be a list of strings")
    spec.args = list(args)
    spec.shell = _str(raw, "handler")
    if spec.args and spec.shell:
        raise WatchError("a watch takes 'args' or 'handler', not both")


# ---- handlers -------------------------------------------------------------------------------


def run_handler(spec: WatchSpec, index: int, data: Any) -> None:
    """Hand one answer to the plan's handler; a failing handler is reported, the plan goes on."""
    body = json.dumps(data, indent=2).encode() + b"\n"
    if spec.http is not None:
        _post(spec.http, index, body)
        return
    env = {**os.environ, "CONSUL_INDEX": str(index), "MESHD_INDEX": str(index)}
    cmd: list[str] = spec.args or ["/bin/sh", "-c", spec.shell]
    try:
        proc = subprocess.run(cmd, input=body, env=env, capture_output=True, check=False)
    except OSError as e:
        raise WatchError(f"watch handler {cmd[0]!r} could not start: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise WatchError(f"watch handler exited with {proc.returncode}: {err[-500:]}")


def _post(h: HTTPHandler, index: int, body: bytes) -> None:
    req = urllib.request.Request(h.path, data=body, method=h.method)
    req.add_header("Content-Type", "application/json")
    req.add_header("X-Consul-Index", str(index))
    for name, values in h.header.items():
        for v in values:
            req.add_header(name, v)
    ctx = None
    if h.tls_skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=h.timeout, context=ctx) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as e:
        raise WatchError(f"watch http handler {h.path}: {e}") from None


# ---- the plan -------------------------------------------------------------------------------


@dataclass
class Plan:
    """A running watch: which answers the handler has seen, and a way to stop it."""

    spec: WatchSpec
    client: Client
    wait: str = "5m"
    on_error: Callable[[str], None] = lambda msg: None
    stopped: threading.Event = field(default_factory=threading.Event)
    index: int = 0
    last: Any = None
    fired: int = 0

    def step(self, index: int, result: Any) -> bool:
        """Whether this answer goes to the handler: the first, and then any whose index moved
        and whose content changed (Consul's plan skips a wake-up that changed nothing)."""
        first = self.fired == 0
        moved = index != self.index
        if index < self.index and self.spec.type != "event":
            index = 0  # the index went back (a restore, a new leader): start over, as Consul
        self.index = index
        if not first and (not moved or result == self.last):
            return False
        self.last = result
        self.fired += 1
        return True

    def fetch(self) -> tuple[int, Any]:
        path, params = self.spec.request()
        if self.index:
            params = {**params, "index": str(self.index), "wait": self.wait}
        body, index = self.client.get_indexed(path, params)  # body None: a 404
        return index, self.spec.result(body)

    def run(
        self,
        once: bool = False,
        handler: Callable[[int, Any], None] | None = None,
        raise_errors: bool = False,
    ) -> None:
        """Block, fetch, hand over; until `stop()` (or after the first answer with `once`).

        A handler's failure is reported through `on_error` and the plan goes on (the agent's
        watches), or ends the run with `raise_errors` (the CLI, which exits 1 as Consul's)."""
        deliver = handler or (lambda idx, data: run_handler(self.spec, idx, data))
        delay = 0.5
        while not self.stopped.is_set():
            try:
                index, result = self.fetch()
            except APIError as e:
                if isinstance(e, APIConnectionError) or e.status >= 500:
                    self.on_error(f"watch {self.spec.type}: {e}")
                    self.stopped.wait(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                raise WatchError(f"watch {self.spec.type}: {e}") from None
            delay = 0.5
            if self.stopped.is_set() or not self.step(index, result):
                continue
            try:
                deliver(index, result)
            except WatchError as e:
                if raise_errors:
                    raise
                self.on_error(str(e))
            if once:
                return

    def stop(self) -> None:
        self.stopped.set()
