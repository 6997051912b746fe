"""Metrics of the persist step: the sink's state, its commits and what became of the batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

__all__ = ["SinkTelemetry"]

# Commit durations: a group commit takes about a millisecond; the timeout is seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SinkTelemetry:
    """``canaryws_sink_up``, ``canaryws_sink_pending``, ``canaryws_sink_commits_total``,
    ``canaryws_sink_commit_duration_seconds`` and ``canaryws_sink_batches_total``
    (docs/observability.md)."""

    def __init__(self, meter_provider: MeterProvider, sink: str) -> None:
        """``sink``: its name (the ``sink`` label); :meth:`watch` says where the gauges read."""
        meter = meter_provider.get_meter("canaryws.sink")
        self._labels = {"sink": sink}
        self._up: Callable[[], bool] = lambda: False
        self._pending: Callable[[], int] = lambda: 0
        meter.create_observable_gauge(
            "canaryws.sink.up", callbacks=[self._observe_up], unit="1",
            description="1 while the sink commits, 0 while it is unavailable (batches get `unavailable`)",
        )
        meter.create_observable_gauge(
            "canaryws.sink.pending", callbacks=[self._observe_pending], unit="{batch}",
            description="Batches waiting on the sink: queued or in a commit under way",
        )
        self._commits = meter.create_counter(
            "canaryws.sink.commits", unit="{commit}", description="Group commits, by result (ok, failed)",
        )
        self._duration = meter.create_histogram(
            "canaryws.sink.commit.duration", unit="s", description="Time a group commit took, by result",
            explicit_bucket_boundaries_advisory=COMMIT_BUCKETS,
        )
        self._batches = meter.create_counter(
            "canaryws.sink.batches", unit="{batch}",
            description="Batches handed to the sink, by outcome: committed (the first time), replayed (committed "
            "before: the stored answer), unavailable (not committed: answered `unavailable` or closed 1013)",
        )

    def watch(self, up: Callable[[], bool], pending: Callable[[], int]) -> None:
        """The gauges read ``up()`` and ``pending()`` (the committer's) at each collection."""
        self._up, self._pending = up, pending

    def committed(self, outcome: str, seconds: float) -> None:
        """A group commit: ``outcome`` "ok" or "failed"."""
        attrs = {**self._labels, "result": outcome}
        self._commits.add(1, attrs)
        self._duration.record(seconds, attrs)

    def batches(self, outcome: str, count: int) -> None:
        self._batches.add(count, {**self._labels, "outcome": outcome})

    def _observe_up(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(1 if self._up() else 0, self._labels)

    def _observe_pending(self, _options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._pending(), self._labels)
