"""Shadow comparison: where two strategies' outcomes for the same batch diverge.

A record diverges when one strategy accepts it and the other does not, or when both
accept it with different values. Records neither strategy accepts do not diverge,
whatever their reasons: strict rejecting what lenient skips is the intended change.

Divergences are counted by ``(kind, reason)``:

- ``("accepted_by_<name>_only", <reason the other strategy gave>)``, e.g.
  ``("accepted_by_lenient_only", "control_character")``: lenient passes downstream a
  record that strict rejects;
- ``("value_mismatch", "value")``: both accept, with different values.
"""

from __future__ import annotations

from dataclasses import dataclass

from canaryws.core.strategies.outcome import Outcome

VALUE_MISMATCH = "value_mismatch"


def accepted_only_kind(strategy: str) -> str:
    return f"accepted_by_{strategy}_only"


@dataclass(frozen=True, slots=True)
class Divergence:
    """The comparison of one batch: ``records`` compared, ``divergent`` of them, by (kind, reason)."""

    records: int
    divergent: int
    counts: dict[tuple[str, str], int]


def compare(primary: Outcome, shadow: Outcome) -> Divergence:
    """Compare the outcomes of two strategies over the same batch."""
    if primary.size != shadow.size:
        raise ValueError(f"outcomes of different batches: {primary.size} and {shadow.size} records")
    if primary.accepted == shadow.accepted:  # the common case: one list comparison
        return Divergence(primary.size, 0, {})
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
            key = (VALUE_MISMATCH, "value")
        else:
            continue
        counts[key] = counts.get(key, 0) + 1
    for index, _value in shadow.accepted:
        if index not in primary_accepted:
            key = (only_shadow, primary_reasons[index])
            counts[key] = counts.get(key, 0) + 1
    return Divergence(primary.size, sum(counts.values()), counts)


__all__ = ["VALUE_MISMATCH", "Divergence", "accepted_only_kind", "compare"]
