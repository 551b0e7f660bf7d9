"""The DNS interface's shapes: the view it reads, its settings, an outcome, the zones.

Shared by the answer logic (`agent.dns`), the query forms (`agent.dns_query`) and the listener.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dnslib import DNSRecord

from meshd import queries as q
from meshd.agent.dns_wire import (
    NOERROR,
    Labels,
    clamp_ttl,
    memo_put,
    to_labels,
)
from meshd.structs import CheckServiceNode, Node

_zone_memo: dict[tuple[str, str | None], tuple[tuple[Labels, Labels], ...]] = {}


DNSRead = q.ServiceNodes | q.Nodes | q.PreparedQueries  # the reads an answer is built from


class DNSView(Protocol):
    """What DNS reads; implemented by the agent over its in-memory catalog (sync, fast, no I/O).

    A view may also offer `stamp(read) -> int | None` and a `dns_answers: AnswerCache`: a stamp
    moves whenever that read's answer changes, which lets answers be cached until something they
    were built from changes; None says the view does not hold that data, and `answer()` returns
    `NeedData` so the caller can run the view's `async load(reads)` and ask again."""

    datacenter: str
    node_name: str  # this agent's node (for NS/SOA answers)

    def service_instances(self, name: str) -> list[CheckServiceNode]: ...  # health unfiltered
    def connect_instances(self, name: str) -> list[CheckServiceNode]: ...  # proxies / native
    def node(self, name: str) -> Node | None: ...
    def nodes(self) -> list[Node]: ...
    def server_nodes(self) -> list[Node]: ...  # the servers, for NS records


@dataclass
class DNSSettings:
    domain: str = "consul."
    alt_domain: str | None = None
    node_ttl: float = 0
    service_ttl: dict[str, float] = field(default_factory=dict)
    only_passing: bool = False
    a_record_limit: int = 0
    udp_answer_limit: int = 3
    enable_truncate: bool = True
    recursors: list[str] = field(default_factory=list)
    recursor_timeout: float = 2.0
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    soa_min_ttl: int = 0


@dataclass(slots=True)
class DNSOutcome:
    """`wire` is the response to send. It is empty when the caller has to act first (this
    module never touches a socket nor awaits): with `forward`, relay the query to the recursors;
    with `need` (NeedData), load those reads into the view and call `answer()` again."""

    wire: bytes
    forward: bool = False
    rcode: int = NOERROR
    truncated: bool = False
    need: tuple[DNSRead, ...] = ()

    @property
    def response(self) -> DNSRecord:
        """Decoded on demand: only tests and debugging look, the server sends `wire`."""
        return DNSRecord.parse(self.wire)


def zones(cfg: DNSSettings) -> tuple[tuple[Labels, Labels], ...]:
    """(lowercase labels for matching, configured labels for building names) per domain."""
    key = (cfg.domain, cfg.alt_domain)
    zones = _zone_memo.get(key)
    if zones is None:
        found = (to_labels(d) if d else None for d in (cfg.domain, cfg.alt_domain))
        zones = tuple((tuple(x.lower() for x in z), z) for z in found if z)
        zones = zones or (((b"consul",), (b"consul",)),)  # an unusable domain: Consul's default
        memo_put(_zone_memo, key, zones)
    return zones


def service_ttl(cfg: DNSSettings, name: str) -> int:
    """Consul's lookup: the exact name, else the longest matching `prefix*` (`*` is the empty
    prefix, so it is the default), else 0."""
    table = cfg.service_ttl
    if not table:
        return 0
    if name in table:
        return clamp_ttl(table[name])
    best = max(
        (k for k in table if k.endswith("*") and name.startswith(k[:-1])), key=len, default=None
    )
    return clamp_ttl(table[best]) if best is not None else 0
