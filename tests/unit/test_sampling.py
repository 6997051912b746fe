"""ConnectionSpansSampler: per-connection spans survive ratio sampling, not always_off."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind

from canaryws.adapters.telemetry.sampling import (
    PRESAMPLED_BATCH_ROLE,
    ConnectionSpansSampler,
    root_ratio,
    sampler_from_environ,
)

ROLE = "canaryws.span.role"


def _provider(delegate: Sampler) -> tuple[trace.Tracer, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=ConnectionSpansSampler(delegate), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("test"), memory


def test_ratio_zero_keeps_connect_and_connection_spans_and_drops_batches() -> None:
    tracer, memory = _provider(TraceIdRatioBased(0.0))
    connect = tracer.start_span("records.connect", kind=SpanKind.SERVER, attributes={ROLE: "connect", "x": 1})
    assert connect.is_recording() and connect.get_span_context().trace_flags.sampled
    connect.end()
    links = [Link(connect.get_span_context())]
    for _ in range(20):
        batch = tracer.start_span("records.batch", links=links, attributes={ROLE: "batch"})
        assert not batch.is_recording()
        batch.end()
    tracer.start_span("plain").end()
    tracer.start_span("odd-role", attributes={ROLE: ["connect"]}).end()  # not a str: delegate
    summary = tracer.start_span("records.connection", links=links, attributes={ROLE: "connection"})
    summary.end()

    finished = {span.name: span for span in memory.get_finished_spans()}
    assert set(finished) == {"records.connect", "records.connection"}
    assert dict(finished["records.connect"].attributes or {}) == {ROLE: "connect", "x": 1}


def test_connect_span_is_sampled_even_under_an_unsampled_parent() -> None:
    tracer, memory = _provider(ParentBasedTraceIdRatio(0.0))
    with tracer.start_as_current_span("asgi websocket") as parent:
        assert not parent.is_recording()
        connect = tracer.start_span("records.connect", attributes={ROLE: "connect"})
        connect.end()
    (span,) = memory.get_finished_spans()
    assert span.name == "records.connect"
    assert span.context is not None and span.context.trace_id == parent.get_span_context().trace_id


def test_always_off_samples_nothing_not_even_connection_spans() -> None:
    tracer, memory = _provider(ALWAYS_OFF)
    for role in ("connect", "connection", "batch"):
        span = tracer.start_span(f"records.{role}", attributes={ROLE: role})
        assert not span.is_recording()
        span.end()
    assert memory.get_finished_spans() == ()


def test_other_spans_follow_the_delegate() -> None:
    tracer, memory = _provider(DEFAULT_ON)
    tracer.start_span("records.batch", attributes={ROLE: "batch"}).end()
    tracer.start_span("plain").end()
    assert [span.name for span in memory.get_finished_spans()] == ["records.batch", "plain"]


def test_description_names_both_rules() -> None:
    description = ConnectionSpansSampler(TraceIdRatioBased(0.25)).get_description()
    assert "connect" in description and "connection" in description
    assert TraceIdRatioBased(0.25).get_description() in description
    assert "AlwaysOffSampler" in ConnectionSpansSampler(ALWAYS_OFF).get_description()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, DEFAULT_ON),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, ALWAYS_ON),
        ({"OTEL_TRACES_SAMPLER": "ALWAYS_OFF"}, ALWAYS_OFF),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, DEFAULT_OFF),
    ],
)
def test_sampler_from_environ_fixed_samplers(environ: dict[str, str], expected: Sampler) -> None:
    assert sampler_from_environ(environ) is expected


def test_sampler_from_environ_ratios_and_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    ratio = sampler_from_environ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.125"})
    assert isinstance(ratio, TraceIdRatioBased) and ratio.rate == 0.125
    parent_based = sampler_from_environ(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"}
    )
    assert "0.5" in parent_based.get_description()
    assert isinstance(parent_based, ParentBased)
    with caplog.at_level(logging.WARNING, logger="canaryws.telemetry"):
        bad_arg = sampler_from_environ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"})
        out_of_range = sampler_from_environ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"})
        unknown = sampler_from_environ({"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    assert isinstance(bad_arg, TraceIdRatioBased) and bad_arg.rate == 1.0
    assert isinstance(out_of_range, TraceIdRatioBased) and out_of_range.rate == 1.0
    assert unknown is DEFAULT_ON
    assert len(caplog.records) == 3


@pytest.mark.parametrize(
    ("sampler", "ratio"),
    [
        (ALWAYS_ON, 1.0),
        (DEFAULT_ON, 1.0),
        (ALWAYS_OFF, 0.0),
        (DEFAULT_OFF, 0.0),
        (TraceIdRatioBased(0.01), 0.01),
        (ParentBasedTraceIdRatio(0.25), 0.25),  # reads ParentBased's private _root: pinned here
        (ParentBased(ALWAYS_OFF), 0.0),
    ],
)
def test_root_ratio_of_the_sdk_samplers(sampler: Sampler, ratio: float) -> None:
    assert root_ratio(sampler) == ratio
    assert ConnectionSpansSampler(sampler).batch_ratio == ratio


def test_root_ratio_of_another_sampler_is_unknown() -> None:
    assert root_ratio(ParentBased(DEFAULT_ON, remote_parent_sampled=ALWAYS_OFF)) == 1.0
    assert ConnectionSpansSampler(_Unknown()).batch_ratio is None


class _Unknown(Sampler):
    def should_sample(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError("not called")

    def get_description(self) -> str:
        return "unknown"


def test_a_presampled_batch_span_is_recorded_with_the_batch_role_whatever_the_ratio() -> None:
    tracer, memory = _provider(TraceIdRatioBased(0.0))
    span = tracer.start_span("records.batch", attributes={ROLE: PRESAMPLED_BATCH_ROLE, "x": 1})
    assert span.is_recording()
    span.end()
    (finished,) = memory.get_finished_spans()
    assert dict(finished.attributes or {}) == {ROLE: "batch", "x": 1}


def test_tracing_off_records_no_presampled_batch_either() -> None:
    tracer, memory = _provider(ALWAYS_OFF)
    tracer.start_span("records.batch", attributes={ROLE: PRESAMPLED_BATCH_ROLE}).end()
    assert memory.get_finished_spans() == ()
