"""RecordsTelemetry: the summary span's status follows the one definition of a normal close
(core.summary); the per-batch path's pre-sampled spans, in-process totals and histogram."""

from __future__ import annotations

import itertools
import random
import statistics
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import INVALID_SPAN, StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from canaryws.adapters.telemetry.flags import FlagsTelemetry
from canaryws.adapters.telemetry.records import NEVER, RecordsTelemetry
from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler
from canaryws.core import histogram
from canaryws.core.cohorts import Cohort
from canaryws.core.compare import compare
from canaryws.core.strategies import LENIENT, STRICT
from canaryws.core.summary import NORMAL_CLOSE_CODES, ConnectionSummary


@pytest.mark.parametrize("code", [*sorted(NORMAL_CLOSE_CODES), 1003, 1006, 1008, 1009, 1011, 4400])
def test_summary_span_is_an_error_only_for_abnormal_closes(code: int) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = RecordsTelemetry(tracer_provider, MeterProvider())
    summary = ConnectionSummary.opening("c1", "client-1", Cohort("strict", 1, False, "r1"), 0.5)
    summary.close_code = code
    telemetry.emit_summary(summary, 1_000, 2_000, None)
    (span,) = exporter.get_finished_spans()
    expected = StatusCode.UNSET if code in NORMAL_CLOSE_CODES else StatusCode.ERROR
    assert span.status.status_code == expected


# -- the per-batch path: pre-sampled batch spans, in-process totals and histogram ------------


def _batch_telemetry(ratio: float, draws: list[float]) -> tuple[RecordsTelemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ConnectionSpansSampler(TraceIdRatioBased(ratio)))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    values = iter(draws)
    return RecordsTelemetry(tracer_provider, MeterProvider(), rng=lambda: next(values)), exporter


def test_the_batch_gap_is_a_geometric_draw_and_the_span_it_selects_is_recorded_as_batch() -> None:
    # gap = floor(log(1 - u) / log(1 - ratio)): u = 0 samples the next batch; 1 - u = 0.75^k gives k.
    telemetry, exporter = _batch_telemetry(0.25, [0.0, 1 - 0.75**3 + 1e-9, 1 - 0.75**3 - 1e-9])
    assert [telemetry.batch_gap() for _ in range(3)] == [0, 3, 2]
    telemetry.start_batch(None).end()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"canaryws.span.role": "batch"}


def test_counting_down_the_gaps_samples_each_batch_with_the_ratio() -> None:
    rng = random.Random(7)
    telemetry, _ = _batch_telemetry(0.01, [rng.random() for _ in range(20_000)])
    sampled, gap, batches = [], telemetry.batch_gap(), 200_000
    for i in range(batches):  # what the batch loop does
        if gap:
            gap -= 1
        else:
            sampled.append(i)
            gap = telemetry.batch_gap()
    share = len(sampled) / batches
    assert abs(share - 0.01) < 0.001  # about 2000 sampled: ±4.5 standard deviations
    gaps = [b - a - 1 for a, b in itertools.pairwise(sampled)]
    assert abs(statistics.fmean(gaps) - 99) < 5  # geometric: mean (1 - p) / p
    assert sum(g == 0 for g in gaps) / len(gaps) == pytest.approx(0.01, abs=0.006)  # P(gap = 0) = p


@pytest.mark.parametrize(("ratio", "gap"), [(1.0, 0), (0.0, NEVER)])
def test_the_batch_gap_of_all_or_nothing_needs_no_draw(ratio: float, gap: int) -> None:
    telemetry, _ = _batch_telemetry(ratio, [])
    assert telemetry.batch_gap() == gap


def test_batch_spans_follow_the_delegate_when_its_ratio_is_unknown() -> None:
    class Custom(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

        def get_description(self) -> str:
            return "custom"

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ConnectionSpansSampler(Custom()))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = RecordsTelemetry(tracer_provider, MeterProvider(), rng=lambda: pytest.fail("no draw expected"))
    assert telemetry.batch_gap() == 0  # every batch gets a span, for the sampler to decide
    telemetry.start_batch(None).end()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"canaryws.span.role": "batch"}


