"""Shadow comparison: where the outcomes of strict and lenient for one batch diverge."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryws.core.compare import MERGE_DIVERGENCES, VALUE_MISMATCH, Divergence, accepted_only_kind, compare
from canaryws.core.strategies import LENIENT, STRICT, Outcome, Strategy
from records_data import GUIDE_BATCH, records_strategy

LENIENT_ONLY = "accepted_by_lenient_only"
STRICT_ONLY = "accepted_by_strict_only"

max_lengths = st.none() | st.integers(min_value=0, max_value=12)


def both(records: list[Any], max_length: int | None = 4096) -> tuple[Outcome, Outcome]:
    return STRICT.process(records, max_length), LENIENT.process(records, max_length)


def test_accepted_only_kind_names_the_accepting_strategy() -> None:
    assert accepted_only_kind("lenient") == LENIENT_ONLY
    assert accepted_only_kind("strict") == STRICT_ONLY


@pytest.mark.parametrize("order", ["strict_primary", "lenient_primary"])
def test_the_contract_batch_does_not_diverge(order: str) -> None:
    strict_out, lenient_out = both(GUIDE_BATCH)
    primary, shadow = (strict_out, lenient_out) if order == "strict_primary" else (lenient_out, strict_out)
    assert compare(primary, shadow) == Divergence(records=6, divergent=0, counts={})


@pytest.mark.parametrize(
    ("records", "max_length", "reason"),
    [
        (["ok", "a\x00b"], 4096, "control_character"),
        (["ok", " line\nbreak "], 4096, "control_character"),
        (["ok", "c1\x9b"], 4096, "control_character"),
        (["ok", "  toolong  "], 5, "too_long"),
        (["ok", "é" * 6], 5, "too_long"),
    ],
)
def test_strict_primary_lenient_shadow(records: list[Any], max_length: int, reason: str) -> None:
    strict_out, lenient_out = both(records, max_length)
    divergence = compare(strict_out, lenient_out)
    assert divergence == Divergence(records=2, divergent=1, counts={(LENIENT_ONLY, reason): 1})


@pytest.mark.parametrize(
    ("records", "max_length", "reason"),
    [
        (["ok", "a\x00b"], 4096, "control_character"),
        (["ok", "\x7fdel"], 4096, "control_character"),
        (["ok", "  toolong  "], 5, "too_long"),
    ],
)
def test_lenient_primary_strict_shadow(records: list[Any], max_length: int, reason: str) -> None:
    strict_out, lenient_out = both(records, max_length)
    divergence = compare(lenient_out, strict_out)
    # The kind names the strategy that accepted, whichever side it was on.
    assert divergence == Divergence(records=2, divergent=1, counts={(LENIENT_ONLY, reason): 1})


def test_mixed_batch_counts_each_reason() -> None:
    records = ["fine", "x\x00", "\x01y", "waytoolong", None, "", "  ", 3, "ok  "]
    strict_out, lenient_out = both(records, 6)
    divergence = compare(strict_out, lenient_out)
    assert divergence.records == 9
    assert divergence.divergent == 3
    assert divergence.counts == {(LENIENT_ONLY, "control_character"): 2, (LENIENT_ONLY, "too_long"): 1}


def test_rejected_versus_skipped_for_the_same_record_is_not_a_divergence() -> None:
    strict_out, lenient_out = both([None, "", "   ", [1], {"a": 1}])
    assert not strict_out.accepted and not lenient_out.accepted
    assert compare(strict_out, lenient_out).divergent == 0
    assert compare(lenient_out, strict_out).divergent == 0


def test_different_values_are_a_value_mismatch() -> None:
    primary = Outcome("strict", 1, [(0, "a"), (1, "b"), (2, "c")], [], [])
    shadow = Outcome("lenient", 1, [(0, "a"), (1, "B"), (2, "C ")], [], [])
    assert compare(primary, shadow) == Divergence(3, 2, {(VALUE_MISMATCH, "value"): 2})
    assert compare(shadow, primary) == Divergence(3, 2, {(VALUE_MISMATCH, "value"): 2})


def test_accepted_by_strict_only_uses_the_reason_lenient_gave() -> None:
    # Not produced by the real strategies, but the comparison is generic.
    primary = Outcome("strict", 1, [(0, "a"), (1, "b")], [], [])
    shadow = Outcome("lenient", 1, [(0, "a")], [(1, "blank")], [])
    assert compare(primary, shadow).counts == {(STRICT_ONLY, "blank"): 1}
    assert compare(shadow, primary).counts == {(STRICT_ONLY, "blank"): 1}


def test_both_directions_and_a_mismatch_in_one_batch() -> None:
    primary = Outcome("strict", 1, [(0, "same"), (1, "p"), (3, "x")], [], [(2, "control_character")])
    shadow = Outcome("lenient", 1, [(0, "same"), (2, "z"), (3, "y")], [(1, "blank")], [])
    divergence = compare(primary, shadow)
    assert divergence.records == 4
    assert divergence.divergent == 3
    assert divergence.counts == {
        (STRICT_ONLY, "blank"): 1,
        (LENIENT_ONLY, "control_character"): 1,
        (VALUE_MISMATCH, "value"): 1,
    }


def test_outcomes_of_different_sizes_raise() -> None:
    with pytest.raises(ValueError, match="different batches"):
        compare(STRICT.process(["a", "b"], 10), LENIENT.process(["a"], 10))
    with pytest.raises(ValueError):
        compare(Outcome("strict", 1, [], [], []), Outcome("lenient", 1, [(0, "a")], [], []))


def test_empty_batch() -> None:
    strict_out, lenient_out = both([])
    assert compare(strict_out, lenient_out) == Divergence(0, 0, {})


def _compare(primary: Strategy, shadow: Strategy, records: list[Any], max_length: int | None) -> Divergence:
    return compare(primary.process(records, max_length), shadow.process(records, max_length))


@settings(max_examples=150, deadline=None)
@given(records_strategy, max_lengths)
def test_divergent_is_the_sum_of_the_counts_and_at_most_the_batch(records: list[Any], max_length: int | None) -> None:
    for primary, shadow in ((STRICT, LENIENT), (LENIENT, STRICT), (STRICT, STRICT), (LENIENT, LENIENT)):
        divergence = _compare(primary, shadow, records, max_length)
        assert divergence.records == len(records)
        assert divergence.divergent == sum(divergence.counts.values())
        assert 0 <= divergence.divergent <= len(records)
        assert all(n > 0 for n in divergence.counts.values())


@settings(max_examples=150, deadline=None)
@given(records_strategy, max_lengths)
def test_strict_accepts_a_subset_of_lenient_with_identical_values(
    records: list[Any], max_length: int | None
) -> None:
    strict_out, lenient_out = both(records, max_length)
    divergence = compare(strict_out, lenient_out)
    assert {kind for kind, _ in divergence.counts} <= {LENIENT_ONLY}
    assert {reason for _, reason in divergence.counts} <= {"control_character", "too_long"}
    # Exactly the records lenient accepts and strict rejects for those two reasons diverge.
    strict_reasons = dict(strict_out.rejected)
    expected: dict[tuple[str, str], int] = {}
    for index, _ in lenient_out.accepted:
        if index in strict_reasons:
            key = (LENIENT_ONLY, strict_reasons[index])
            expected[key] = expected.get(key, 0) + 1
    assert divergence.counts == expected
    assert divergence.divergent == len(lenient_out.accepted) - len(strict_out.accepted)
    if max_length is None:
        assert (LENIENT_ONLY, "too_long") not in divergence.counts


@settings(max_examples=150, deadline=None)
@given(records_strategy, max_lengths)
def test_swapping_primary_and_shadow_gives_the_same_counts(records: list[Any], max_length: int | None) -> None:
    forward = _compare(STRICT, LENIENT, records, max_length)
    backward = _compare(LENIENT, STRICT, records, max_length)
    assert forward == backward


@settings(max_examples=100, deadline=None)
@given(records_strategy, max_lengths)
def test_a_strategy_never_diverges_from_itself(records: list[Any], max_length: int | None) -> None:
    assert _compare(STRICT, STRICT, records, max_length).divergent == 0
    assert _compare(LENIENT, LENIENT, records, max_length).divergent == 0


# -- any two outcomes, against the definition -----------------------------------------

# One record's fate under one strategy: accepted with a value, or skipped/rejected with a reason.
fates = st.one_of(
    st.tuples(st.just("accepted"), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.sampled_from(["skipped", "rejected"]), st.sampled_from(["blank", "too_long", "empty"])),
)


def outcome_of(strategy: str, batch: list[tuple[str, str]]) -> Outcome:
    lists: dict[str, list[tuple[int, str]]] = {"accepted": [], "skipped": [], "rejected": []}
    for index, (fate, detail) in enumerate(batch):
        lists[fate].append((index, detail))
    return Outcome(strategy, 1, lists["accepted"], lists["skipped"], lists["rejected"])


def by_definition(primary: list[tuple[str, str]], shadow: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The module docstring's rule, record by record."""
    counts: dict[tuple[str, str], int] = {}
    for (p_fate, p_detail), (s_fate, s_detail) in zip(primary, shadow, strict=True):
        if p_fate == "accepted" and s_fate == "accepted":
            key = (VALUE_MISMATCH, "value") if p_detail != s_detail else None
        elif p_fate == "accepted":
            key = (STRICT_ONLY, s_detail)
        elif s_fate == "accepted":
            key = (LENIENT_ONLY, p_detail)
        else:
            key = None
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(fates, fates), max_size=3 * MERGE_DIVERGENCES))
def test_any_two_outcomes_are_compared_by_the_definition(pairs: list[tuple[tuple[str, str], tuple[str, str]]]) -> None:
    """Mostly-equal and wholly different batches alike: the in-order walk (up to
    MERGE_DIVERGENCES divergent records) and the by-index comparison past it agree with
    the rule applied record by record."""
    primary_batch = [p for p, _ in pairs]
    shadow_batch = [s for _, s in pairs]
    primary, shadow = outcome_of("strict", primary_batch), outcome_of("lenient", shadow_batch)
    expected = by_definition(primary_batch, shadow_batch)
    assert compare(primary, shadow) == Divergence(len(pairs), sum(expected.values()), expected)
    assert compare(shadow, primary) == Divergence(len(pairs), sum(expected.values()), expected)


@pytest.mark.parametrize("divergent", [1, MERGE_DIVERGENCES - 1, MERGE_DIVERGENCES, MERGE_DIVERGENCES + 1, 40])
@pytest.mark.parametrize("where", ["start", "spread", "end"])
def test_divergent_records_anywhere_in_a_long_batch(divergent: int, where: str) -> None:
    """A 200-record batch that strict and lenient treat alike but for ``divergent`` records
    with control characters: at its start, spread over it, or at its end."""
    size = 200
    positions = {"start": range(divergent), "end": range(size - divergent, size),
                 "spread": range(0, size, size // divergent)}[where]
    bad = set(list(positions)[:divergent])
    records = [f"bad\x01{i}" if i in bad else f" r{i} " for i in range(size)]
    strict_out, lenient_out = both(records)
    expected = Divergence(size, divergent, {(LENIENT_ONLY, "control_character"): divergent})
    assert compare(strict_out, lenient_out) == expected
    assert compare(lenient_out, strict_out) == expected
