"""Strategies: contract v1 examples and properties over any JSON value."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryws.core.strategies import LENIENT, STRICT, lenient, strict
from records_data import GUIDE_BATCH, records_strategy


def test_strict_matches_the_contract_example() -> None:
    out = STRICT.process(GUIDE_BATCH, 4096)
    assert out.accepted == [(0, "a"), (3, "b")]
    assert out.skipped == []
    assert out.rejected == [(1, "empty"), (2, "blank"), (4, "missing"), (5, "not_a_string")]
    assert (out.strategy, out.strategy_version) == ("strict", 1)


def test_lenient_skips_the_same_indices_with_reasons() -> None:
    out = LENIENT.process(GUIDE_BATCH, 4096)
    assert out.accepted == [(0, "a"), (3, "b")]
    assert out.skipped == [(1, "empty"), (2, "blank"), (4, "missing"), (5, "not_a_string")]
    assert out.rejected == []
    assert (out.strategy, out.strategy_version) == ("lenient", 1)


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ("a\x00b", "control_character"),
        ("\x00", "control_character"),
        ("line\nbreak", "control_character"),
        ("bell\x07", "control_character"),
        ("del\x7f", "control_character"),
        ("c1\x9b", "control_character"),
        (True, "not_a_string"),
        ([], "not_a_string"),
        ({"a": 1}, "not_a_string"),
        (1.5, "not_a_string"),
        ("\t \n", "blank"),
    ],
)
def test_strict_reasons(record: Any, code: str) -> None:
    out = STRICT.process([record], 4096)
    assert out.rejected == [(0, code)]
    lenient_out = LENIENT.process([record], 4096)
    if code in ("control_character",):
        assert lenient_out.accepted == [(0, record.strip())]
    else:
        assert lenient_out.skipped == [(0, code)]


def test_tab_inside_a_value_is_not_a_control_character() -> None:
    assert STRICT.process(["a\tb"], 10).accepted == [(0, "a\tb")]


def test_surrounding_whitespace_and_newlines_are_stripped_before_checks() -> None:
    assert STRICT.process(["  value\r\n"], 10).accepted == [(0, "value")]


def test_too_long_counts_code_points_after_stripping() -> None:
    assert STRICT.process(["  " + "é" * 5 + "  "], 5).accepted == [(0, "é" * 5)]
    assert STRICT.process(["é" * 6], 5).rejected == [(0, "too_long")]
    assert STRICT.process(["x" * 100_000], None).accepted == [(0, "x" * 100_000)]
    assert LENIENT.process(["é" * 6], 5).accepted == [(0, "é" * 6)]


def _indices(out: Any) -> list[int]:
    return sorted([i for i, _ in out.accepted] + [i for i, _ in out.skipped] + [i for i, _ in out.rejected])


@settings(max_examples=400)
@given(records_strategy, st.integers(min_value=0, max_value=20))
def test_every_index_is_accounted_exactly_once(records: list[Any], max_length: int) -> None:
    for strategy in (STRICT, LENIENT):
        out = strategy.process(records, max_length)
        assert _indices(out) == list(range(len(records)))
        assert out.size == len(records)


@settings(max_examples=400)
@given(records_strategy, st.integers(min_value=0, max_value=20))
def test_lenient_accepts_a_superset_of_strict(records: list[Any], max_length: int) -> None:
    strict_accepted = dict(STRICT.process(records, max_length).accepted)
    lenient_accepted = dict(LENIENT.process(records, max_length).accepted)
    for index, value in strict_accepted.items():
        assert lenient_accepted.get(index) == value


@settings(max_examples=300)
@given(records_strategy)
def test_deterministic_and_never_raises(records: list[Any]) -> None:
    for fn in (strict.process, lenient.process):
        assert fn(records, 8) == fn(list(records), 8)


@settings(max_examples=300)
@given(records_strategy)
def test_strict_accepted_values_are_stripped_clean_strings(records: list[Any]) -> None:
    for _, value in STRICT.process(records, 8).accepted:
        assert value == value.strip() and value
        assert not any((ord(c) < 32 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in value)
        assert len(value) <= 8
