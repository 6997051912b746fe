"""The batch, record and shadow totals, read from the connection summaries at collection.

The endpoint's batch loop does no metric work: batches, records, batch durations and the
shadow's comparisons are counted once, on the connection summaries it fills anyway
(:mod:`canaryws.core.summary`). At collection (a scrape, an OTLP export) the totals are
the retired slices plus the open connections' current ones (:class:`SummaryTotals`);
:class:`DurationHistograms` serves the batch-duration histogram from them to Prometheus.
:class:`canaryws.adapters.telemetry.records.RecordsTelemetry` registers the instruments
that read them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client.metrics_core import HistogramMetricFamily

from canaryws.core import histogram
from canaryws.core.strategies import OTHER_STRATEGY
from canaryws.core.summary import ConnectionSummary

__all__ = [
    "DURATION_DESCRIPTION",
    "DurationHistograms",
    "ShadowTotals",
    "SummaryTotals",
]

DURATION_DESCRIPTION = "Time from frame received to result sent"


@dataclass(slots=True)
class ShadowTotals:
    """The shadow's totals for one (strategy, shadow strategy) pair."""

    batches: int = 0
    records: int = 0
    work: float = 0.0  # seconds
    divergent: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, reason) -> records


class SummaryTotals:
    """Process-wide batch and shadow metrics, read from the connection summaries at collection time.

    The endpoint registers where the open connections' summaries are (:meth:`track`) and
    hands over each slice it ends (:meth:`retire`, under :attr:`lock`, in the same step as
    the slice leaves the open set or is replaced), so a total never counts a slice twice or
    not at all: every counter only grows. Collection runs in the scrape's or the exporter's
    thread and holds the lock while it sums; the batch loop never takes it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._live: Callable[[], Iterable[ConnectionSummary]] = tuple
        self._batches: dict[str, int] = {}
        self._records: dict[tuple[str, str, str], int] = {}  # (strategy, outcome, reason) -> n
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = {}
        self._shadow: dict[tuple[str, str], ShadowTotals] = {}  # (strategy, shadow strategy) ->

    def track(self, live: Callable[[], Iterable[ConnectionSummary]]) -> None:
        """``live()`` returns the summaries of the open connections (a snapshot)."""
        self._live = live

    def retire(self, summary: ConnectionSummary) -> None:
        """Fold an ended slice into the totals; call with :attr:`lock` held."""
        self._fold_counts(summary, self._batches, self._records)
        self._fold_latency(summary, self._latency, self._latency_sum)
        self._fold_shadow(summary, self._shadow)

    @staticmethod
    def _fold_counts(summary: ConnectionSummary, batches: dict[str, int],
                     records: dict[tuple[str, str, str], int]) -> None:
        if not summary.batches:
            return
        strategy = summary.strategy
        batches[strategy] = batches.get(strategy, 0) + summary.batches
        key = (strategy, "accepted", "")
        records[key] = records.get(key, 0) + summary.accepted
        for (outcome, reason), n in summary.reasons.items():  # a new dict: safe while batches go on
            key = (strategy, outcome, reason)
            records[key] = records.get(key, 0) + n

    @staticmethod
    def _fold_latency(summary: ConnectionSummary, latency: dict[str, list[int]],
                      latency_sum: dict[str, float]) -> None:
        if not summary.batches:
            return
        strategy = summary.strategy
        buckets = latency.get(strategy)
        if buckets is None:
            buckets = latency[strategy] = histogram.empty()
        for i, n in enumerate(list(summary.latency)):
            buckets[i] += n
        latency_sum[strategy] = latency_sum.get(strategy, 0.0) + summary.latency_sum_s

    @staticmethod
    def _fold_shadow(summary: ConnectionSummary, pairs: dict[tuple[str, str], ShadowTotals]) -> None:
        if not summary.shadow_batches:
            return
        strategy = summary.strategy
        key = (strategy, OTHER_STRATEGY.get(strategy, ""))
        totals = pairs.get(key)
        if totals is None:
            totals = pairs[key] = ShadowTotals()
        totals.batches += summary.shadow_batches
        totals.records += summary.shadow_records
        totals.work += summary.shadow_work_s
        divergent = totals.divergent
        for kind_reason, n in list(summary.divergence.items()):  # a copy: batches go on meanwhile
            divergent[kind_reason] = divergent.get(kind_reason, 0) + n

    def counts(self) -> tuple[dict[str, int], dict[tuple[str, str, str], int]]:
        """Batches and records now: retired slices plus the open connections' current slices."""
        with self.lock:
            batches, records = dict(self._batches), dict(self._records)
            for summary in self._live():
                self._fold_counts(summary, batches, records)
        return batches, records

    def latency(self) -> tuple[dict[str, list[int]], dict[str, float]]:
        """Batch-duration buckets and sums now, the same way (only the histogram scrape needs them)."""
        with self.lock:
            latency = {strategy: list(buckets) for strategy, buckets in self._latency.items()}
            latency_sum = dict(self._latency_sum)
            for summary in self._live():
                self._fold_latency(summary, latency, latency_sum)
        return latency, latency_sum

    def shadow(self) -> dict[tuple[str, str], ShadowTotals]:
        """The shadow's totals now, by (strategy, shadow strategy), the same way."""
        with self.lock:
            pairs = {key: ShadowTotals(t.batches, t.records, t.work, dict(t.divergent))
                     for key, t in self._shadow.items()}
            for summary in self._live():
                self._fold_shadow(summary, pairs)
        return pairs

    def observe_batches(self, _options: CallbackOptions) -> Iterable[Observation]:
        batches = self.counts()[0]
        return [Observation(n, {"strategy": strategy}) for strategy, n in batches.items()]

    def observe_records(self, _options: CallbackOptions) -> Iterable[Observation]:
        records = self.counts()[1]
        return [
            Observation(n, {"strategy": strategy, "outcome": outcome, **({"reason": reason} if reason else {})})
            for (strategy, outcome, reason), n in records.items()
            if n or outcome != "accepted"
        ]


class DurationHistograms:
    """The ``canaryws_batch_duration_seconds`` histogram per strategy, read from the
    connection summaries' latency histograms at scrape time (:class:`SummaryTotals`).

    The buckets are :mod:`canaryws.core.histogram`'s √2-spaced bounds, the ones the
    summaries carry. A prometheus_client custom collector in the registry ``/metrics``
    serves, so the exposition is a standard Prometheus histogram (the OTel SDK has no
    histogram whose values are read at collection time).
    """

    name = "canaryws_batch_duration_seconds"

    def __init__(self, totals: SummaryTotals) -> None:
        self._totals = totals
        self._le = [repr(bound) for bound in histogram.BOUNDS_S]

    def collect(self) -> Iterable[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, DURATION_DESCRIPTION, labels=["strategy"], unit="seconds")
        latency, latency_sum = self._totals.latency()
        for strategy, counts in latency.items():
            buckets: list[tuple[str, float]] = []
            running = 0
            for le, n in zip(self._le, counts, strict=False):
                running += n
                buckets.append((le, running))
            buckets.append(("+Inf", running + counts[-1]))
            family.add_metric([strategy], buckets, latency_sum[strategy])
        yield family
