"""A small synchronous client for meshd's Consul-compatible HTTP API, used by the CLI.

It is stdlib-only (urllib) on purpose: every CLI invocation makes one or two requests, so starting
an event loop and importing aiohttp would cost more than the requests themselves. Errors come back
as one typed exception whose text is the server's own plain-text reason, because that reason is
what an operator needs to read.
"""

from __future__ import annotations

import base64
import email.message
import http.client
import ipaddress
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_ADDR",
    "APIConnectionError",
    "APIError",
    "Client",
    "decode_kv_value",
    "resolve_address",
    "resolve_token",
]

DEFAULT_ADDR = "http://127.0.0.1:8500"
DEFAULT_TIMEOUT = 30.0

Params = Mapping[str, str | int | bool | None]


class APIError(Exception):
    """A request the agent refused or answered with an error status.

    `str()` is only the server's message so the CLI can print `Error: <message>` verbatim.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


class APIConnectionError(APIError):
    """No HTTP response at all; status 0 keeps it distinguishable from any server answer."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(0, f"cannot reach meshd at {address}: {reason}")
        self.address = address
        self.reason = reason


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_address(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Pick the agent address the way Consul's CLI does, so existing shells keep working.

    Order: explicit option, MESHD_HTTP_ADDR, CONSUL_HTTP_ADDR, the default. A bare `host:port`
    gets `http://` (or `https://` when CONSUL_HTTP_SSL / MESHD_HTTP_SSL is true).
    """
    env = os.environ if env is None else env
    addr = explicit or env.get("MESHD_HTTP_ADDR") or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDR
    addr = addr.strip().rstrip("/")
    if "://" not in addr:
        ssl_on = _truthy(env.get("MESHD_HTTP_SSL")) or _truthy(env.get("CONSUL_HTTP_SSL"))
        addr = f"{'https' if ssl_on else 'http'}://{addr}"
    scheme = addr.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported address {addr!r}: use http://, https:// or host:port")
    return addr


def resolve_token(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    token_file: str | None = None,
) -> str | None:
    """Consul's order: -token, -token-file, $..._HTTP_TOKEN, then $..._HTTP_TOKEN_FILE."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    for path in (
        token_file,
        None,
        env.get("MESHD_HTTP_TOKEN_FILE"),
        env.get("CONSUL_HTTP_TOKEN_FILE"),
    ):
        if path is None:  # between the files given by flag and by environment: the variables
            value = env.get("MESHD_HTTP_TOKEN") or env.get("CONSUL_HTTP_TOKEN")
            if value:
                return value
            continue
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise ValueError(f"cannot read the token file {path}: {e.strerror}") from None
    return None