def _summary(strategy: str, batches: list[tuple[list[Any], float]]) -> ConnectionSummary:
    summary = ConnectionSummary.opening("c", "client", Cohort(strategy, 1, False, "r1"), 1.0)
    for records, seconds in batches:
        outcome = (STRICT if strategy == "strict" else LENIENT).process(records, 100)
        summary.add(outcome, seconds)
    return summary


def _points(reader: InMemoryMetricReader, names: tuple[str, ...] = ("canaryws.batches", "canaryws.records")
            ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, tuple(sorted(dict(point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if metric.name in names
    }


def test_batch_metrics_are_the_retired_slices_plus_the_open_ones_and_never_step_back() -> None:
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    open_slices = [_summary("strict", [(["a", " ", None, "b"], 0.001)]), _summary("lenient", [(["c", ""], 0.002)])]
    telemetry.totals.track(lambda: list(open_slices))
    first = _points(reader)
    assert first == {
        ("canaryws.batches", (("strategy", "strict"),)): 1,
        ("canaryws.batches", (("strategy", "lenient"),)): 1,
        ("canaryws.records", (("outcome", "accepted"), ("strategy", "strict"))): 2,
        ("canaryws.records", (("outcome", "rejected"), ("reason", "blank"), ("strategy", "strict"))): 1,
        ("canaryws.records", (("outcome", "rejected"), ("reason", "missing"), ("strategy", "strict"))): 1,
        ("canaryws.records", (("outcome", "accepted"), ("strategy", "lenient"))): 1,
        ("canaryws.records", (("outcome", "skipped"), ("reason", "empty"), ("strategy", "lenient"))): 1,
    }
    # the strict slice ends (retired, and replaced by an empty one) while the lenient one goes on
    with telemetry.totals.lock:
        telemetry.totals.retire(open_slices[0])
        open_slices[0] = _summary("strict", [])
    lenient = open_slices[1]
    outcome = LENIENT.process(["d"], 100)
    lenient.add(outcome, 0.001)
    second = _points(reader)
    assert second[("canaryws.batches", (("strategy", "strict"),))] == 1  # not lost, not doubled
    assert second[("canaryws.batches", (("strategy", "lenient"),))] == 2
    assert all(second[key] >= value for key, value in first.items())


def test_shadow_metrics_are_the_retired_slices_plus_the_open_ones_and_never_step_back() -> None:
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    names = ("canaryws.shadow.batches", "canaryws.shadow.records", "canaryws.shadow.divergent",
             "canaryws.shadow.work")

    def shadowed(strategy: str, batches: list[list[Any]]) -> ConnectionSummary:
        summary = ConnectionSummary.opening("c", "client", Cohort(strategy, 1, True, "r1"), 1.0)
        for records in batches:
            primary, other = (STRICT, LENIENT) if strategy == "strict" else (LENIENT, STRICT)
            summary.add_shadow(compare(primary.process(records, 3), other.process(records, 3)), 0.25)
        return summary

    open_slices = [shadowed("strict", [["a", "b\x01"], ["toolong"]]), shadowed("lenient", [["c"]]),
                   shadowed("strict", [])]  # a connection with no comparison yet adds nothing
    telemetry.totals.track(lambda: list(open_slices))
    strict = (("shadow_strategy", "lenient"), ("strategy", "strict"))
    lenient = (("shadow_strategy", "strict"), ("strategy", "lenient"))
    first = _points(reader, names)
    assert first == {
        ("canaryws.shadow.batches", strict): 2,
        ("canaryws.shadow.records", strict): 3,
        ("canaryws.shadow.work", strict): 0.5,
        ("canaryws.shadow.divergent", (("kind", "accepted_by_lenient_only"), ("reason", "control_character"),
                                       *strict)): 1,
        ("canaryws.shadow.divergent", (("kind", "accepted_by_lenient_only"), ("reason", "too_long"), *strict)): 1,
        ("canaryws.shadow.batches", lenient): 1,
        ("canaryws.shadow.records", lenient): 1,
        ("canaryws.shadow.work", lenient): 0.25,
    }
    # the strict slice ends (retired, replaced by an empty one), then both connections go on
    with telemetry.totals.lock:
        telemetry.totals.retire(open_slices[0])
        open_slices[0] = shadowed("strict", [])
    open_slices[0].add_shadow(compare(STRICT.process(["\x02"], 3), LENIENT.process(["\x02"], 3)), 0.25)
    open_slices[1].add_shadow(compare(LENIENT.process(["d"], 3), STRICT.process(["d"], 3)), 0.25)
    second = _points(reader, names)
    assert second[("canaryws.shadow.batches", strict)] == 3  # not lost, not doubled
    assert second[("canaryws.shadow.divergent", (("kind", "accepted_by_lenient_only"),
                                                 ("reason", "control_character"), *strict))] == 2
    assert second[("canaryws.shadow.batches", lenient)] == 2
    assert all(second[key] >= value for key, value in first.items())


def test_the_duration_histogram_is_a_prometheus_histogram_of_the_summaries_buckets() -> None:
    registry = CollectorRegistry()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(), duration_registry=registry)
    bound = [ms / 1000 for ms in histogram.BOUNDS_MS]
    # below the first bound, on a bound (le is inclusive), just above it, above the last bound
    seconds = (bound[0] / 2, bound[10], bound[10], bound[10] * 1.01, 100.0)
    retired = _summary("strict", [(["a"], value) for value in seconds[:3]])
    live = _summary("strict", [(["a"], value) for value in seconds[3:]])
    telemetry.totals.track(lambda: [live])
    with telemetry.totals.lock:
        telemetry.totals.retire(retired)
    text = generate_latest(registry).decode()
    assert 'canaryws_batch_duration_seconds_count{strategy="strict"} 5.0' in text
    total = sum(seconds[:3]) + sum(seconds[3:])
    assert f'canaryws_batch_duration_seconds_sum{{strategy="strict"}} {total!r}' in text
    buckets = {
        float(line.split('le="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("canaryws_batch_duration_seconds_bucket")
    }
    assert sorted(buckets) == [*bound, float("inf")]
    assert buckets[bound[0]] == 1 and buckets[bound[9]] == 1
    assert buckets[bound[10]] == 3 and buckets[bound[11]] == 4
    assert buckets[bound[-1]] == 4 and buckets[float("inf")] == 5


def test_with_otlp_metrics_the_duration_is_the_sdks_histogram_recorded_per_batch() -> None:
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    outcome = STRICT.process(["a"], 100)
    telemetry.batch_done(INVALID_SPAN, "b", outcome, 0.004, "c1")
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = [point for resource in data.resource_metrics for scope in resource.scope_metrics
                for metric in scope.metrics if metric.name == "canaryws.batch.duration"
                for point in metric.data.data_points]
    assert point.count == 1 and point.sum == 0.004


def test_the_strict_share_gauge_follows_the_flags_and_is_absent_when_unknown() -> None:
    reader = InMemoryMetricReader()
    share: list[float | None] = [0.25]
    FlagsTelemetry(MeterProvider(metric_readers=[reader]), lambda: {"source": "unleash"}, lambda: share[0])
    gauge = ("canaryws.flags.strict_share",)
    assert _points(reader, gauge)[(gauge[0], (("source", "unleash"),))] == 0.25
    share[0] = 1.0  # a ramp to 100 %, read at the next collection
    assert _points(reader, gauge)[(gauge[0], (("source", "unleash"),))] == 1.0
    share[0] = None  # a split that depends on more than the client id: no point at all
    assert _points(reader, gauge) == {}
