"""setup_telemetry: OTEL_* from an explicit mapping, exporters, metrics, isolation."""

from __future__ import annotations

import http.server
import logging
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import prometheus_client
import prometheus_client.parser
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from canaryws.adapters.telemetry.environment import TraceFileLimits, trace_file_limits
from canaryws.adapters.telemetry.export_health import MonitoredBatchSpanProcessor, SpanExportMonitor
from canaryws.adapters.telemetry.file_exporter import DEFAULT_MAX_BYTES
from canaryws.adapters.telemetry.otlp_json_reader import read_otlp_json_lines
from canaryws.adapters.telemetry.providers import TelemetryProviders, setup_telemetry

ROLE = "canaryws.span.role"


class Make(Protocol):
    def __call__(self, environ: Mapping[str, str] | None = None, *, service_name: str = ...) -> TelemetryProviders: ...


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """setup_telemetry with a fresh data dir; everything built is shut down afterwards."""
    built: list[TelemetryProviders] = []

    def _make(environ: Mapping[str, str] | None = None, *, service_name: str = "canaryws") -> TelemetryProviders:
        data_dir = tmp_path / f"data{len(built)}"
        telemetry = setup_telemetry(
            data_dir=data_dir, service_name=service_name, environ={} if environ is None else environ
        )
        built.append(telemetry)
        return telemetry

    yield _make
    for telemetry in built:
        telemetry.shutdown()


def _emit(telemetry: TelemetryProviders) -> None:
    tracer = telemetry.tracer_provider.get_tracer("canaryws.test")
    tracer.start_span("records.connect", kind=SpanKind.SERVER, attributes={ROLE: "connect"}).end()
    for _ in range(10):
        tracer.start_span("records.batch", kind=SpanKind.SERVER, attributes={ROLE: "batch"}).end()


def _file_spans(telemetry: TelemetryProviders) -> list[dict[str, Any]]:
    assert telemetry.trace_file is not None
    return list(read_otlp_json_lines(telemetry.trace_file))


def test_default_exports_to_the_trace_file_in_the_data_dir(make: Make) -> None:
    telemetry = make()
    assert telemetry.trace_exporter_kind == "file"
    assert telemetry.trace_file is not None and telemetry.trace_file.name == "traces.jsonl"
    assert telemetry.file_exporter is not None and telemetry.file_exporter.path == telemetry.trace_file
    assert telemetry.otlp_traces_endpoint is None
    _emit(telemetry)
    assert telemetry.shutdown()  # drains the batch processor
    spans = _file_spans(telemetry)
    assert [span["name"] for span in spans].count("records.batch") == 10
    assert {span["resource"]["service.name"] for span in spans} == {"canaryws"}
    assert telemetry.shutdown()  # a second call is harmless


