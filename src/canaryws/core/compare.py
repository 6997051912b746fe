"""Shadow comparison: where two strategies' outcomes for the same batch diverge.

A record diverges when one strategy accepts it and the other does not, or when both
accept it with different values. Records neither strategy accepts do not diverge,
whatever their reasons: strict rejecting what lenient skips is the intended change.

Divergences are counted by ``(kind, reason)``:

- ``("accepted_by_<name>_only", <reason the other strategy gave>)``, e.g.
  ``("accepted_by_lenient_only", "control_character")``: lenient passes downstream a
  record that strict rejects;
- ``("value_mismatch", "value")``: both accept, with different values.

How (docs/benchmarks.md): the shadow compares every batch, so this is on the hot path.
Both ``accepted`` lists are in index order and, between two strategies that mostly
agree, equal but for a few records. The comparison walks them in C (``map`` over the
two lists, ``next`` to the first difference, a list equality for the rest) and does
Python work only at the divergent records. A batch with more than
:data:`MERGE_DIVERGENCES` of them is compared by index instead (dicts of each side),
which costs the same whatever the number.
"""

from __future__ import annotations

from itertools import compress, count, islice
from operator import ne
from typing import NamedTuple

from canaryws.core.strategies.outcome import Outcome

VALUE_MISMATCH = "value_mismatch"
_MISMATCH_KEY = (VALUE_MISMATCH, "value")
MERGE_DIVERGENCES = 8  # divergent records the in-order walk handles before comparing by index


def accepted_only_kind(strategy: str) -> str:
    return f"accepted_by_{strategy}_only"


class Divergence(NamedTuple):
    """The comparison of one batch: ``records`` compared, ``divergent`` of them, by (kind, reason)."""

    records: int
    divergent: int
    counts: dict[tuple[str, str], int]


def compare(primary: Outcome, shadow: Outcome) -> Divergence:
    """Compare the outcomes of two strategies over the same batch."""
    ours, theirs = primary.accepted, shadow.accepted
    size = len(ours) + len(primary.skipped) + len(primary.rejected)
    if size != len(theirs) + len(shadow.skipped) + len(shadow.rejected):
        raise ValueError(f"outcomes of different batches: {primary.size} and {shadow.size} records")
    if ours == theirs:  # the common case: one list comparison
        return Divergence(size, 0, {})
    counts = _walk(primary, shadow)
    if counts is None:
        counts = _by_index(primary, shadow)
    return Divergence(size, sum(counts.values()), counts)


def _walk(primary: Outcome, shadow: Outcome) -> dict[tuple[str, str], int] | None:
    """The counts by walking both accepted lists in index order; None past MERGE_DIVERGENCES."""
    ours, theirs = primary.accepted, shadow.accepted
    n_ours, n_theirs = len(ours), len(theirs)
    counts: dict[tuple[str, str], int] = {}
    i = j = 0
    for _ in range(MERGE_DIVERGENCES):
        # Skip the run of equal pairs: the offset of the first unequal one, in C.
        k = next(compress(count(), map(ne, islice(ours, i, None), islice(theirs, j, None))), None)
        if k is None:  # one list ran out: what is left of the other is accepted by it only
            common = min(n_ours - i, n_theirs - j)
            _one_sided(counts, ours, i + common, primary.strategy, shadow)
            _one_sided(counts, theirs, j + common, shadow.strategy, primary)
            return counts
        i += k
        j += k
        index, theirs_index = ours[i][0], theirs[j][0]
        if index == theirs_index:
            key = _MISMATCH_KEY
            i += 1
            j += 1
        elif index < theirs_index:  # ours accepts a record theirs does not
            key = (accepted_only_kind(primary.strategy), _reason(shadow, index))
            i += 1
        else:
            key = (accepted_only_kind(shadow.strategy), _reason(primary, theirs_index))
            j += 1
        counts[key] = counts.get(key, 0) + 1
        if ours[i:] == theirs[j:]:
            return counts
    return None


def _one_sided(counts: dict[tuple[str, str], int], accepted: list[tuple[int, str]], start: int,
               strategy: str, other: Outcome) -> None:
    if start < len(accepted):
        kind = accepted_only_kind(strategy)
        reasons = dict(other.skipped + other.rejected)
        for index, _ in islice(accepted, start, None):
            key = (kind, reasons[index])
            counts[key] = counts.get(key, 0) + 1


def _reason(outcome: Outcome, index: int) -> str:
    """The reason ``outcome`` gave for a record it did not accept."""
    for i, reason in outcome.rejected:
        if i == index:
            return reason
    for i, reason in outcome.skipped:
        if i == index:
            return reason
    raise ValueError(f"record {index} has no outcome in {outcome.strategy}")


def _by_index(primary: Outcome, shadow: Outcome) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    shadow_accepted = dict(shadow.accepted)
    primary_accepted = dict(primary.accepted)
    shadow_reasons = dict(shadow.skipped + shadow.rejected)
    primary_reasons = dict(primary.skipped + primary.rejected)
    only_primary = accepted_only_kind(primary.strategy)
    only_shadow = accepted_only_kind(shadow.strategy)
    for index, value in primary.accepted:
        other = shadow_accepted.get(index)
        if other is None:
            key = (only_primary, shadow_reasons[index])
        elif other != value:
            key = _MISMATCH_KEY
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    for index, _value in shadow.accepted:
        if index not in primary_accepted:
            key = (only_shadow, primary_reasons[index])
            counts[key] = counts.get(key, 0) + 1
    return counts


__all__ = ["MERGE_DIVERGENCES", "VALUE_MISMATCH", "Divergence", "accepted_only_kind", "compare"]
