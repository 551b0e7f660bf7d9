"""DNS: any datagram gets FORMERR, nothing, or a well-formed answer; never an exception.

Uses only the public functions of meshd.agent.dns (parse_packet, answer) over an in-memory view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnslib import QTYPE, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from meshd.agent.dns import TCP_MAX, UDP_PLAIN, DNSSettings, answer, parse_packet
from meshd.structs import CheckServiceNode, HealthCheck, Node, NodeService


@dataclass
class View:
    datacenter: str = "dc1"
    node_name: str = "agent-1"
    services: dict[str, list[CheckServiceNode]] = field(default_factory=dict)
    node_map: dict[str, Node] = field(default_factory=dict)

    def service_instances(self, name: str) -> list[CheckServiceNode]:
        return self.services.get(name, [])

    def connect_instances(self, name: str) -> list[CheckServiceNode]:
        return []

    def node(self, name: str) -> Node | None:
        return self.node_map.get(name)

    def nodes(self) -> list[Node]:
        return list(self.node_map.values())

    def server_nodes(self) -> list[Node]:
        return self.nodes()[:1]


def _view() -> View:
    view = View()
    for i in range(40):  # enough instances that a UDP answer must be cut
        node = Node(Node=f"n{i}", Address=f"10.0.{i // 250}.{i % 250 + 1}", Datacenter="dc1")
        view.node_map[node.Node] = node
        svc = NodeService(ID=f"web-{i}", Service="web", Tags=["v1"], Port=8000 + i)
        check = HealthCheck(Node=node.Node, CheckID="serfHealth", Name="s", Status="passing")
        view.services.setdefault("web", []).append(CheckServiceNode(node, svc, [check]))
    return view


VIEW, SETTINGS = _view(), DNSSettings()
LABEL = st.one_of(
    st.sampled_from(["web", "v1", "_web", "_tcp", "service", "node", "n1", "connect", "dc1"]),
    st.text(alphabet="abc-_0123456789", min_size=1, max_size=10),
)
NAMES = st.lists(LABEL, max_size=6).map(lambda labels: ".".join([*labels, "consul"]) + ".")
QTYPES = st.sampled_from(["A", "AAAA", "SRV", "TXT", "ANY", "PTR", "NS", "SOA", "CNAME"])


def _check(data: bytes, max_size: int) -> None:
    parsed = parse_packet(data)
    if isinstance(parsed, bytes):
        if parsed:
            DNSRecord.parse(parsed)  # a FORMERR we send must itself be well-formed
        return
    out = answer(parsed, VIEW, SETTINGS, max_size=max_size)
    if out.forward:
        return
    reply = DNSRecord.parse(out.wire)
    assert reply.header.id == parsed.header.id
    assert reply.header.qr


@given(st.binary(max_size=600), st.sampled_from([UDP_PLAIN, TCP_MAX]))
def test_any_datagram_is_dropped_formerr_or_answered(data: bytes, max_size: int) -> None:
    _check(data, max_size)


@given(NAMES, QTYPES, st.integers(0, 0xFFFF), st.sampled_from([UDP_PLAIN, TCP_MAX]))
def test_consul_shaped_questions_are_answered(name: str, qtype: str, qid: int, size: int) -> None:
    request = DNSRecord.question(name, qtype)
    request.header.id = qid
    _check(request.pack(), size)


@given(NAMES, QTYPES, st.binary(min_size=1, max_size=40), st.integers(0, 60))
def test_corrupted_questions_never_raise(name: str, qtype: str, junk: bytes, at: int) -> None:
    wire = bytearray(DNSRecord.question(name, QTYPE.get(qtype)).pack())
    wire[at : at + len(junk)] = junk
    _check(bytes(wire), UDP_PLAIN)
