"""The connect and connection spans made without the SDK's per-span work (connection_spans.py)
reach the exporters as the SDK's own spans would: the same everything but the random ids.
Each case runs the same calls twice, once on the direct path and once through
``Tracer.start_span`` (a span limit, which changes nothing here, sends the spans that way)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, TraceIdRatioBased
from opentelemetry.trace import SpanContext, StatusCode, TraceFlags

from canaryws.adapters.telemetry.connection_spans import ConnectionSpans, RecordedSpan
from canaryws.adapters.telemetry.otlp_json_encoder import _encode_span
from canaryws.adapters.telemetry.records import CurrentSpan, RecordsTelemetry, record_failure
from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler
from canaryws.core.cohorts import Cohort, FlagEvaluation
from canaryws.core.summary import END_CLOSED, ConnectionSummary

COHORT = Cohort("strict", 1, False, "r7")
EVALUATIONS = (FlagEvaluation("records.strict", True, True, "on", "split", "r7"),
               FlagEvaluation("records.shadow", False, True, "off", "disabled", "r7"))
PARENT = (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
STATE = (b"tracestate", b"vendor=abc,other=1")


class Pair:
    """Two telemetries on two providers alike but for the path their connection spans take."""

    def __init__(self) -> None:
        resource = Resource.create({"service.name": "canaryws-test"})
        self.direct, self.direct_spans = self._telemetry(resource, None)
        # a length limit far above any value here: the SDK path, the same spans
        self.sdk, self.sdk_spans = self._telemetry(resource, SpanLimits(max_attribute_length=100_000))
        assert self.direct._connection_spans is not None
        assert self.sdk._connection_spans is None

    @staticmethod
    def _telemetry(resource: Resource, limits: SpanLimits | None) -> tuple[RecordsTelemetry, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=ConnectionSpansSampler(TraceIdRatioBased(0.01)), resource=resource,
                                  span_limits=limits)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return RecordsTelemetry(provider, MeterProvider()), exporter

    def both(self) -> Iterator[RecordsTelemetry]:
        yield self.direct
        yield self.sdk

    def finished(self) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
        return list(self.direct_spans.get_finished_spans()), list(self.sdk_spans.get_finished_spans())


def comparable(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter sees but the random ids (and the times the clock gave)."""
    encoded = _encode_span(span)
    context = span.get_span_context()
    assert context is not None
    for key in ("spanId", "startTimeUnixNano", "endTimeUnixNano"):
        encoded.pop(key, None)
    if span.parent is None:
        encoded.pop("traceId")
    for event in encoded.get("events", []):
        event.pop("timeUnixNano")
        for kv in event.get("attributes", []):
            if kv["key"] == "exception.stacktrace":
                kv["value"] = {"stringValue": "(a stack)"}
    return {
        "otlp": encoded,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events if e.name != "exception"],
        "flags": int(context.trace_flags),
        "remote": context.is_remote,
        "state": context.trace_state.to_header(),
        "parent": span.parent,
        "kind": span.kind,
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def connect(telemetry: RecordsTelemetry, headers: list[tuple[bytes, bytes]], *, fail: bool = False) -> None:
    span = telemetry.start_connect("conn-1", "client-1", headers, "1.2.3", synthetic=True)
    with pytest.raises(ConnectionResetError) if fail else _nothing(), trace.use_span(span, end_on_exit=True):
        assert trace.get_current_span() is span  # current: log lines carry its ids
        telemetry.record_evaluations(span, EVALUATIONS, "client-1")
        telemetry.set_cohort(span, COHORT)
        if fail:
            raise ConnectionResetError("the peer left")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


