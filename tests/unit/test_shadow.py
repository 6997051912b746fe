"""ShadowRunner: the other strategy runs after the answer, on real telemetry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
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
from canaryws.adapters.records.after_round import AfterRound
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
    """What the endpoint does before the shadow runs: process, count, keep the batch span open."""
    strategy = STRICT if summary.strategy == "strict" else LENIENT
    outcome = strategy.process(records, max_length)
    summary.add(outcome, 0.001)
    span = telemetry.records.start_batch(None)
    telemetry.records.batch_done(span, "b1", outcome, 0.001, summary.connection_id, end=False)
    return span, outcome


def runner_for(telemetry: Telemetry, **kwargs: Any) -> ShadowRunner:
    return ShadowRunner(telemetry.records, max_length=MAX_LENGTH, **kwargs)


def test_the_comparison_runs_at_once_and_the_span_ends_at_the_answer(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    before = time.time_ns()
    assert runner.run(summary, span, RECORDS, outcome) is True
    after = time.time_ns()
    assert summary.shadow_batches == 1
    assert summary.shadow_records == 4
    assert summary.shadow_divergent == 2
    assert summary.divergence == {(LENIENT_ONLY, "control_character"): 1, (LENIENT_ONLY, "too_long"): 1}
    assert summary.shadow_skipped == 0
    (finished,) = telemetry.finished()
    assert finished.name == "records.batch"
    assert finished.end_time is not None
    assert before <= finished.end_time <= after
    attrs = dict(finished.attributes or {})
    assert attrs["canaryws.shadow.strategy"] == "lenient"
    assert attrs["canaryws.shadow.records"] == 4
    assert attrs["canaryws.shadow.divergent"] == 2
    assert attrs[f"canaryws.shadow.divergence.{LENIENT_ONLY}.control_character"] == 1
    assert attrs[f"canaryws.shadow.divergence.{LENIENT_ONLY}.too_long"] == 1
    assert "canaryws.shadow.skipped" not in attrs


def test_the_span_carries_the_answers_time_not_the_comparisons(telemetry: Telemetry) -> None:
    class SlowStrategies(dict[str, Any]):
        def __getitem__(self, name: str) -> Any:
            strategy = super().__getitem__(name)

            class Slow:
                @staticmethod
                def process(records: list[Any], max_length: int) -> Outcome:
                    time.sleep(0.05)  # a slow comparison
                    return strategy.process(records, max_length)

            return Slow

    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    original = shadow_module.STRATEGIES
    shadow_module.STRATEGIES = SlowStrategies(original)  # type: ignore[misc]
    try:
        runner = runner_for(telemetry)  # it looks the other strategy up once, when built
        answered = time.time_ns()
        assert runner.run(summary, span, RECORDS, outcome)
        done = time.time_ns()
    finally:
        shadow_module.STRATEGIES = original  # type: ignore[misc]
    (finished,) = telemetry.finished()
    assert finished.end_time is not None
    assert answered <= finished.end_time < answered + 40_000_000 <= done  # ended at the answer, not 50 ms later


def test_lenient_primary_is_shadowed_by_strict(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    summary = new_summary(strategy="lenient")
    span, outcome = answer(telemetry, summary)
    assert runner.run(summary, span, RECORDS, outcome)
    assert summary.shadow_batches == 1
    assert summary.divergence == {(LENIENT_ONLY, "control_character"): 1, (LENIENT_ONLY, "too_long"): 1}
    (finished,) = telemetry.finished()
    assert (finished.attributes or {})["canaryws.shadow.strategy"] == "strict"


def test_every_run_ends_its_span(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    summaries = [new_summary(f"c{i}") for i in range(5)]
    for summary in summaries:
        span, outcome = answer(telemetry, summary, ["fine", "a\x01"])
        assert runner.run(summary, span, ["fine", "a\x01"], outcome)
    assert len(telemetry.finished()) == 5
    assert all(s.shadow_batches == 1 and s.shadow_divergent == 1 for s in summaries)


def test_sampled_out_batches_are_not_compared(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry, sample_rate=0.0)
    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    assert runner.run(summary, span, RECORDS, outcome) is False
    assert summary.shadow_skipped == 1
    assert summary.shadow_batches == 0
    (finished,) = telemetry.finished()
    attrs = dict(finished.attributes or {})
    assert attrs["canaryws.shadow.skipped"] == "sampled_out"
    assert "canaryws.shadow.strategy" not in attrs


def test_sampling_follows_the_rng(telemetry: Telemetry) -> None:
    draws = iter([0.1, 0.3, 0.29999, 0.9])
    runner = runner_for(telemetry, sample_rate=0.3, rng=lambda: next(draws))
    summary = new_summary()
    taken = []
    for _ in range(4):
        span, outcome = answer(telemetry, summary)
        taken.append(runner.run(summary, span, RECORDS, outcome))
    assert taken == [True, False, True, False]
    assert (summary.shadow_batches, summary.shadow_skipped) == (2, 2)


def test_a_failing_comparison_is_skipped_logged_and_never_raised(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    runner = runner_for(telemetry)
    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    # records that are not the answered batch's: the comparison refuses outcomes of different sizes
    assert runner.run(summary, span, RECORDS[:2], outcome) is False
    assert (summary.shadow_batches, summary.shadow_skipped) == (0, 1)
    (finished,) = telemetry.finished()
    assert (finished.attributes or {})["canaryws.shadow.skipped"] == "error"
    (record,) = [r for r in caplog.records if r.name == "canaryws.shadow"]
    assert record.getMessage() == "shadow comparison failed" and record.exc_info is not None


def test_metrics_are_recorded_with_their_attributes(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    strict_summary, lenient_summary = new_summary("s", "strict"), new_summary("l", "lenient")
    telemetry.records.totals.track(lambda: [strict_summary, lenient_summary])  # as the endpoint does
    for summary in (strict_summary, strict_summary, lenient_summary):
        span, outcome = answer(telemetry, summary)
        assert runner.run(summary, span, RECORDS, outcome)
    sampled_out = runner_for(telemetry, sample_rate=0.0)
    span, outcome = answer(telemetry, strict_summary)
    assert not sampled_out.run(strict_summary, span, RECORDS, outcome)
    span, outcome = answer(telemetry, lenient_summary)
    assert not runner.run(lenient_summary, span, RECORDS[:1], outcome)  # error

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
        frozenset({("strategy", "lenient"), ("reason", "error")}): 1,
    }
    work = telemetry.points("canaryws.shadow.work")
    assert set(work) == {frozenset(pair), frozenset(reverse)}
    assert all(seconds > 0 for seconds in work.values())


def test_a_batch_without_divergence_records_no_divergent_metric(telemetry: Telemetry) -> None:
    runner = runner_for(telemetry)
    summary = new_summary()
    telemetry.records.totals.track(lambda: [summary])
    span, outcome = answer(telemetry, summary, [" a ", "", None, 5])
    assert runner.run(summary, span, [" a ", "", None, 5], outcome)
    assert summary.shadow_divergent == 0 and summary.divergence == {}
    assert telemetry.points("canaryws.shadow.divergent") == {}
    assert telemetry.points("canaryws.shadow.batches") == {
        frozenset({("strategy", "strict"), ("shadow_strategy", "lenient")}): 1}


@pytest.mark.parametrize("rate", [1.5, -0.1])
def test_sample_rate_outside_zero_one_is_refused(telemetry: Telemetry, rate: float) -> None:
    with pytest.raises(ValueError, match="sample rate"):
        ShadowRunner(telemetry.records, max_length=MAX_LENGTH, sample_rate=rate)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_sample_rate_bounds_are_allowed(telemetry: Telemetry, rate: float) -> None:
    runner = ShadowRunner(telemetry.records, max_length=MAX_LENGTH, sample_rate=rate)
    summary = new_summary()
    span, outcome = answer(telemetry, summary)
    assert runner.run(summary, span, RECORDS, outcome) is (rate == 1.0)


# -- after the round: the comparisons of a loop round run after its answers ----------------


def test_the_rounds_comparisons_run_after_the_round_in_order_with_spans_ending_at_the_answer(
    telemetry: Telemetry,
) -> None:
    runner = runner_for(telemetry)
    after = AfterRound(runner)
    summaries = [new_summary(f"c{i}") for i in range(3)]

    async def round_of_answers() -> tuple[list[int], list[int], list[int]]:
        before, answered = [], []
        for summary in summaries:
            span, outcome = answer(telemetry, summary)
            before.append(time.time_ns())
            after.add(summary, outcome, 0.0, 0.001, span, RECORDS, time.time_ns())
            answered.append(time.time_ns())
        counted = [s.shadow_batches for s in summaries]  # nothing compared yet: the round goes on
        await asyncio.sleep(0)  # the loop's next round runs the one flush callback
        return counted, before, answered

    counted, before, answered = asyncio.run(round_of_answers())
    assert counted == [0, 0, 0]
    assert [s.shadow_batches for s in summaries] == [1, 1, 1]
    assert [s.shadow_divergent for s in summaries] == [2, 2, 2]
    finished = telemetry.finished()
    assert [(span.attributes or {})["canaryws.connection.id"] for span in finished] == ["c0", "c1", "c2"]
    for span, start, end in zip(finished, before, answered, strict=True):
        assert span.end_time is not None and start <= span.end_time <= end  # the answer's time


def test_flush_runs_what_is_pending_at_once(telemetry: Telemetry) -> None:
    """What the endpoint does before it ends a summary slice."""
    runner = runner_for(telemetry)
    after = AfterRound(runner)
    summary = new_summary()

    async def add_then_flush() -> int:
        span, outcome = answer(telemetry, summary)
        after.add(summary, outcome, 0.0, 0.001, span, RECORDS, time.time_ns())
        after.flush()
        return summary.shadow_batches

    assert asyncio.run(add_then_flush()) == 1
    assert summary.shadow_batches == 1  # the scheduled callback found nothing left to run
    after.flush()  # nothing pending: nothing happens
    assert summary.shadow_batches == 1


def test_a_failing_bookkeeping_step_loses_neither_the_other_comparisons_nor_the_span(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSummary(ConnectionSummary):
        def add_shadow(self, divergence: Any, work_s: float = 0.0) -> None:
            raise RuntimeError("broken")

    runner = runner_for(telemetry)
    after = AfterRound(runner)
    broken = BrokenSummary("b", "client-b", "strict", 1, True, "rev")
    fine = new_summary("f")

    async def round_of_two() -> None:
        for summary in (broken, fine):
            span, outcome = answer(telemetry, summary)
            after.add(summary, outcome, 0.0, 0.001, span, RECORDS, time.time_ns())
        await asyncio.sleep(0)

    asyncio.run(round_of_two())
    assert fine.shadow_batches == 1
    assert len(telemetry.finished()) == 2  # the broken one's span ended too
    assert [r.getMessage() for r in caplog.records if r.name == "canaryws.shadow"] == ["shadow bookkeeping failed"]


def test_after_the_round_each_batch_is_counted_then_compared_then_its_span_ended(telemetry: Telemetry) -> None:
    """The one queue: a plain batch is counted and its span ended at the answer's time; a
    shadowed one is counted, then compared (which ends its span)."""
    runner = runner_for(telemetry)
    after = AfterRound(runner)
    plain, shadowed = new_summary("p"), new_summary("s")
    outcome = STRICT.process(RECORDS, MAX_LENGTH)

    async def round_of_two() -> tuple[int, int, int]:
        plain_span = telemetry.records.start_batch(None)
        shadow_span = telemetry.records.start_batch(None)
        answered_ns = time.time_ns()
        after.add(plain, outcome, 1.0, 1.25, plain_span, None, answered_ns)
        after.add(shadowed, outcome, 2.0, 2.5, shadow_span, RECORDS, answered_ns)
        before = (plain.batches, shadowed.batches, len(telemetry.finished()))
        await asyncio.sleep(0)
        return (*before[:2], answered_ns)

    plain_before, shadowed_before, answered_ns = asyncio.run(round_of_two())
    assert (plain_before, shadowed_before) == (0, 0)  # nothing counted before the round ends
    assert (plain.batches, shadowed.batches) == (1, 1)
    assert (plain.records, shadowed.shadow_batches, plain.shadow_batches) == (len(RECORDS), 1, 0)
    assert [span.end_time for span in telemetry.finished()] == [answered_ns, answered_ns]
