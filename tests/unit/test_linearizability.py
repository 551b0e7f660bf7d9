from linearizability import INF, Op, check


def test_sequential_history_is_linearizable():
    h = [Op("w", "1", 0, 1), Op("r", "1", 2, 3), Op("w", "2", 4, 5), Op("r", "2", 6, 7)]
    assert check(h)


def test_stale_read_after_write_completed_is_not():
    h = [Op("w", "1", 0, 1), Op("w", "2", 2, 3), Op("r", "1", 4, 5)]
    assert not check(h)


def test_concurrent_ops_may_order_either_way():
    h = [
        Op("w", "1", 0, 10),
        Op("r", None, 1, 2),
        Op("r", "1", 3, 4),
        Op("w", "2", 5, 6),
        Op("r", "2", 7, 8),
    ]
    assert check(h)


def test_unknown_write_may_or_may_not_have_happened():
    h = [Op("w", "1", 0, 1), Op("w", "2", 2, INF, ok=False), Op("r", "1", 3, 4)]
    assert check(h)
    h2 = [
        Op("w", "1", 0, 1),
        Op("w", "2", 2, INF, ok=False),
        Op("r", "2", 3, 4),
        Op("r", "1", 5, 6),
    ]
    assert not check(h2)


def test_lost_acknowledged_write_is_caught():
    h = [Op("w", "1", 0, 1), Op("w", "2", 2, 3), Op("r", None, 4, 5)]
    assert not check(h)
