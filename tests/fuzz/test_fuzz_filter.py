"""The ?filter= language: a FilterError with a position, or a predicate that answers True/False."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from strategies import json_values

from meshd.filter import FilterError, compile_filter

FIELDS = ["Node", "Service", "Address", "Meta", "Tags", "Checks", "Port", "Weights", "Status"]
SELECTOR = st.lists(
    st.one_of(st.sampled_from(FIELDS), st.integers(0, 3).map(str)), min_size=1, max_size=3
).map(".".join)
VALUE = st.one_of(
    st.text(max_size=8).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.text(alphabet="ab()+*?[]{}^$|.\\0123456789,", max_size=12).map(lambda s: f"`{s}`"),
    st.integers(-5, 99999).map(str),
    st.sampled_from(FIELDS),
)
MATCH = st.one_of(
    st.tuples(SELECTOR, st.sampled_from(["==", "!=", "contains", "not contains"]), VALUE).map(
        " ".join
    ),
    st.tuples(SELECTOR, st.sampled_from(["matches", "not matches"]), VALUE).map(" ".join),
    st.tuples(SELECTOR, st.sampled_from(["is empty", "is not empty"])).map(" ".join),
    st.tuples(VALUE, st.sampled_from(["in", "not in"]), SELECTOR).map(" ".join),
)
EXPRESSIONS = st.recursive(
    MATCH,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"({e})"),
    ),
    max_leaves=8,
)
ROWS = st.dictionaries(st.sampled_from(FIELDS), json_values(st.sampled_from(FIELDS)), max_size=6)


def _evaluate(expr: str, rows: list[Any]) -> None:
    try:
        pred = compile_filter(expr)
    except FilterError as e:
        assert str(e).startswith("invalid filter") or "filter is" in str(e)
        return
    for row in rows:
        assert pred(row) in (True, False)


@given(st.text(max_size=80), st.lists(ROWS, max_size=3))
def test_any_text_is_a_filter_error_or_a_predicate(expr: str, rows: list[Any]) -> None:
    _evaluate(expr, rows)


@given(EXPRESSIONS, st.lists(ROWS, max_size=4))
def test_grammatical_filters_evaluate_over_any_row(expr: str, rows: list[Any]) -> None:
    _evaluate(expr, rows)


@given(EXPRESSIONS, ROWS)
def test_not_is_the_complement(expr: str, row: Any) -> None:
    try:
        pred, negated = compile_filter(expr), compile_filter(f"not ({expr})")
    except FilterError:
        return
    assert negated(row) is (not pred(row))
