"""Shared hypothesis strategies: JSON the way a hostile client writes it."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# integers across every boundary a decoder cares about: 16, 32, 63, 64 bits and beyond
INTS = st.one_of(
    st.integers(-10, 70_000),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**30]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


def json_values(keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Any]:
    """Nested lists and objects; object keys drawn from `keys` (field names) or any text."""
    key = st.text(max_size=12) if keys is None else st.one_of(keys, st.text(max_size=12))
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(key, children, max_size=6)
        ),
        max_leaves=30,
    )


def objects_with(fields: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Objects with real field names (any case), so parsing gets past the unknown-key check."""
    spelled = st.sampled_from(fields).flatmap(lambda f: st.sampled_from([f, f.lower(), f.upper()]))
    return st.dictionaries(spelled, values, max_size=len(fields))
