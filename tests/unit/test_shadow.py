"""ShadowRunner: the other strategy runs off the response path, on real telemetry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span

from canaryws.adapters import shadow as shadow_module
from canaryws.adapters.shadow import ShadowRunner
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.core.strategies import LENIENT, STRICT, Outcome
from canaryws.core.summary import ConnectionSummary

MAX_LENGTH = 8
# ok, a control character, too long, empty: strict rejects two records lenient accepts
RECORDS: list[Any] = ["ok", "bad\x00", "x" * 20, ""]
LENIENT_ONLY = "accepted_by_lenient_only"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    records: RecordsTelemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        """Data points of metric ``name``: attributes -> value."""
        data = self.metrics.get_metrics_data()
        found: dict[frozenset[tuple[str, Any]], float] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            found[frozenset((point.attributes or {}).items())] = point.value
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metrics])
    yield Telemetry(spans, metrics, RecordsTelemetry(tracer_provider, meter_provider))
    tracer_provider.shutdown()
    meter_provider.shutdown()


def new_summary(connection: str = "c1", strategy: str = "strict") -> ConnectionSummary:
    return ConnectionSummary(connection, f"client-{connection}", strategy, 1, True, "rev")


def answer(telemetry: Telemetry, summary: ConnectionSummary, records: list[Any] = RECORDS,
           max_length: int = MAX_LENGTH) -> tuple[Span, Outcome]:
    """What the endpoint does before submitting: process, count, keep the batch span open."""
    strategy = STRICT if summary.strategy == "strict" else LENIENT
    outcome = strategy.process(records, max_length)
    counts = outcome.reason_counts()
    summary.add(outcome, counts, 0.001)
    span = telemetry.records.start_batch(None)
    telemetry.records.batch_done(span, "b1", outcome, counts, 0.001, summary.connection_id, end=False)
    return span, outcome


async def settle(condition: Callable[[], bool], rounds: int = 20) -> int:
    """Yield to the loop until ``condition`` holds; the number of yields it took."""
    for i in range(rounds):
        if condition():
            return i
        await asyncio.sleep(0)
    assert condition()
    return rounds


def runner_for(telemetry: Telemetry, **kwargs: Any) -> ShadowRunner:
    return ShadowRunner(telemetry.records, max_length=MAX_LENGTH, **kwargs)


def test_the_comparison_happens_after_submit_returns(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summary = new_summary()
        span, outcome = answer(telemetry, summary)
        before = time.time_ns()
        assert runner.submit(summary, span, RECORDS, outcome, weight=40) is True
        submitted = time.time_ns()
        # nothing has happened yet: the loop has not run
        assert summary.shadow_batches == 0
        assert runner.pending_batches == 1
        assert telemetry.finished() == []
        time.sleep(0.02)  # the comparison happens well after the answer went out
        await settle(lambda: summary.shadow_batches == 1)
        assert runner.pending_batches == 0
        assert summary.shadow_records == 4
        assert summary.shadow_divergent == 2
        assert summary.divergence == {(LENIENT_ONLY, "control_character"): 1, (LENIENT_ONLY, "too_long"): 1}
        assert summary.shadow_skipped == 0
        (finished,) = telemetry.finished()
        assert finished.name == "records.batch"
        assert finished.end_time is not None
        assert before <= finished.end_time <= submitted  # the answer's time, not the comparison's
        attrs = dict(finished.attributes or {})
        assert attrs["canaryws.shadow.strategy"] == "lenient"
        assert attrs["canaryws.shadow.records"] == 4
        assert attrs["canaryws.shadow.divergent"] == 2
        assert attrs[f"canaryws.shadow.divergence.{LENIENT_ONLY}.control_character"] == 1
        assert attrs[f"canaryws.shadow.divergence.{LENIENT_ONLY}.too_long"] == 1
        assert "canaryws.shadow.skipped" not in attrs
        await runner.stop()

    asyncio.run(scenario())


def test_lenient_primary_is_shadowed_by_strict(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summary = new_summary(strategy="lenient")
        span, outcome = answer(telemetry, summary)
        assert runner.submit(summary, span, RECORDS, outcome, weight=40)
        await settle(lambda: summary.shadow_batches == 1)
        assert summary.divergence == {(LENIENT_ONLY, "control_character"): 1, (LENIENT_ONLY, "too_long"): 1}
        (finished,) = telemetry.finished()
        assert (finished.attributes or {})["canaryws.shadow.strategy"] == "strict"
        await runner.stop()

    asyncio.run(scenario())


def test_batches_are_compared_in_order_and_spans_all_end(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summaries = [new_summary(f"c{i}") for i in range(5)]
        for summary in summaries:
            span, outcome = answer(telemetry, summary, ["fine", "a\x01"])
            assert runner.submit(summary, span, ["fine", "a\x01"], outcome, weight=10)
        assert runner.pending_batches == 5
        await settle(lambda: all(s.shadow_batches == 1 for s in summaries), rounds=50)
        assert runner.pending_batches == 0
        assert len(telemetry.finished()) == 5
        assert all(s.shadow_divergent == 1 for s in summaries)
        await runner.stop()

    asyncio.run(scenario())


def test_sampled_out_batches_are_not_compared(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry, sample_rate=0.0)
        runner.start()
        summary = new_summary()
        span, outcome = answer(telemetry, summary)
        assert runner.submit(summary, span, RECORDS, outcome, weight=40) is False
        # refused at once: the span is ended and the skip counted before any yield
        assert summary.shadow_skipped == 1
        assert runner.pending_batches == 0
        (finished,) = telemetry.finished()
        assert (finished.attributes or {})["canaryws.shadow.skipped"] == "sampled_out"
        for _ in range(5):
            await asyncio.sleep(0)
        assert summary.shadow_batches == 0
        assert "canaryws.shadow.strategy" not in (finished.attributes or {})
        await runner.stop()

    asyncio.run(scenario())


def test_sampling_follows_the_rng(telemetry: Telemetry) -> None:
    draws = iter([0.1, 0.3, 0.29999, 0.9])

    async def scenario() -> None:
        runner = runner_for(telemetry, sample_rate=0.3, rng=lambda: next(draws))
        runner.start()
        summary = new_summary()
        taken = []
        for _ in range(4):
            span, outcome = answer(telemetry, summary)
            taken.append(runner.submit(summary, span, RECORDS, outcome, weight=1))
        assert taken == [True, False, True, False]
        assert summary.shadow_skipped == 2
        await settle(lambda: summary.shadow_batches == 2)
        await runner.stop()

    asyncio.run(scenario())


def test_a_batch_heavier_than_the_queue_allows_is_skipped(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry, max_pending_bytes=100)
        runner.start()
        summary = new_summary()
        span, outcome = answer(telemetry, summary)
        assert runner.submit(summary, span, RECORDS, outcome, weight=101) is False
        assert summary.shadow_skipped == 1
        (finished,) = telemetry.finished()
        assert (finished.attributes or {})["canaryws.shadow.skipped"] == "queue_full"
        # the bound is on what is pending: 60 + 40 fits, one more byte does not
        taken = []
        for weight in (60, 40, 1):
            span, outcome = answer(telemetry, summary)
            taken.append(runner.submit(summary, span, RECORDS, outcome, weight=weight))
        assert taken == [True, True, False]
        assert summary.shadow_skipped == 2
        await settle(lambda: summary.shadow_batches == 2)
        # once the queue drained, there is room again
        span, outcome = answer(telemetry, summary)
        assert runner.submit(summary, span, RECORDS, outcome, weight=100) is True
        await settle(lambda: summary.shadow_batches == 3)
        await runner.stop()

    asyncio.run(scenario())


def test_submit_before_start_is_refused(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    assert runner.submit(summary, span, RECORDS, outcome, weight=1) is False
    assert summary.shadow_skipped == 1
    (finished,) = telemetry.finished()
    assert (finished.attributes or {})["canaryws.shadow.skipped"] == "not_started"


def test_after_pending_runs_at_once_when_nothing_is_pending(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        ran: list[str] = []
        runner.after_pending(new_summary(), lambda: ran.append("now"))
        assert ran == ["now"]
        await runner.stop()

    asyncio.run(scenario())


def test_after_pending_waits_for_the_summarys_queued_batches(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        busy, idle = new_summary("busy"), new_summary("idle")
        events: list[tuple[str, int, int]] = []
        for _ in range(2):
            span, outcome = answer(telemetry, busy)
            assert runner.submit(busy, span, RECORDS, outcome, weight=10)
        runner.after_pending(busy, lambda: events.append(("busy", busy.shadow_batches, len(telemetry.finished()))))
        runner.after_pending(idle, lambda: events.append(("idle", idle.shadow_batches, len(telemetry.finished()))))
        # the idle summary has nothing pending: its action ran at once, before any comparison
        assert events == [("idle", 0, 0)]
        await settle(lambda: len(events) == 2, rounds=50)
        # the busy summary's action ran after both of its comparisons (and their spans ended)
        assert events == [("idle", 0, 0), ("busy", 2, 2)]
        await runner.stop()

    asyncio.run(scenario())


def test_stop_waits_for_queued_comparisons(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summary = new_summary()
        for _ in range(3):
            span, outcome = answer(telemetry, summary)
            assert runner.submit(summary, span, RECORDS, outcome, weight=10)
        emitted: list[int] = []
        runner.after_pending(summary, lambda: emitted.append(summary.shadow_batches))
        await runner.stop()
        assert summary.shadow_batches == 3 and summary.shadow_skipped == 0
        assert emitted == [3]
        assert len(telemetry.finished()) == 3
        assert runner.pending_batches == 0

    asyncio.run(scenario())


def test_stop_flushes_what_it_has_no_time_to_compare(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        first, second = new_summary("c1"), new_summary("c2")
        submitted = []
        for summary in (first, second, first):
            span, outcome = answer(telemetry, summary)
            assert runner.submit(summary, span, RECORDS, outcome, weight=10)
            submitted.append(time.time_ns())
        emitted: list[str] = []
        runner.after_pending(first, lambda: emitted.append("first"))
        runner.after_pending(second, lambda: emitted.append("second"))
        time.sleep(0.01)
        await runner.stop(timeout=0)  # the loop never got to run the comparisons
        # no summary is lost: every queued action ran, every span ended, at the answer's time
        assert sorted(emitted) == ["first", "second"]
        assert (first.shadow_batches, first.shadow_skipped) == (0, 2)
        assert (second.shadow_batches, second.shadow_skipped) == (0, 1)
        finished = telemetry.finished()
        assert len(finished) == 3
        assert all(span.end_time is not None and span.end_time <= submitted[-1] for span in finished)
        assert runner.pending_batches == 0

    asyncio.run(scenario())


def test_metrics_are_recorded_with_their_attributes(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        strict_summary, lenient_summary = new_summary("s", "strict"), new_summary("l", "lenient")
        for summary in (strict_summary, strict_summary, lenient_summary):
            span, outcome = answer(telemetry, summary)
            assert runner.submit(summary, span, RECORDS, outcome, weight=10)
        await settle(lambda: strict_summary.shadow_batches == 2 and lenient_summary.shadow_batches == 1)
        await runner.stop()

        sampled_out = runner_for(telemetry, sample_rate=0.0)
        span, outcome = answer(telemetry, strict_summary)
        assert not sampled_out.submit(strict_summary, span, RECORDS, outcome, weight=10)
        full = runner_for(telemetry, max_pending_bytes=1)
        full.start()
        span, outcome = answer(telemetry, lenient_summary)
        assert not full.submit(lenient_summary, span, RECORDS, outcome, weight=10)
        await full.stop()

    asyncio.run(scenario())
    pair = {("strategy", "strict"), ("shadow_strategy", "lenient")}
    reverse = {("strategy", "lenient"), ("shadow_strategy", "strict")}
    assert telemetry.points("canaryws.shadow.batches") == {frozenset(pair): 2, frozenset(reverse): 1}
    assert telemetry.points("canaryws.shadow.records") == {frozenset(pair): 8, frozenset(reverse): 4}
    assert telemetry.points("canaryws.shadow.divergent") == {
        frozenset(pair | {("kind", LENIENT_ONLY), ("reason", "control_character")}): 2,
        frozenset(pair | {("kind", LENIENT_ONLY), ("reason", "too_long")}): 2,
        frozenset(reverse | {("kind", LENIENT_ONLY), ("reason", "control_character")}): 1,
        frozenset(reverse | {("kind", LENIENT_ONLY), ("reason", "too_long")}): 1,
    }
    assert telemetry.points("canaryws.shadow.skipped") == {
        frozenset({("strategy", "strict"), ("reason", "sampled_out")}): 1,
        frozenset({("strategy", "lenient"), ("reason", "queue_full")}): 1,
    }
    work = telemetry.points("canaryws.shadow.work")
    assert set(work) == {frozenset(pair), frozenset(reverse)}
    assert all(seconds > 0 for seconds in work.values())


def test_a_batch_without_divergence_records_no_divergent_metric(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summary = new_summary()
        span, outcome = answer(telemetry, summary, [" a ", "", None, 5])
        assert runner.submit(summary, span, [" a ", "", None, 5], outcome, weight=10)
        await settle(lambda: summary.shadow_batches == 1)
        await runner.stop()
        assert summary.shadow_divergent == 0 and summary.divergence == {}

    asyncio.run(scenario())
    assert telemetry.points("canaryws.shadow.divergent") == {}
    assert telemetry.points("canaryws.shadow.batches") == {
        frozenset({("strategy", "strict"), ("shadow_strategy", "lenient")}): 1}


@pytest.mark.parametrize("rate", [1.5, -0.1])
def test_sample_rate_outside_zero_one_is_refused(telemetry: Telemetry, rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        ShadowRunner(telemetry.records, max_length=MAX_LENGTH, sample_rate=rate)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_sample_rate_bounds_are_allowed(telemetry: Telemetry, rate: float) -> None:
    assert ShadowRunner(telemetry.records, max_length=MAX_LENGTH, sample_rate=rate).pending_batches == 0


def test_submissions_after_stop_are_refused_and_their_spans_end(telemetry: Telemetry) -> None:
    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        await runner.stop()
        summary = new_summary()
        span, outcome = answer(telemetry, summary)
        assert not runner.submit(summary, span, RECORDS, outcome, weight=10)
        assert summary.shadow_skipped == 1 and len(telemetry.finished()) == 1

    asyncio.run(scenario())


def test_a_drain_yields_to_the_event_loop_after_its_time_slice(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shadow_module, "BURST_SECONDS", 0.0)  # every drain takes one batch, then yields

    async def scenario() -> None:
        runner = runner_for(telemetry)
        runner.start()
        summary = new_summary()
        for _ in range(5):
            span, outcome = answer(telemetry, summary)
            assert runner.submit(summary, span, RECORDS, outcome, weight=10)
        assert summary.shadow_batches == 0  # nothing runs inside submit
        compared = []
        for _ in range(5):
            await asyncio.sleep(0)  # one turn of the loop: one drain
            compared.append(summary.shadow_batches)
        assert compared == [1, 2, 3, 4, 5]
        await runner.stop()

    asyncio.run(scenario())
