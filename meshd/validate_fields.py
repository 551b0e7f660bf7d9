"""The field rules every command's validation is built from: names, addresses, metadata, sizes.

Pure, like all of `meshd.validate`; `ValidationError` is the one error they raise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class ValidationError(ValueError):
    """A command the servers refuse; the text is the reason the user reads (HTTP 400)."""


@dataclass(frozen=True)
class Limits:
    """Operator-tunable sizes (`limits` in the config); the rest are fixed below."""

    kv_max_value_size: int = 512 * 1024  # Consul's kv_max_value_size

    @classmethod
    def from_config(cls, limits: Mapping[str, int]) -> Limits:
        return cls(kv_max_value_size=int(limits.get("kv_max_value_size", cls.kv_max_value_size)))


MAX_NAME = 256  # node names, service names and IDs, check IDs, tags, addresses
MAX_KEY = 512  # KV keys
MAX_TEXT = 128 * 1024  # a check's Output and Notes: a status line, not a log
OUTPUT_MAX_SIZE = MAX_TEXT // 2  # an agent's OutputMaxSize: room left for its truncation note
META_MAX_PAIRS = 64  # Consul's metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength
META_KEY_MAX = 128
META_VALUE_MAX = 512
DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9-]{1,63}$")  # Consul's test for a discoverable name
_META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_RE = re.compile(r"\s")  # str.isspace's characters, in one C scan


def name(value: str, what: str, *, required: bool = True, limit: int = MAX_NAME) -> None:
    """A printable identifier: no control characters, at most `limit` characters."""
    if not value:
        if required:
            raise ValidationError(f"{what} is required")
        return
    if len(value) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    if _CONTROL_RE.search(value):
        raise ValidationError(f"{what} {value!r} contains control characters")


def dns_safe(value: str) -> bool:
    """Whether a service name can be looked up in DNS. Consul registers a name that is not
    (and logs a warning), so the servers accept it too: refusing it would break tools that
    register such names against Consul today."""
    return bool(DNS_LABEL_RE.match(value))


def service_name(value: str, what: str) -> None:
    """Service names and IDs: printable, bounded; any alphabet Consul accepts."""
    name(value, what)


def meta(values: Mapping[str, str], what: str) -> None:
    """Consul's metadata rules (ValidateMetadata), so entries stay portable to Consul."""
    if len(values) > META_MAX_PAIRS:
        raise ValidationError(f"{what} has more than {META_MAX_PAIRS} key/value pairs")
    for key, value in values.items():
        if not key:
            raise ValidationError(f"{what}: key cannot be blank")
        if len(key) > META_KEY_MAX:
            raise ValidationError(f"{what}: key {key[:20]!r}... is longer than {META_KEY_MAX}")
        if not _META_KEY_RE.match(key):
            raise ValidationError(f"{what}: key {key!r} contains invalid characters")
        if len(value) > META_VALUE_MAX:
            raise ValidationError(f"{what}: value of {key!r} is longer than {META_VALUE_MAX}")


def address(value: str, what: str) -> None:
    name(value, what, required=False)
    if _SPACE_RE.search(value):
        raise ValidationError(f"{what} {value!r} contains whitespace")


def regex(value: str, what: str) -> None:
    name(value, what, required=False)
    try:
        re.compile(value)
    except re.error as e:
        raise ValidationError(f"invalid {what} regexp {value!r}: {e}") from None
