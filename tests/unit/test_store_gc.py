"""A large catalog must not be a large heap for CPython's cyclic GC.

A full collection walks every tracked object while holding the GIL: at 200,000 instances with
five tracked objects each it stalled the servers for 0.4-1.5 s (issue 13). Catalog rows are
acyclic and never changed in place, so their structs are untracked (`gc=False`) and a check
shares its service's tag list. These tests hold that line, and that sharing never shows.
"""

from __future__ import annotations

import gc

from meshd import queries as q
from meshd.server.reads import run_query
from meshd.server.store import Store
from meshd.structs import Batch, HealthCheck, NodeService, Register, decode_command, encode_command


def _register(j: int, tags: list[str]) -> Register:
    node = f"n{j % 100}"
    sid = f"inst-{j}"
    return Register(
        Node=node,
        Address=f"10.0.{j % 100}.1",
        Service=NodeService(ID=sid, Service=f"svc-{j % 50}", Tags=tags, Port=1000 + j),
        Check=HealthCheck(
            Node=node, CheckID=f"c-{j}", Name="alive", Status="passing", ServiceID=sid
        ),
    )


def _load(store: Store, count: int) -> None:
    for b in range(0, count, 500):
        ops = [_register(j, ["v2"] if j % 2 else []) for j in range(b, b + 500)]
        # decoded from bytes, as every server applies a Raft entry
        store.apply(decode_command(encode_command(Batch(Ops=ops))), b // 500 + 1)


def test_instances_add_almost_nothing_for_the_gc_to_walk() -> None:
    store = Store()
    _load(store, 500)  # the per-node and per-service containers exist from here on
    gc.collect()
    before = len(gc.get_objects())
    _load(store, 20_000)
    gc.collect()
    grown = len(gc.get_objects()) - before
    # one tag list per tagged service; no struct, no untagged list, no copy for its check
    assert grown < 0.6 * 20_000, grown
    # a server that starts from a snapshot holds it the same way
    data = store.dump()
    del store
    gc.collect()
    before = len(gc.get_objects())
    loaded = Store()
    loaded.load(data)
    gc.collect()
    assert len(gc.get_objects()) - before < 0.6 * 20_500
    assert loaded.dump() == data


def test_shared_tag_lists_never_show_in_answers() -> None:
    store = Store()
    store.apply(_register(1, []), 1)
    store.apply(_register(3, []), 2)  # both untagged: they share one empty list
    store.apply(_register(1, ["primary"]), 3)  # retagging one changes only that one
    rows = {r.Service.ID: r for r in run_query(store, q.ServiceNodes(Service="svc-1"))[1]}
    assert rows["inst-1"].Service.Tags == ["primary"]
    assert rows["inst-1"].Checks[0].ServiceTags == ["primary"]
    rows3 = run_query(store, q.ServiceNodes(Service="svc-3"))[1]
    assert rows3[0].Service.Tags == [] and rows3[0].Checks[0].ServiceTags == []
