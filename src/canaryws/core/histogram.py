"""A fixed-bucket latency histogram, shared by the service (which fills it per
connection) and the analysis (which merges and reads quantiles from it).

Bucket ``i`` counts values in ``(BOUNDS_MS[i-1], BOUNDS_MS[i]]``; the last bucket,
index ``len(BOUNDS_MS)``, counts everything above the top bound. Bounds grow by
√2 from 50 µs to about 26 s, so a quantile read from the buckets lies in the same
√2-wide bucket as the exact value (typically within ±20 %, at worst a factor √2):
enough to compare cohorts, small enough (40 integers) to travel on every connection
summary span.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 2 ** (k / 2), 6) for k in range(39))
# The same bounds in seconds: the Prometheus histogram's ``le`` labels.
BOUNDS_S: tuple[float, ...] = tuple(bound / 1000.0 for bound in BOUNDS_MS)
SIZE = len(BOUNDS_MS) + 1


def bucket_of(milliseconds: float) -> int:
    """Index of the bucket a value in milliseconds falls into."""
    return bisect.bisect_left(BOUNDS_MS, milliseconds)


def empty() -> list[int]:
    return [0] * SIZE


def merge(histograms: Iterable[Sequence[int]]) -> list[int]:
    total = empty()
    for counts in histograms:
        for i, n in enumerate(counts[:SIZE]):
            total[i] += n
    return total


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q ≤ 1) in milliseconds, interpolated within its bucket.

    None for an empty histogram. Values above the top bound read as the top bound.
    """
    n = sum(counts)
    if n == 0:
        return None
    rank = q * n
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(BOUNDS_MS):
                return BOUNDS_MS[-1]
            low = BOUNDS_MS[i - 1] if i > 0 else 0.0
            high = BOUNDS_MS[i]
            return low + (high - low) * max(0.0, rank - seen) / c
        seen += c
    return BOUNDS_MS[-1]


__all__ = ["BOUNDS_MS", "BOUNDS_S", "SIZE", "bucket_of", "empty", "merge", "quantile"]