def test_service_name_and_resource_attributes_from_the_environment(make: Make) -> None:
    telemetry = make(
        {
            "OTEL_SERVICE_NAME": "canaryws-blue",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging, service.name=ignored,team=a%20b",
        }
    )
    attributes = telemetry.tracer_provider.resource.attributes
    assert attributes["service.name"] == "canaryws-blue"
    assert attributes["deployment.environment"] == "staging"
    assert attributes["team"] == "a b"
    telemetry.meter_provider.get_meter("m").create_counter("canaryws.any").add(1)
    text = telemetry.metrics_text()[0].decode()
    assert 'service_name="canaryws-blue"' in text  # target_info carries the resource

    named = make({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, service_name="arg")
    assert named.tracer_provider.resource.attributes["service.name"] == "from-attrs"
    assert make(service_name="arg").tracer_provider.resource.attributes["service.name"] == "arg"


def test_ratio_zero_keeps_connection_spans_only(make: Make) -> None:
    telemetry = make({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    _emit(telemetry)
    telemetry.shutdown()
    assert [span["name"] for span in _file_spans(telemetry)] == ["records.connect"]


def test_always_off_is_respected(make: Make) -> None:
    telemetry = make({"OTEL_TRACES_SAMPLER": "always_off"})
    span = telemetry.tracer_provider.get_tracer("t").start_span("records.connect", attributes={ROLE: "connect"})
    assert not span.is_recording()
    span.end()
    _emit(telemetry)
    telemetry.shutdown()
    assert _file_spans(telemetry) == []


def test_an_explicit_mapping_wins_over_os_environ(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "not-a-number")
    telemetry = make({})
    assert telemetry.trace_exporter_kind == "file"
    assert telemetry.tracer_provider.get_tracer("t").start_span("x").is_recording()


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-os-environ")
    telemetry = setup_telemetry(data_dir=tmp_path)
    try:
        assert telemetry.trace_exporter_kind == "none"
        assert telemetry.tracer_provider.resource.attributes["service.name"] == "from-os-environ"
    finally:
        telemetry.shutdown()


def test_otlp_endpoint_selects_the_otlp_exporter(make: Make, tmp_path: Path) -> None:
    telemetry = make({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9/"})
    assert telemetry.trace_exporter_kind == "otlp"
    assert telemetry.otlp_traces_endpoint == "http://127.0.0.1:9/v1/traces"
    assert telemetry.trace_file is None and telemetry.file_exporter is None
    assert not any(tmp_path.rglob("traces.jsonl"))

    specific = make({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom/path"})
    assert specific.trace_exporter_kind == "otlp"
    assert specific.otlp_traces_endpoint == "http://collector:4318/custom/path"


def test_traces_exporter_variable(make: Make) -> None:
    none = make({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert none.trace_exporter_kind == "none" and none.trace_file is None
    assert none.tracer_provider.get_tracer("t").start_span("x").is_recording()  # sampler untouched

    otlp = make({"OTEL_TRACES_EXPORTER": "otlp"})  # spec default endpoint
    assert otlp.otlp_traces_endpoint == "http://localhost:4318/v1/traces"

    both = make({"OTEL_TRACES_EXPORTER": "otlp,file", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert both.trace_exporter_kind == "otlp,file" and both.file_exporter is not None

    disabled = make({"OTEL_SDK_DISABLED": "true"})
    assert disabled.trace_exporter_kind == "none"
    span = disabled.tracer_provider.get_tracer("t").start_span("c", attributes={ROLE: "connect"})
    assert not span.is_recording()


def test_a_counter_shows_up_in_metrics_text(make: Make) -> None:
    telemetry = make()
    counter = telemetry.meter_provider.get_meter("canaryws.test").create_counter("canaryws.test.batches")
    counter.add(3, {"strategy": "strict"})
    counter.add(1, {"strategy": "lenient"})
    body, content_type = telemetry.metrics_text()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'canaryws_test_batches_total{otel_scope_name="canaryws.test"' in text
    assert 'strategy="strict"} 3.0' in text and 'strategy="lenient"} 1.0' in text


def test_two_setups_in_one_process_do_not_collide(make: Make) -> None:
    first, second = make(), make()
    assert first.prometheus_registry is not second.prometheus_registry
    first.meter_provider.get_meter("m").create_counter("canaryws.same").add(2)
    second.meter_provider.get_meter("m").create_counter("canaryws.same").add(5)
    assert "canaryws_same_total" in first.metrics_text()[0].decode()
    assert 'otel_scope_version=""} 2.0' in first.metrics_text()[0].decode()
    assert 'otel_scope_version=""} 5.0' in second.metrics_text()[0].decode()
    assert "canaryws_same_total" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    _emit(first)
    first.shutdown()
    second.shutdown()
    assert first.trace_file != second.trace_file
    assert _file_spans(second) == []
    assert len(_file_spans(first)) == 11


class _Collector(http.server.ThreadingHTTPServer):
    """A loopback OTLP/HTTP receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.received = threading.Event()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                collector.received.set()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_and_metrics_reach_an_otlp_http_receiver(make: Make, collector: _Collector) -> None:
    telemetry = make(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=blue",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
            "OTEL_SERVICE_NAME": "canaryws-otlp",
        }
    )
    assert telemetry.trace_exporter_kind == "otlp"
    _emit(telemetry)
    telemetry.meter_provider.get_meter("m").create_counter("canaryws.sent").add(4)
    assert telemetry.shutdown(timeout_s=10)

    by_path = {path: (headers, body) for path, headers, body in collector.requests}
    assert set(by_path) == {"/v1/traces", "/v1/metrics"}
    headers, body = by_path["/v1/traces"]
    assert headers["x-tenant"] == "blue" and headers["content-type"] == "application/x-protobuf"
    traces = ExportTraceServiceRequest.FromString(body)
    names = [span.name for rs in traces.resource_spans for ss in rs.scope_spans for span in ss.spans]
    assert sorted(names) == ["records.batch"] * 10 + ["records.connect"]
    metrics = ExportMetricsServiceRequest.FromString(by_path["/v1/metrics"][1])
    metric_names = {m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "canaryws.sent" in metric_names


def test_otlp_metrics_need_an_endpoint(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    telemetry = make({"OTEL_METRICS_EXPORTER": "otlp"})
    assert "no OTLP endpoint" in caplog.text
    assert telemetry.trace_exporter_kind == "file"


def test_bad_batch_settings_and_an_unusable_data_dir_fail_at_setup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        setup_telemetry(
            data_dir=tmp_path,
            environ={"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
        )
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OSError):
        setup_telemetry(data_dir=not_a_dir, environ={})


def test_batch_settings_from_the_mapping_are_used(make: Make) -> None:
    telemetry = make({"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"})
    _emit(telemetry)
    assert telemetry.file_exporter is not None
    deadline = time.monotonic() + 5
    while len(_file_spans(telemetry)) < 11 and time.monotonic() < deadline:
        time.sleep(0.02)  # no flush: the 50 ms schedule delay writes them
    assert len(_file_spans(telemetry)) == 11
    assert telemetry.trace_file is not None and len(telemetry.trace_file.read_text().splitlines()) >= 6


# ------------------------------------------------------------ failing exporters


class _GatedExporter(SpanExporter):
    """Blocks every export until released, then answers with the scripted results."""

    def __init__(self, results: list[SpanExportResult | Exception] | None = None) -> None:
        self.gate = threading.Event()
        self.results = list(results or [])
        self.exported = 0
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.gate.wait(10)
        outcome = self.results.pop(0) if self.results else SpanExportResult.SUCCESS
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        return outcome


def _monitored(
    exporter: SpanExporter, monitor: SpanExportMonitor, *, queue: int, batch: int, delay_ms: int = 5000
) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    settings = {
        "max_queue_size": queue,
        "schedule_delay_millis": delay_ms,
        "max_export_batch_size": batch,
        "export_timeout_millis": 30000,
    }
    provider.add_span_processor(MonitoredBatchSpanProcessor(exporter, monitor, settings))  # type: ignore[arg-type]
    return provider


def _end_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("canaryws.test")
    for i in range(count):
        tracer.start_span(f"s{i}").end()


def _telemetry_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]


def test_queue_overflow_is_counted_once_warned_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    """Pins the SDK hook used to count queue drops: if opentelemetry-sdk moves it, this fails."""
    exporter = _GatedExporter()
    monitor = SpanExportMonitor("test", "somewhere")
    provider = _monitored(exporter, monitor, queue=8, batch=4, delay_ms=10)
    with caplog.at_level(logging.INFO):
        _end_spans(provider, 4)  # the worker takes these and blocks in export
        deadline = time.monotonic() + 5
        while exporter.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        _end_spans(provider, 30)  # 8 fit in the queue, 22 are dropped
        assert monitor.dropped == {"queue_full": 22, "export_failed": 0, "shutdown": 0}
        assert monitor.degraded and monitor.status()["state"] == "degraded"
        exporter.gate.set()
        provider.force_flush()  # the overflowed export succeeds: still degraded; the next ones recover
        provider.shutdown()
    assert exporter.exported == 12 and exporter.exported + monitor.dropped_spans == 34
    assert not monitor.degraded
    status = monitor.status()
    assert status["last_error"] == "export queue full: spans end faster than the exporter sends them"
    assert status["last_error_at"].endswith("Z") and status["dropped_spans"] == 22
    assert _telemetry_records(caplog) == [
        ("WARNING", "traces: exporter test (somewhere) is falling behind (export queue full: spans end faster "
                    "than the exporter sends them); dropping spans until it catches up"),
        ("INFO", "traces: exporter test (somewhere) works again after 22 dropped spans"),
    ]
    sdk = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert sdk == []  # the SDK's "Queue full" warning is folded into the monitor's


def test_failed_and_raising_exports_are_counted_warned_once_then_recover(caplog: pytest.LogCaptureFixture) -> None:
    exporter = _GatedExporter([SpanExportResult.FAILURE, RuntimeError("collector exploded"), SpanExportResult.SUCCESS])
    exporter.gate.set()
    monitor = SpanExportMonitor("test")
    provider = _monitored(exporter, monitor, queue=64, batch=4)
    with caplog.at_level(logging.INFO):
        _end_spans(provider, 3)
        provider.force_flush()
        assert monitor.status()["last_error"] == "the exporter reported a failure"
        _end_spans(provider, 2)
        provider.force_flush()
        assert monitor.dropped == {"queue_full": 0, "export_failed": 5, "shutdown": 0}
        assert monitor.degraded and monitor.status()["last_error"] == "RuntimeError: collector exploded"
        _end_spans(provider, 1)
        provider.force_flush()
        assert not monitor.degraded and exporter.exported == 1
        provider.shutdown()
        _end_spans(provider, 2)  # after shutdown: counted, not a health problem
    assert monitor.dropped == {"queue_full": 0, "export_failed": 5, "shutdown": 2} and not monitor.degraded
    records = _telemetry_records(caplog)
    assert [level for level, _ in records] == ["WARNING", "INFO"], records
    assert "exporter test failed (the exporter reported a failure)" in records[0][1]
    assert "after 5 dropped spans" in records[1][1]
    assert "Traceback" not in caplog.text


def test_an_unreachable_collector_is_counted_on_metrics_and_in_status(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    telemetry = make({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"})
    assert telemetry.status() == {
        "traces": "ok",
        "dropped_spans": 0,
        "exporters": [
            {
                "exporter": "otlp",
                "target": f"http://127.0.0.1:{port}/v1/traces",
                "state": "ok",
                "dropped_spans": 0,
                "dropped": {"queue_full": 0, "export_failed": 0, "shutdown": 0},
                "last_error": None,
                "last_error_at": None,
            }
        ],
    }
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            _emit(telemetry)
            telemetry.tracer_provider.force_flush()
    status = telemetry.status()
    (exporter,) = status["exporters"]
    assert status["traces"] == "degraded" and status["dropped_spans"] == 33
    assert exporter["dropped"] == {"queue_full": 0, "export_failed": 33, "shutdown": 0}
    assert "Connection refused" in exporter["last_error"]  # no time to retry: from the exporter-metrics hook
    text = telemetry.metrics_text()[0].decode()
    assert re.search(
        r'canaryws_telemetry_spans_dropped_total\{exporter="otlp",[^}]*reason="export_failed"\} 33\.0', text
    ), text
    assert re.search(r'canaryws_telemetry_spans_dropped_total\{exporter="otlp",[^}]*reason="queue_full"\} 0\.0', text)
    records = _telemetry_records(caplog)
    assert [level for level, _ in records] == ["WARNING"], records
    assert f"exporter otlp (http://127.0.0.1:{port}/v1/traces) failed" in records[0][1]
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]  # no per-retry/per-batch records


def test_sdk_records_outside_monitored_exporters_are_left_alone(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    make()  # installs the filter on the SDK loggers
    with caplog.at_level(logging.WARNING):
        logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter").warning("someone else's exporter")
        logging.getLogger("opentelemetry.sdk._shared_internal").warning("someone else's queue")
    assert [r.getMessage() for r in caplog.records] == ["someone else's exporter", "someone else's queue"]


def test_a_full_disk_is_degraded_with_one_warning_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "traces.jsonl").symlink_to("/dev/full")
    telemetry = setup_telemetry(data_dir=data_dir, environ={})
    try:
        with caplog.at_level(logging.INFO):
            _emit(telemetry)
            telemetry.tracer_provider.force_flush()
            _emit(telemetry)
            telemetry.tracer_provider.force_flush()
            status = telemetry.status()
            (exporter,) = status["exporters"]
            assert status["traces"] == "degraded" and exporter["exporter"] == "file"
            assert exporter["dropped"]["export_failed"] == 22 and exporter["last_error"] == "No space left on device"
            replacement = data_dir / "new"
            replacement.write_bytes(b"")
            replacement.replace(data_dir / "traces.jsonl")
            _emit(telemetry)
            telemetry.tracer_provider.force_flush()
            assert telemetry.status()["traces"] == "ok"
    finally:
        telemetry.shutdown()
    assert len(_file_spans(telemetry)) == 11
    records = _telemetry_records(caplog)
    warnings = [message for level, message in records if level == "WARNING"]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], records  # the file exporter's own
    assert any("writes succeed again after 22 dropped spans" in message for _, message in records), records


def test_no_trace_exporter_is_disabled_telemetry(make: Make) -> None:
    none = make({"OTEL_TRACES_EXPORTER": "none"})
    assert none.status() == {"traces": "disabled", "dropped_spans": 0, "exporters": []}
    both = make({"OTEL_TRACES_EXPORTER": "otlp,file", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert [e["exporter"] for e in both.status()["exporters"]] == ["otlp", "file"]


# ------------------------------------------------------------ the trace file's size


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, TraceFileLimits(DEFAULT_MAX_BYTES, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": " "}, TraceFileLimits(256 * 1024 * 1024, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "1048576"}, TraceFileLimits(1048576, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "64KiB"}, TraceFileLimits(65536, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "512 mib"}, TraceFileLimits(512 * 1024**2, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "2GiB"}, TraceFileLimits(2 * 1024**3, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "0"}, TraceFileLimits(None, True)),
        ({"CANARYWS_TRACE_FILE_MAX_BYTES": "Unlimited"}, TraceFileLimits(None, True)),
        ({"CANARYWS_TRACE_FILE_ROTATE": "false"}, TraceFileLimits(DEFAULT_MAX_BYTES, False)),
        ({"CANARYWS_TRACE_FILE_ROTATE": "0"}, TraceFileLimits(DEFAULT_MAX_BYTES, False)),
        ({"CANARYWS_TRACE_FILE_ROTATE": "TRUE"}, TraceFileLimits(DEFAULT_MAX_BYTES, True)),
    ],
)
def test_trace_file_limits_from_the_environment(environ: dict[str, str], expected: TraceFileLimits) -> None:
    assert trace_file_limits(environ) == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CANARYWS_TRACE_FILE_MAX_BYTES", "lots", "is not a size: use bytes"),
        ("CANARYWS_TRACE_FILE_MAX_BYTES", "-1", "is not a size"),
        ("CANARYWS_TRACE_FILE_MAX_BYTES", "1.5GiB", "is not a size"),
        ("CANARYWS_TRACE_FILE_MAX_BYTES", "256M", "is not a size"),  # MB or MiB? say which
        ("CANARYWS_TRACE_FILE_MAX_BYTES", "256", "is below the minimum of 64KiB"),  # meant MiB
        ("CANARYWS_TRACE_FILE_ROTATE", "sometimes", "is not a boolean: use true"),
    ],
)
def test_bad_trace_file_settings_fail_at_setup_before_anything_starts(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name}={value!r} {message}"):
        setup_telemetry(data_dir=tmp_path / "data", environ={name: value})
    assert not (tmp_path / "data").exists()


def test_the_file_exporter_gets_the_limits(make: Make) -> None:
    default = make()
    assert default.file_exporter is not None
    assert (default.file_exporter.max_bytes, default.file_exporter.rotate) == (DEFAULT_MAX_BYTES, True)
    assert default.trace_file is not None and stat.S_IMODE(default.trace_file.stat().st_mode) == 0o600
    capped = make({"CANARYWS_TRACE_FILE_MAX_BYTES": "1MiB", "CANARYWS_TRACE_FILE_ROTATE": "false"})
    assert capped.file_exporter is not None
    assert (capped.file_exporter.max_bytes, capped.file_exporter.rotate) == (1024 * 1024, False)
    unlimited = make({"CANARYWS_TRACE_FILE_MAX_BYTES": "unlimited", "CANARYWS_WORKER": "2"})
    assert unlimited.file_exporter is not None and unlimited.file_exporter.max_bytes is None
    assert unlimited.file_exporter.backup_path.name == "traces-2.old.jsonl"


def _rotations_metric(telemetry: TelemetryProviders) -> float:
    families = prometheus_client.parser.text_string_to_metric_families(telemetry.metrics_text()[0].decode())
    (sample,) = [
        sample
        for family in families
        for sample in family.samples
        if sample.name == "canaryws_telemetry_trace_file_rotations_total"
    ]
    return float(sample.value)


def test_rotations_are_counted_on_metrics_and_lose_nothing(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    telemetry = make({"CANARYWS_TRACE_FILE_MAX_BYTES": "64KiB"})
    assert telemetry.file_exporter is not None and telemetry.trace_file is not None
    assert _rotations_metric(telemetry) == 0
    emitted = 0
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        while telemetry.file_exporter.rotations == 0 and emitted < 20_000:
            _emit(telemetry)
            emitted += 11
            telemetry.tracer_provider.force_flush()
    assert telemetry.file_exporter.rotations == 1
    assert _rotations_metric(telemetry) == 1
    assert telemetry.status()["traces"] == "ok" and telemetry.status()["dropped_spans"] == 0
    backup = telemetry.trace_file.with_name("traces.old.jsonl")
    assert sorted(p.name for p in telemetry.trace_file.parent.iterdir()) == ["traces.jsonl", "traces.old.jsonl"]
    for path in (telemetry.trace_file, backup):
        assert path.stat().st_size <= 64 * 1024 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(list(read_otlp_json_lines(backup))) + len(_file_spans(telemetry)) == emitted
    assert any("reached max_bytes=65536" in m for _, m in _telemetry_records(caplog))