@pytest.mark.parametrize("headers", [[], [PARENT], [PARENT, STATE]], ids=["root", "traceparent", "tracestate"])
def test_the_connect_span_is_the_sdks(headers: list[tuple[bytes, bytes]]) -> None:
    pair = Pair()
    for telemetry in pair.both():
        connect(telemetry, headers)
    (direct,), (sdk,) = pair.finished()
    assert isinstance(direct, RecordedSpan)
    assert not isinstance(sdk, RecordedSpan)
    assert comparable(direct) == comparable(sdk)
    context = direct.get_span_context()
    assert context is not None and context.trace_flags.sampled
    if headers:
        assert context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
        assert direct.parent is not None and direct.parent.span_id == 0xb7ad6b7169203331
        assert direct.parent.is_remote
    assert dict(direct.attributes or {})["canaryws.strategy"] == "strict"
    assert [e.name for e in direct.events] == ["feature_flag.evaluation"] * 2


def test_a_connect_span_the_handshake_failed_in_records_the_exception_as_the_sdk_does() -> None:
    pair = Pair()
    for telemetry in pair.both():
        connect(telemetry, [], fail=True)
    (direct,), (sdk,) = pair.finished()
    assert comparable(direct) == comparable(sdk)
    assert direct.status.status_code is StatusCode.ERROR
    assert direct.status.description == "ConnectionResetError: the peer left"
    (exception,) = [e for e in direct.events if e.name == "exception"]
    (expected,) = [e for e in sdk.events if e.name == "exception"]
    attributes = dict(exception.attributes or {})
    assert attributes.keys() == dict(expected.attributes or {}).keys()
    assert attributes["exception.type"] == "ConnectionResetError"
    assert "the peer left" in str(attributes["exception.stacktrace"])


@pytest.mark.parametrize("failure", [ConnectionResetError("the peer left"), None], ids=["failed", "fine"])
def test_the_endpoints_current_span_is_use_spans(failure: Exception | None) -> None:
    """The endpoint makes its connect span current with :class:`CurrentSpan`, not
    ``trace.use_span``: the same span, current inside, ended after, a failure recorded alike."""
    spans = []
    for scope in (lambda span: trace.use_span(span, end_on_exit=True), CurrentSpan):
        pair = Pair()
        span = pair.direct.start_connect("conn-1", "client-1", [], "1.2.3")
        with pytest.raises(ConnectionResetError) if failure else _nothing(), scope(span) as current:
            assert current is span and trace.get_current_span() is span
            if failure is not None:
                raise failure
        assert trace.get_current_span() is not span
        (finished,), _ = pair.finished()
        spans.append(finished)
    assert comparable(spans[0]) == comparable(spans[1])
    assert (spans[1].status.status_code is StatusCode.ERROR) == (failure is not None)
    assert [e.name for e in spans[1].events] == (["exception"] if failure else [])
    record_failure(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT), ValueError("x"))  # nothing to record on


@pytest.mark.parametrize("code", [1000, 1006])
def test_the_summary_span_is_the_sdks(code: int) -> None:
    pair = Pair()
    link = SpanContext(0x1234, 0x5678, False, TraceFlags(TraceFlags.SAMPLED))
    for telemetry in pair.both():
        summary = ConnectionSummary.opening("conn-1", "client-1", COHORT, 0.25)
        summary.batches, summary.latency[3], summary.latency_sum_s = 2, 2, 0.004
        summary.end, summary.close_code = END_CLOSED, code
        telemetry.emit_summary(summary, 1_000_000, 5_000_000, link)
    (direct,), (sdk,) = pair.finished()
    assert comparable(direct) == comparable(sdk)
    assert (direct.start_time, direct.end_time) == (sdk.start_time, sdk.end_time) == (1_000_000, 5_000_000)
    assert [lk.context for lk in direct.links] == [link]
    buckets = dict(direct.attributes or {})["canaryws.connection.latency.buckets"]
    assert isinstance(buckets, tuple) and buckets[3] == 2
    assert ConnectionSummary.from_attributes(direct.attributes or {}).close_code == code


