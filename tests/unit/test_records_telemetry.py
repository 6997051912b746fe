"""The summary span's status follows the one definition of a normal close (core.summary)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.core.cohorts import Cohort
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
