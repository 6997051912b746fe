"""The outcome of processing one batch: every index lands in exactly one list."""

from __future__ import annotations

import msgspec


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """Result of a strategy over one batch of records.

    ``accepted`` holds ``(index, value)``; ``skipped`` and ``rejected`` hold
    ``(index, reason_code)``. Each index of the batch appears exactly once across
    the three lists, in ascending order within each list.

    A frozen msgspec Struct rather than a frozen dataclass: built once per batch (twice
    with a shadow), in about 60 ns instead of 1 µs (a frozen dataclass sets each field
    through ``object.__setattr__``). Untracked by the garbage collector: its lists hold
    tuples of ints and strings, never the outcome itself.
    """

    strategy: str
    strategy_version: int
    accepted: list[tuple[int, str]]
    skipped: list[tuple[int, str]]
    rejected: list[tuple[int, str]]

    @property
    def size(self) -> int:
        return len(self.accepted) + len(self.skipped) + len(self.rejected)

    def reason_counts(self) -> dict[tuple[str, str], int]:
        """Counts keyed by ``(outcome, reason)``: ("skipped", "blank") -> 2, ..."""
        counts: dict[tuple[str, str], int] = {}
        for _, reason in self.skipped:  # plain loops: a few items, cheaper than Counter
            key = ("skipped", reason)
            counts[key] = counts.get(key, 0) + 1
        for _, reason in self.rejected:
            key = ("rejected", reason)
            counts[key] = counts.get(key, 0) + 1
        return counts