def decode_kv_value(value: str | None) -> bytes:
    """KV values travel base64-encoded in JSON (null for an empty value), as in Consul."""
    return base64.b64decode(value) if value else b""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reason(err: BaseException) -> str:
    """A short human reason for a transport failure, e.g. 'connection refused'."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else OSError(str(err.reason))
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror or err})"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {getattr(err, 'reason', None) or err}"
    if isinstance(err, ConnectionResetError):
        return "connection reset by peer"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return str(text).lower() if isinstance(err, OSError) else str(text)


class Client:
    """One agent's HTTP API. Stateless apart from address, token and TLS settings."""

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: str | None = None,
        token_file: str | None = None,
    ) -> None:
        self.address = resolve_address(address)
        self.token = resolve_token(token, token_file=token_file)
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = []
        host = urllib.parse.urlsplit(self.address).hostname or ""
        if _is_loopback(host):
            # Like Go's net/http, never send loopback traffic through an HTTP(S)_PROXY.
            handlers.append(urllib.request.ProxyHandler({}))
        if self.address.startswith("https://"):
            cafile = ca_file or os.environ.get("MESHD_CACERT") or os.environ.get("CONSUL_CACERT")
            ctx = ssl.create_default_context(cafile=cafile or None)
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)

    # ---- transport --------------------------------------------------------------------------

    def url(self, path: str, params: Params | None = None) -> str:
        """`None`/`True` params become bare flags (`?raw`), which is how Consul spells them."""
        url = self.address + "/" + urllib.parse.quote(path.lstrip("/"), safe="/:@!$&'()*+,;=-._~")
        parts: list[str] = []
        for key, value in (params or {}).items():
            if value is False:
                continue
            if value is None or value is True:
                parts.append(urllib.parse.quote(key))
            else:
                parts.append(f"{urllib.parse.quote(key)}={urllib.parse.quote(str(value), safe='')}")
        return url + ("?" + "&".join(parts) if parts else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; return (status, body) for 2xx, raise APIError otherwise."""
        status, data, _ = self.exchange(
            method, path, params=params, body=body, content_type=content_type
        )
        return status, data

    def exchange(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, bytes, email.message.Message]:
        """`request` with the response headers; statuses in `accept` are answers, not errors."""
        headers = {"User-Agent": "meshd-cli"}
        if self.token:
            headers["X-Consul-Token"] = self.token
        if content_type:
            headers["Content-Type"] = content_type
        if body is None and method in ("PUT", "POST"):
            body = b""
        req = urllib.request.Request(
            self.url(path, params), data=body, method=method, headers=headers
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            try:
                text = e.read().decode("utf-8", errors="replace").strip()
            except OSError:
                text = ""
            if e.code in accept:
                return e.code, text.encode(), e.headers
            raise APIError(e.code, text or f"unexpected response code {e.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise APIConnectionError(self.address, _reason(e)) from None

    def get_indexed(self, path: str, params: Params | None = None) -> tuple[Any, int]:
        """A (blocking) read: the value, None for a 404, and X-Consul-Index for the next one."""
        status, data, headers = self.exchange("GET", path, params=params, accept=(404,))
        index = int(headers.get("X-Consul-Index") or 0)
        return (None if status == 404 else self._decode(data)), index

    @staticmethod
    def _decode(data: bytes) -> Any:
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise APIError(200, f"invalid JSON in response: {data[:200]!r}") from None

    def get(self, path: str, params: Params | None = None, *, raw: bool = False) -> Any:
        _, data = self.request("GET", path, params=params)
        return data if raw else self._decode(data)

    def put(
        self, path: str, body: Any = None, params: Params | None = None, *, raw: bool = False
    ) -> Any:
        """`body` bytes go as-is (KV values); anything else is sent as JSON."""
        if body is None or isinstance(body, bytes):
            payload, ctype = body, None
        else:
            payload, ctype = json.dumps(body).encode(), "application/json"
        _, data = self.request("PUT", path, params=params, body=payload, content_type=ctype)
        return data if raw else self._decode(data)

    def delete(self, path: str, params: Params | None = None, *, raw: bool = False) -> Any:
        _, data = self.request("DELETE", path, params=params)
        return data if raw else self._decode(data)

    def _get_or_none(self, path: str, params: Params | None = None, *, raw: bool = False) -> Any:
        """Consul answers a missing KV key or prefix with an empty 404, which is not an error."""
        try:
            return self.get(path, params, raw=raw)
        except APIError as e:
            if e.status == 404:
                return None
            raise

    # ---- agent and status ---------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        return self.get("/v1/agent/members") or []

    def agent_self(self) -> dict[str, Any]:
        return self.get("/v1/agent/self") or {}

    def status_leader(self) -> str:
        return self.get("/v1/status/leader") or ""

    def status_peers(self) -> list[str]:
        return self.get("/v1/status/peers") or []

    def register_service(self, definition: Mapping[str, Any]) -> None:
        self.put("/v1/agent/service/register", dict(definition), raw=True)

    def deregister_service(self, service_id: str) -> None:
        self.put(f"/v1/agent/service/deregister/{service_id}", raw=True)

    # ---- catalog ------------------------------------------------------------------------------

    def catalog_services(self) -> dict[str, list[str]]:
        return self.get("/v1/catalog/services") or {}

    def catalog_nodes(self) -> list[dict[str, Any]]:
        return self.get("/v1/catalog/nodes") or []

    def catalog_service(self, name: str) -> list[dict[str, Any]]:
        return self.get(f"/v1/catalog/service/{name}") or []

    def catalog_node(self, node: str) -> dict[str, Any] | None:
        """None when the catalog has no such node (Consul answers 200 with `null`)."""
        return self._get_or_none(f"/v1/catalog/node/{node}")

    # ---- KV -----------------------------------------------------------------------------------

    def kv_get_raw(self, key: str) -> bytes | None:
        return self._get_or_none(f"/v1/kv/{key}", {"raw": True}, raw=True)

    def kv_get(self, key: str, *, recurse: bool = False) -> list[dict[str, Any]] | None:
        return self._get_or_none(f"/v1/kv/{key}", {"recurse": recurse})

    def kv_keys(self, prefix: str, separator: str = "") -> list[str]:
        params: dict[str, str | bool] = {"keys": True}
        if separator:
            params["separator"] = separator
        return self._get_or_none(f"/v1/kv/{prefix}", params) or []

    def kv_put(
        self, key: str, value: bytes, *, cas: int | None = None, flags: int | None = None
    ) -> bool:
        """False means the server declined the write (a CAS index that no longer matches)."""
        params: dict[str, int] = {}
        if cas is not None:
            params["cas"] = cas
        if flags is not None:
            params["flags"] = flags
        return bool(self.put(f"/v1/kv/{key}", value, params))

    def kv_delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        params: dict[str, int | bool] = {"recurse": recurse}
        if cas is not None:
            params["cas"] = cas
        result = self.delete(f"/v1/kv/{key}", params)
        return True if result is None else bool(result)
