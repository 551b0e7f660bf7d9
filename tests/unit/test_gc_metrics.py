"""The GC pause timers: a collection's pause is observed, a full one also as a full pause, and
nothing is observed once the watch is stopped."""

from __future__ import annotations

import gc

from meshd.metrics import GC_FULL_PAUSE, GC_PAUSE, Stats, consul_json, prometheus_text, watch_gc


def test_collections_are_timed_and_exported() -> None:
    stats = Stats()
    stop = watch_gc(stats)
    try:
        gc.collect(0)
        young = stats.timers[GC_PAUSE].count
        assert young >= 1 and stats.timers[GC_FULL_PAUSE].count == 0
        gc.collect()
        assert stats.timers[GC_FULL_PAUSE].count >= 1
        assert stats.timers[GC_PAUSE].count > young
    finally:
        stop()
    seen = stats.timers[GC_PAUSE].count
    gc.collect()
    assert stats.timers[GC_PAUSE].count == seen
    assert b"meshd_runtime_gc_full_pause_count" in prometheus_text(stats)
    names = {s["Name"] for s in consul_json(stats)["Samples"]}
    assert {GC_PAUSE, GC_FULL_PAUSE} <= names
