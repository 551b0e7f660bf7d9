"""Value checkers for config keys: each takes the raw value from a file or flag and returns its
canonical form, or raises InvalidError with the reason (the caller adds the file and key).

Kept apart from `meshd.config` (sources, merging, the Config dataclasses) so each stays small.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from meshd.durations import DurationError, parse_duration_seconds


class InvalidError(Exception):
    """A value's reason for rejection; the caller adds where it came from."""


Validator = Callable[[Any], Any]
Schema = dict[str, tuple[tuple[str, ...] | None, "Validator | Schema"]]


def show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})" if not isinstance(v, str) else repr(v)


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidError(f"must be true or false, got {show(v)}")
    return v


def count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidError(f"must be a non-negative integer, got {show(v)}")
    return v


def positive(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidError(f"must be a positive integer, got {show(v)}")
    return v


def port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or 1 <= v <= 65535):
        raise InvalidError(f"must be a port number 1-65535, or -1 to disable; got {show(v)}")
    return v


def max_files(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < -1:
        raise InvalidError(f"must be -1 (keep none), 0 (keep all) or a count; got {show(v)}")
    return v


def string(v: Any) -> str:
    if not isinstance(v, str):
        raise InvalidError(f"must be a string, got {show(v)}")
    return v


def optional(check: Validator) -> Validator:
    """An empty string means "unset" in Consul's files, so it must not fail format checks."""
    return lambda v: "" if string(v) == "" else check(v)


def policy(v: Any) -> str:
    if string(v).lower() not in ("allow", "deny"):
        raise InvalidError(f"must be allow or deny, got {v!r}")
    return v.lower()


def duration(minimum: float = 0.0, *, positive: bool = False) -> Validator:
    def check(v: Any) -> float:
        try:
            seconds = parse_duration_seconds(v)
        except DurationError as e:
            raise InvalidError(str(e)) from None
        if positive and seconds <= 0:
            raise InvalidError(f"must be greater than zero, got {v!r}")
        if seconds < minimum:
            raise InvalidError(f"must be at least {minimum / 3600:g}h, got {v!r}")
        return seconds

    return check


def ip(v: Any) -> str:
    try:
        ipaddress.ip_address(string(v))
    except ValueError:
        raise InvalidError(f"must be an IP address, got {v!r}") from None
    return v


def ip_list(v: Any) -> str:
    """Consul's client_addr may name several space-separated addresses."""
    if not string(v).split():
        raise InvalidError("must name at least one IP address")
    for part in v.split():
        ip(part)
    return v


_DC_RE = re.compile(r"[A-Za-z0-9_-]+")
_NODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_DOMAIN_RE = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+")
_META_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


def datacenter(v: Any) -> str:
    if not _DC_RE.fullmatch(string(v)):
        raise InvalidError(f"may only contain letters, digits, '-' and '_'; got {v!r}")
    return v.lower()  # Consul lowercases datacenter names


def node_name(v: Any) -> str:
    if not _NODE_RE.fullmatch(string(v)):
        raise InvalidError(f"must be 1-255 letters, digits, '.', '-' or '_'; got {v!r}")
    return v


def domain(v: Any) -> str:
    name = string(v).strip().lower()
    name = name if name.endswith(".") else name + "."
    if not _DOMAIN_RE.fullmatch(name):
        raise InvalidError(f"must be a DNS domain such as 'consul.'; got {v!r}")
    return name


def encrypt(v: Any) -> str:
    try:
        key = base64.b64decode(string(v), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidError("must be a base64-encoded key") from None
    if len(key) not in (16, 24, 32):
        raise InvalidError(
            f"must decode to a 16, 24 or 32 byte key, got {len(key)} bytes "
            "(generate one with `openssl rand -base64 32`)"
        )
    return v


_LEVELS = {
    "TRACE": "TRACE",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERR": "ERROR",
    "ERROR": "ERROR",
}


def log_level(v: Any) -> str:
    level = _LEVELS.get(string(v).upper())
    if level is None:
        raise InvalidError(f"must be one of trace, debug, info, warn, error; got {v!r}")
    return level


def str_list(v: Any) -> list[str]:
    if isinstance(v, tuple):  # click hands multi-value options over as tuples
        v = list(v)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidError(f"must be a list of strings, got {show(v)}")
    return v


def object_list(v: Any) -> list[dict[str, Any]]:
    """`service {}` is one object and repeated blocks a list in HCL; JSON allows either too."""
    items = [v] if isinstance(v, dict) else v
    if not isinstance(items, list):
        raise InvalidError(f"must be an object or a list of objects, got {show(v)}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidError(f"item {i} must be an object, got {show(item)}")
    return list(items)


def mapping(v: Any) -> dict[str, Any]:
    """A user-keyed map; repeated HCL blocks arrive as a list of maps, merged in order."""
    parts = v if isinstance(v, list) else [v]
    if not parts or not all(isinstance(p, dict) for p in parts):
        raise InvalidError(f"must be an object, got {show(v)}")
    return {k: x for p in parts for k, x in p.items()}


def node_meta(v: Any) -> dict[str, str]:
    meta = mapping(v)
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(str(key)):
            raise InvalidError(f"key {key!r} must be 1-128 letters, digits, '-' or '_'")
        if key.startswith("consul-"):
            raise InvalidError(f"key {key!r} uses the reserved prefix 'consul-'")
        if not isinstance(value, str) or len(value) > 512:
            raise InvalidError(f"value of {key!r} must be a string of at most 512 characters")
    return meta


def meta_pairs(v: Any) -> dict[str, str]:
    """-node-meta key:value, repeatable; like Consul, a pair without ':' gets an empty value."""
    pairs = (p.split(":", 1) for p in str_list(v))
    return node_meta({p[0]: p[1] if len(p) > 1 else "" for p in pairs})


def service_ttl(v: Any) -> dict[str, float]:
    ttls = mapping(v)
    for name in ttls:
        if "*" in name[:-1]:
            raise InvalidError(f"{name!r}: '*' is only allowed at the end (a prefix wildcard)")
    out: dict[str, float] = {}
    for name, ttl in ttls.items():
        try:
            out[name] = duration()(ttl)
        except InvalidError as e:
            raise InvalidError(f"{name!r}: {e}") from None
    return out
