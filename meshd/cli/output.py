"""Text shapes shared by the CLI commands: aligned tables, `consul info` sections, JSON.

Kept free of click and of the HTTP client so the exact output formats, which scripts and people
both parse by eye, can be unit-tested without a running agent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MEMBER_STATUS",
    "format_json",
    "format_kv_detail",
    "format_sections",
    "format_table",
    "kv_display",
    "member_rows",
    "member_status",
    "member_type",
    "node_rows",
    "parse_pairs",
    "service_lines",
    "short_id",
    "text",
]

COLUMN_GAP = "  "

# Serf's member states, which Consul's `/v1/agent/members` reports as integers.
MEMBER_STATUS: dict[int, str] = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def text(value: Any) -> str:
    """Cell text in Consul's spelling: lower-case booleans, empty for missing values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, list | tuple):
        return ",".join(text(v) for v in value)
    return str(value)


def format_table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns two spaces apart, like Consul's columnize; no trailing blanks."""
    table = [[text(c) for c in r] for r in rows]
    if headers:
        table.insert(0, list(headers))
    if not table:
        return ""
    ncols = max(len(r) for r in table)
    widths = [max((len(r[i]) for r in table if i < len(r)), default=0) for i in range(ncols)]
    lines = []
    for r in table:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return "\n".join(lines)


def format_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


def format_sections(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """`consul info`'s layout: sorted sections, each with sorted tab-indented `key = value`."""
    lines: list[str] = []
    for name in sorted(sections):
        lines.append(f"{name}:")
        for key in sorted(sections[name]):
            lines.append(f"\t{key} = {text(sections[name][key])}")
    return "\n".join(lines)


def format_kv_detail(pairs: Mapping[str, Any]) -> str:
    """`consul kv get -detailed`'s layout: sorted keys, values aligned in one column."""
    return format_table(None, ([k, v] for k, v in sorted(pairs.items())))


def short_id(value: str | None, length: int = 8) -> str:
    return (value or "")[:length]


def member_status(status: Any) -> str:
    if isinstance(status, int) and not isinstance(status, bool):
        return MEMBER_STATUS.get(status, str(status))
    return str(status) if status is not None else "none"


def member_type(tags: Mapping[str, Any] | None) -> str:
    """Serf tags servers with role=consul; meshd also accepts role=server for its own peers."""
    role = (tags or {}).get("role")
    return "server" if role in ("consul", "server") else "client"


def _member_address(m: Mapping[str, Any]) -> str:
    addr, port = m.get("Addr") or "", m.get("Port")
    if not port:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def member_rows(
    members: Iterable[Mapping[str, Any]],
    *,
    detailed: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of `meshd members`; servers first, then by name, as Consul sorts."""
    ordered = sorted(
        members, key=lambda m: (member_type(m.get("Tags")) != "server", str(m.get("Name", "")))
    )
    if detailed:
        headers = ["Node", "Address", "Status", "Tags"]
        return headers, [
            [
                str(m.get("Name", "")),
                _member_address(m),
                member_status(m.get("Status")),
                text(m.get("Tags") or {}),
            ]
            for m in ordered
        ]
    headers = ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC"]
    rows = []
    for m in ordered:
        tags = m.get("Tags") or {}
        protocol = tags.get("vsn") or m.get("ProtocolCur") or ""
        rows.append(
            [
                str(m.get("Name", "")),
                _member_address(m),
                member_status(m.get("Status")),
                member_type(tags),
                text(tags.get("build", "")),
                text(protocol),
                text(tags.get("dc", "")),
            ]
        )
    return headers, rows


def node_rows(
    nodes: Iterable[Mapping[str, Any]],
    *,
    detailed: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """Rows for `catalog nodes`; accepts /catalog/nodes entries and /catalog/service rows alike.

    A service can have several instances on one node, so rows are de-duplicated by node name.
    """
    seen: dict[str, Mapping[str, Any]] = {}
    for n in nodes:
        seen.setdefault(str(n.get("Node", "")), n)
    headers = ["Node", "ID", "Address", "DC"]
    if detailed:
        headers += ["TaggedAddresses", "Meta"]
    rows = []
    for name in sorted(seen):
        n = seen[name]
        node_id = str(n.get("ID") or "")
        row = [
            name,
            node_id if detailed else short_id(node_id),
            text(n.get("Address")),
            text(n.get("Datacenter")),
        ]
        if detailed:
            meta = n.get("NodeMeta") if "NodeMeta" in n else n.get("Meta")
            row += [text(n.get("TaggedAddresses") or {}), text(meta or {})]
        rows.append(row)
    return headers, rows


def service_lines(services: Mapping[str, Sequence[str] | None], *, tags: bool = False) -> str:
    """`catalog services` output: sorted names, optionally a column of sorted, joined tags."""
    names = sorted(services)
    if not tags:
        return "\n".join(names)
    return format_table(None, ([n, ",".join(sorted(set(services[n] or [])))] for n in names))


def kv_display(value: bytes, *, as_base64: bool = False) -> str:
    """A KV value as text; undecodable bytes are replaced rather than crashing the CLI."""
    if as_base64:
        return base64.b64encode(value).decode("ascii")
    return value.decode("utf-8", errors="replace")


def parse_pairs(items: Iterable[str], sep: str = "=", *, what: str = "value") -> dict[str, str]:
    """`k=v` style repeatable flags into a dict; a missing separator is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        key, found, value = item.partition(sep)
        if not found or not key:
            raise ValueError(f"invalid {what} {item!r}: expected key{sep}value")
        out[key] = value
    return out