def test_a_span_changes_nothing_once_ended_and_ends_once() -> None:
    pair = Pair()
    span = pair.direct.start_connect("conn-1", "client-1")
    span.end()
    span.set_attribute("late", 1)
    span.set_attributes({"later": 2})
    span.add_event("late")
    span.set_status(StatusCode.ERROR, "late")
    span.update_name("late")
    span.end()
    (ended,), _ = pair.finished()
    assert ended.name == "records.connect"
    assert "late" not in dict(ended.attributes or {}) and not ended.events
    assert ended.status.status_code is StatusCode.UNSET
    assert not span.is_recording()


def test_status_ok_is_final_and_unset_is_ignored_as_in_the_sdk() -> None:
    pair = Pair()
    span = pair.direct.start_connect("conn-1", "client-1")
    assert isinstance(span, RecordedSpan)
    span.set_status(StatusCode.UNSET)
    codes = [span.status.status_code]
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "after OK")
    codes.append(span.status.status_code)
    assert codes == [StatusCode.UNSET, StatusCode.OK]


def _tracer(sampler: Any = None, limits: SpanLimits | None = None) -> trace.Tracer:
    provider = TracerProvider(sampler=sampler, span_limits=limits)
    return provider.get_tracer("canaryws.records")


def test_only_where_the_sdk_would_record_them_unchanged() -> None:
    recording = ConnectionSpansSampler(TraceIdRatioBased(0.01))
    assert ConnectionSpans.of(_tracer(recording)) is not None
    assert ConnectionSpans.of(trace.NoOpTracer()) is None  # OTEL_SDK_DISABLED
    assert ConnectionSpans.of(_tracer(ALWAYS_ON)) is None  # another sampler decides
    assert ConnectionSpans.of(_tracer(ConnectionSpansSampler(ALWAYS_OFF))) is None  # tracing off: no spans
    for limits in (SpanLimits(max_attribute_length=64), SpanLimits(max_span_attribute_length=64),
                   SpanLimits(max_span_attributes=20), SpanLimits(max_events=5), SpanLimits(max_event_attributes=4)):
        assert ConnectionSpans.of(_tracer(recording, limits)) is None


def test_the_sdk_internals_it_reads_are_there() -> None:
    # ConnectionSpans reads the SDK tracer's private scope, limits and enabled flag: an SDK
    # upgrade that moves them fails here, not in production.
    tracer = _tracer(ConnectionSpansSampler(TraceIdRatioBased(0.01)))
    assert isinstance(tracer, Tracer)
    assert tracer._instrumentation_scope.name == "canaryws.records"
    assert isinstance(tracer._span_limits, SpanLimits)
    assert tracer._is_enabled() is True


def test_connection_metrics_are_counted_and_read_at_collection() -> None:
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(TracerProvider(), MeterProvider(metric_readers=[reader]))
    lenient = Cohort("lenient", 1, False, "r7")
    for synthetic in (False, True, False):
        telemetry.opened(COHORT, synthetic=synthetic)
    telemetry.cohort_changed(COHORT, lenient)
    summary = ConnectionSummary.opening("conn-1", "client-1", COHORT, 0.25)
    telemetry.closed(summary, 1000)
    telemetry.closed(summary, 4999)

    data = reader.get_metrics_data()
    assert data is not None
    points: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    points[metric.name, tuple(sorted((point.attributes or {}).items()))] = point.value
    strict, other = (("strategy", "strict"),), (("strategy", "lenient"),)
    assert points["canaryws.connections.opened", strict] == 3
    assert points["canaryws.synthetic.connections", strict] == 1
    assert points["canaryws.connections.active", strict] == 0  # 3 opened, 1 moved, 2 closed
    assert points["canaryws.connections.active", other] == 1
    assert points["canaryws.connections.closed", (("code", "1000"), *strict)] == 1
    assert points["canaryws.connections.closed", (("code", "other"), *strict)] == 1
    assert points["canaryws.cohort.changes", (("from", "strict"), ("to", "lenient"))] == 1
