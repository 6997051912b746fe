"""Hypothesis strategies for batches of records, shared by the property-based tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

GUIDE_BATCH: list[Any] = [" a ", "", "  ", "b", None, 5]  # the contract's example batch

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
# Records biased towards the interesting strings: whitespace, controls, long values.
tricky_text = st.text(
    alphabet=st.sampled_from([" ", "\t", "\n", "\r", "\x00", "\x1f", "\x7f", "\x85", "\x9f", "\xa0",
                              "\u2028", "a", "é", "😀", "Z"]),
    max_size=12,
)
records_strategy = st.lists(json_values | tricky_text, max_size=40)
