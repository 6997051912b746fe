"""Synthetic connections (a probe's: token property ``synthetic=true``): marked on their spans,
and left out of the cohort comparison, counted apart, by the report's judge and by the guard."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from canaryws.adapters.telemetry.otlp_json_encoder import encode_otlp_json
from canaryws.adapters.telemetry.otlp_json_reader import parse_otlp_json_line
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.analysis.guard import Guard
from canaryws.analysis.judge import Rules, judge
from canaryws.analysis.render.html import render_html
from canaryws.analysis.render.terminal import render_terminal
from canaryws.analysis.units import build_units, left_out, summaries
from canaryws.core import histogram
from canaryws.core.cohorts import Cohort
from canaryws.core.summary import A_SYNTHETIC, END_CLOSED, END_COHORT_CHANGED, ConnectionSummary, is_synthetic

S = 1_000_000_000
STRICT = Cohort("strict", 1, False, "r1")
LENIENT = Cohort("lenient", 1, False, "r1")


# -- the summary's attribute ----------------------------------------------------------------


def _closed(synthetic: bool, cohort: Cohort = STRICT, connection: str = "c1", client: str = "client-1",
            close_code: int = 1000, share: float | None = 0.5, batches: int = 20) -> ConnectionSummary:
    summary = ConnectionSummary.opening(connection, client, cohort, share, synthetic=synthetic)
    summary.end, summary.close_code = END_CLOSED, close_code
    summary.batches = summary.records = summary.accepted = batches
    summary.latency[histogram.bucket_of(5.0)] += batches
    return summary


@pytest.mark.parametrize("synthetic", [True, False])
def test_the_summary_round_trip_keeps_synthetic(synthetic: bool) -> None:
    summary = _closed(synthetic)
    attrs = summary.to_attributes()
    assert attrs.get(A_SYNTHETIC) is (True if synthetic else None)  # written only when true
    back = ConnectionSummary.from_attributes(attrs)
    assert back.synthetic is synthetic
    assert back == summary


def test_an_old_summary_without_the_attribute_is_not_synthetic() -> None:
    attrs = _closed(False).to_attributes()
    assert A_SYNTHETIC not in attrs
    assert ConnectionSummary.from_attributes(attrs).synthetic is False
    assert ConnectionSummary.from_attributes({**attrs, A_SYNTHETIC: False}).synthetic is False
    assert ConnectionSummary.from_attributes({**attrs, A_SYNTHETIC: "true"}).synthetic is True


def test_the_next_slice_of_a_synthetic_connection_is_synthetic() -> None:
    first = ConnectionSummary.opening("c1", "probe", STRICT, 0.5, synthetic=True)
    assert first.next_slice(LENIENT, 0.5).synthetic
    assert not ConnectionSummary.opening("c2", "client", STRICT, 0.5).next_slice(LENIENT, 0.5).synthetic


@pytest.mark.parametrize(("properties", "expected"), [
    ({"synthetic": "true"}, True),
    ({"synthetic": "true", "clientVersion": "2.4.1"}, True),
    ({"synthetic": "false"}, False),
    ({"synthetic": "yes"}, False),
    ({"clientVersion": "2.4.1"}, False),
    ({}, False),
])
def test_a_connection_is_synthetic_when_its_verified_property_says_true(properties: dict[str, str],
                                                                        expected: bool) -> None:
    assert is_synthetic(properties) is expected


# -- the service's spans and metric ---------------------------------------------------------


def test_the_connect_batch_and_summary_spans_of_a_synthetic_connection_carry_the_attribute() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    telemetry = RecordsTelemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    for synthetic, connection in ((True, "probe-conn"), (False, "client-conn")):
        telemetry.start_connect(connection, "someone", synthetic=synthetic).end()
        telemetry.start_batch(None, synthetic).end()
        telemetry.opened(STRICT, synthetic=synthetic)
        telemetry.emit_summary(_closed(synthetic, connection=connection), 1_000, 2_000, None)
    spans = exporter.get_finished_spans()
    marked = [(span.name, (span.attributes or {}).get(A_SYNTHETIC)) for span in spans]
    assert marked == [("records.connect", True), ("records.batch", True), ("records.connection", True),
                      ("records.connect", None), ("records.batch", None), ("records.connection", None)]

    data = reader.get_metrics_data()
    points = {metric.name: [(dict(p.attributes or {}), p.value) for p in metric.data.data_points]
              for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics}
    assert points["canaryws.synthetic.connections"] == [({"strategy": "strict"}, 1)]
    assert points["canaryws.connections.opened"] == [({"strategy": "strict"}, 2)]  # probes are connections too


def test_the_attribute_survives_the_trace_file_format() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = RecordsTelemetry(tracer_provider, MeterProvider())
    telemetry.emit_summary(_closed(True, connection="p"), 1_000, 2_000, None)
    telemetry.emit_summary(_closed(False, connection="c"), 1_000, 2_000, None)
    line = json.dumps(encode_otlp_json(exporter.get_finished_spans()))
    read = {s.connection_id: s.synthetic for s, _, _ in summaries(parse_otlp_json_line(line))}
    assert read == {"p": True, "c": False}


# -- the report's judge ---------------------------------------------------------------------


def _slices(strategy: Cohort, n: int, *, prefix: str, synthetic: bool = False, close_code: int = 1000,
            start: int = 0) -> list[tuple[ConnectionSummary, int, int]]:
    return [(_closed(synthetic, strategy, f"{prefix}-{i}", f"{prefix}-client-{i}", close_code), (start + i) * S,
             (start + i) * S + S // 2) for i in range(n)]


HEALTHY = _slices(STRICT, 40, prefix="s") + _slices(LENIENT, 40, prefix="l")
# A probe whose strict connections all break (a probe that tests failure paths, say): were it
# compared, strict would look harmful.
PROBE = _slices(STRICT, 30, prefix="probe-s", synthetic=True, close_code=1011) + _slices(
    LENIENT, 5, prefix="probe-l", synthetic=True)
SMALL = Rules(detect_excess=0.9)


def _as_clients(slices: list[tuple[ConnectionSummary, int, int]]) -> list[tuple[ConnectionSummary, int, int]]:
    """The same slices, not synthetic."""
    out = []
    for summary, start, end in slices:
        attrs = summary.to_attributes()
        attrs.pop(A_SYNTHETIC, None)
        out.append((ConnectionSummary.from_attributes(attrs), start, end))
    return out


def test_the_judge_leaves_synthetic_connections_out_and_counts_them() -> None:
    report = judge(build_units(HEALTHY + PROBE), SMALL)
    assert report["verdict"] == "promote", report["reasons"]
    assert report["synthetic"] == {"connections": 35, "strict": 30, "lenient": 5}
    assert (report["cohorts"]["strict"]["connections"], report["cohorts"]["lenient"]["connections"]) == (40, 40)
    assert report["cohorts"]["strict"]["abnormal_closes"] == 0
    assert (report["srm"]["strict_clients"], report["srm"]["lenient_clients"]) == (40, 40)
    assert all(m["strict"]["n"] == 40 for m in report["metrics"] if m.get("test") == "rate-ratio")
    json.dumps(report, allow_nan=False)

    # the control: the same connections, not synthetic, are judged, and they would roll back
    compared = judge(build_units(HEALTHY + _as_clients(PROBE)), SMALL)
    assert compared["verdict"] == "rollback"
    assert compared["synthetic"] == {"connections": 0, "strict": 0, "lenient": 0}
    assert compared["cohorts"]["strict"]["connections"] == 70


def test_a_synthetic_connection_that_changed_cohort_counts_once_in_all() -> None:
    first = ConnectionSummary.opening("p", "probe", STRICT, 0.5, synthetic=True)
    first.end = END_COHORT_CHANGED
    second = first.next_slice(LENIENT, 0.5)
    second.end, second.close_code = END_CLOSED, 1000
    units = build_units([(first, 0, S), (second, S, 2 * S)])
    judged, count = left_out(units, ("strict", "lenient"))
    assert judged == [] and count.to_dict() == {"connections": 1, "strict": 1, "lenient": 1}


def test_the_report_shows_the_count_in_the_terminal_and_the_page() -> None:
    report = judge(build_units(HEALTHY + PROBE), SMALL)
    console = Console(width=80, record=True, color_system=None)
    render_terminal(report, console)
    line = "Synthetic connections left out: 35 (strict 30, lenient 5)"
    assert line in console.export_text()
    assert f'<p class="meta" id="synthetic">{line}</p>' in render_html(report)


def test_a_report_without_the_count_renders_without_the_line() -> None:
    report: dict[str, Any] = judge(build_units(HEALTHY), SMALL)
    del report["synthetic"]
    console = Console(width=80, record=True, color_system=None)
    render_terminal(report, console)
    assert "Synthetic" not in console.export_text() and 'id="synthetic"' not in render_html(report)


# -- the guard ------------------------------------------------------------------------------


def test_the_guard_leaves_synthetic_connections_out_and_counts_them() -> None:
    rules = Rules(min_connections=1, min_batches=0)
    guard = Guard(rules)
    guard.add_slices(HEALTHY + PROBE)
    result = guard.judge(100 * S)
    assert result["verdict"] != "rollback", result["reasons"]
    assert result["connections"] == {"strict": 40, "lenient": 40}
    assert result["synthetic"] == {"connections": 35, "strict": 30, "lenient": 5}

    control = Guard(rules)
    control.add_slices(HEALTHY + _as_clients(PROBE))
    assert control.judge(100 * S)["verdict"] == "rollback"


def test_a_synthetic_connection_under_another_share_starts_no_stage() -> None:
    guard = Guard(Rules(min_connections=1, min_batches=0))
    guard.add_slices(HEALTHY)
    probe = _closed(True, STRICT, "probe", "probe-client", share=0.1)
    guard.add_slices([(probe, 200 * S, 201 * S)])
    result = guard.judge(300 * S)
    assert result["stage"]["number"] == 1 and result["stage"]["strict_share"] == 0.5
    assert result["synthetic"]["connections"] == 1
