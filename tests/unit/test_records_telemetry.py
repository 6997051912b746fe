"""RecordsTelemetry: the summary span's status follows the one definition of a normal close
(core.summary); the per-batch path's pre-sampled spans, in-process totals and histogram."""

from __future__ import annotations

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

from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler
from canaryws.core import histogram
from canaryws.core.cohorts import Cohort
from canaryws.core.strategies import STRICT
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


def test_a_batch_drawn_out_costs_no_span_and_a_batch_drawn_in_is_recorded_as_batch() -> None:
    telemetry, exporter = _batch_telemetry(0.25, [0.3, 0.2, 0.25, 0.0])
    spans = [telemetry.start_batch(None) for _ in range(4)]
    assert [span is INVALID_SPAN for span in spans] == [True, False, True, False]
    for span in spans:
        span.end()
    finished = exporter.get_finished_spans()
    assert len(finished) == 2
    assert all(dict(span.attributes or {}) == {"canaryws.span.role": "batch"} for span in finished)


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
    telemetry.start_batch(None).end()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {"canaryws.span.role": "batch"}


def _answered(telemetry: RecordsTelemetry, records: list[Any], seconds: float) -> None:
    outcome = STRICT.process(records, 100)
    telemetry.batch_done(INVALID_SPAN, "b", outcome, outcome.reason_counts(), seconds, "c1")


def test_batch_and_record_totals_reach_the_metrics_at_collection() -> None:
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    _answered(telemetry, ["a", " ", None, "b"], 0.001)
    _answered(telemetry, ["c"], 0.002)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted(dict(point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if metric.name in ("canaryws.batches", "canaryws.records")
    }
    assert points == {
        ("canaryws.batches", (("strategy", "strict"),)): 2,
        ("canaryws.records", (("outcome", "accepted"), ("strategy", "strict"))): 3,
        ("canaryws.records", (("outcome", "rejected"), ("reason", "blank"), ("strategy", "strict"))): 1,
        ("canaryws.records", (("outcome", "rejected"), ("reason", "missing"), ("strategy", "strict"))): 1,
    }


def test_the_in_process_duration_histogram_is_a_prometheus_histogram() -> None:
    registry = CollectorRegistry()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(), duration_registry=registry)
    bound = [ms / 1000 for ms in histogram.BOUNDS_MS]
    # below the first bound, on a bound (le is inclusive), just above it, above the last bound
    for seconds in (bound[0] / 2, bound[10], bound[10], bound[10] * 1.01, 100.0):
        _answered(telemetry, ["a"], seconds)
    text = generate_latest(registry).decode()
    assert 'canaryws_batch_duration_seconds_count{strategy="strict"} 5.0' in text
    total = bound[0] / 2 + 2 * bound[10] + bound[10] * 1.01 + 100.0
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
