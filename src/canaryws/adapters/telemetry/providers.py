"""OpenTelemetry providers for one app instance, configured from ``OTEL_*`` variables.

Nothing here touches global state: no ``set_tracer_provider``/``set_meter_provider``, and
the Prometheus collector goes into a ``CollectorRegistry`` of its own, so several apps
(and their tests) can live in one process. (The one process-wide change is a logging
filter on two SDK loggers, inert outside this module's processors; see "Failing
exporters" below.) The composition root hands the providers to the FastAPI
instrumentation and to its own telemetry code explicitly.

Environment (read from the ``environ`` mapping given, ``os.environ`` by default):

- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (the service name
  argument is the default).
- ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler for batch spans
  (default ``parentbased_always_on``), wrapped in :class:`ConnectionSpansSampler`.
- ``OTEL_TRACES_EXPORTER``: comma-separated ``otlp``, ``file`` (the OTLP/JSON lines
  file, a canaryws extension), ``console``, or ``none``. Unset: ``otlp`` when an OTLP
  endpoint is configured, else ``file``.
- ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and the
  matching ``*_HEADERS``, ``*_TIMEOUT``, ``*_COMPRESSION``, ``*_CERTIFICATE``,
  ``*_CLIENT_KEY``, ``*_CLIENT_CERTIFICATE``: the OTLP http/protobuf exporter.
- ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_EXPORT_TIMEOUT``: the batch processor.
- ``OTEL_METRICS_EXPORTER`` containing ``otlp`` (with an endpoint configured): OTLP
  metrics every ``OTEL_METRIC_EXPORT_INTERVAL`` ms, besides the Prometheus endpoint,
  which is always there.
- ``OTEL_SDK_DISABLED=true``: no spans are sampled or exported; the SDK's meter provider
  reads the same variable from the process environment and then records no metrics
  either (``/metrics`` answers with an empty exposition).
- ``CANARYWS_TRACE_FILE_MAX_BYTES``, ``CANARYWS_TRACE_FILE_ROTATE``: the trace file's size
  cap (default 256 MiB; ``0`` or ``unlimited``: none) and what happens there (default
  ``true``: rotate to ``traces.old.jsonl``; ``false``: drop the batches beyond it); see
  :func:`trace_file_limits`.
- ``CANARYWS_WORKER``: set by ``canaryws serve --workers N`` for worker ``k`` (1..N):
  the trace file is then ``traces-<k>.jsonl``, since its exporter must be the file's only
  writer (:func:`trace_file_name`).

Failing exporters. Losing telemetry must never slow down or stop the service: spans
wait in each batch processor's bounded queue (``OTEL_BSP_MAX_QUEUE_SIZE``) and are sent
by its own thread, so an unreachable or slow collector, or a full disk, costs spans,
never batch latency or unbounded memory. Every span lost is counted, per exporter and
reason, in ``canaryws.telemetry.spans_dropped`` (Prometheus
``canaryws_telemetry_spans_dropped_total{exporter,reason}``):

- ``queue_full``: the queue was full when the span ended (the exporter is slower than
  the service produces spans); the SDK drops the oldest queued span;
- ``export_failed``: the exporter returned FAILURE (or raised) for a batch: collector
  unreachable, timed out or refusing; trace file write or rotation failed, a batch
  larger than the file's cap, or (``CANARYWS_TRACE_FILE_ROTATE=false``) beyond it;
- ``shutdown``: the span ended after the processor was shut down.

An exporter that loses spans is *degraded* (:meth:`TelemetryProviders.status`, shown
by ``/readyz`` under ``telemetry``) until an export succeeds with no queue overflow
since the previous one. One warning is logged when it becomes degraded (the trace
file exporter logs its own write failures) and one info line when it recovers; the
SDK's per-batch retry and failure records and its "Queue full" warning, emitted while
a monitored processor runs, are folded into that state instead of being logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypedDict
from urllib.parse import unquote

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import DropAggregation, ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler
from opentelemetry.util.re import parse_env_headers
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.adapters.telemetry.otlp_json_file import DEFAULT_MAX_BYTES, OtlpJsonFileSpanExporter
from canaryws.adapters.telemetry.sampling import (
    ConnectionSpansSampler,
    sampler_from_environ,
)

__all__ = [
    "DROP_REASONS",
    "TRACE_FILE_MAX_BYTES_VAR",
    "TRACE_FILE_NAME",
    "TRACE_FILE_ROTATE_VAR",
    "WORKER_VAR",
    "SpanExportMonitor",
    "TelemetryProviders",
    "TraceFileLimits",
    "setup_telemetry",
    "trace_file_limits",
    "trace_file_name",
]

_logger = logging.getLogger("canaryws.telemetry")

TRACE_FILE_NAME = "traces.jsonl"
WORKER_VAR = "CANARYWS_WORKER"  # the worker's index (1..N) under ``serve --workers N``
TRACE_FILE_MAX_BYTES_VAR = "CANARYWS_TRACE_FILE_MAX_BYTES"
TRACE_FILE_ROTATE_VAR = "CANARYWS_TRACE_FILE_ROTATE"
MIN_TRACE_FILE_MAX_BYTES = 64 * 1024  # below this, "256" most likely meant MiB
_DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
_EXPORTER_NAMES = ("otlp", "file", "console", "none")
# Specification defaults, used instead of the SDK reading os.environ itself.
_BSP_DEFAULTS = {
    "OTEL_BSP_MAX_QUEUE_SIZE": 2048,
    "OTEL_BSP_SCHEDULE_DELAY": 5000,
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
    "OTEL_BSP_EXPORT_TIMEOUT": 30000,
}
_METRIC_EXPORT_INTERVAL_MS = 60000
_METRIC_EXPORT_TIMEOUT_MS = 30000


class _OtlpOptions(TypedDict, total=False):
    endpoint: str
    headers: Mapping[str, str]
    timeout: float
    compression: Compression
    certificate_file: str
    client_key_file: str
    client_certificate_file: str


# --------------------------------------------------------------------------------------
# Failing exporters: dropped spans counted, health reported, one warning per streak
# --------------------------------------------------------------------------------------

DROP_REASONS = ("queue_full", "export_failed", "shutdown")
_MAX_ERROR_TEXT = 500


class SpanExportMonitor:
    """Dropped spans and health of one trace exporter (see the module doc).

    Fed by :class:`_MonitoredBatchSpanProcessor` (queue overflow, from whatever thread
    ends spans) and :class:`_MonitoredSpanExporter` (export results, on the processor's
    worker thread); read by ``/readyz`` and ``/metrics``. Thread-safe.

    ``exporter_logs_failures``: the exporter logs its own failure streaks (the trace
    file does), so this monitor does not log a second warning for them.
    """

    def __init__(
        self,
        exporter: str,
        target: str | None = None,
        *,
        exporter_logs_failures: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.exporter = exporter
        self.target = target
        self._exporter_logs_failures = exporter_logs_failures
        self._clock = clock
        self._lock = threading.Lock()
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._degraded = False
        self._warned = False  # this monitor logged the warning of the current streak
        self._streak_dropped = 0
        self._queue_overflowed = False  # since the last export finished
        self._last_error: str | None = None
        self._last_error_at: float | None = None

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def dropped(self) -> dict[str, int]:
        """Spans dropped so far, by reason (every reason present)."""
        with self._lock:
            return dict(self._dropped)

    @property
    def dropped_spans(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    def _describe(self) -> str:
        return f"{self.exporter} ({self.target})" if self.target else self.exporter

    def spans_dropped(self, count: int, reason: str) -> None:
        """The processor dropped ``count`` spans before export (``queue_full``, ``shutdown``)."""
        warn = False
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count
            if reason == "shutdown":
                return  # the service is stopping: counted, not a health problem
            self._queue_overflowed = True
            self._streak_dropped += count
            if not self._degraded:
                self._degraded = True
                self._last_error = "export queue full: spans end faster than the exporter sends them"
                self._last_error_at = self._clock()
                self._warned = warn = True
        if warn:
            # Called while a span ends, inside some connection's context: log from an empty
            # context so the warning is not attributed to that connection or trace.
            contextvars.Context().run(
                _logger.warning,
                "traces: exporter %s is falling behind (%s); dropping spans until it catches up",
                self._describe(),
                self._last_error,
            )

    def export_finished(self, count: int, *, ok: bool, error: str | None = None) -> None:
        """An export of ``count`` spans returned: SUCCESS (``ok``) or FAILURE (``error`` says why)."""
        warn = recovered = False
        streak = 0
        with self._lock:
            if ok:
                if self._degraded and not self._queue_overflowed:
                    self._degraded = False
                    recovered, streak = self._warned, self._streak_dropped
                    self._warned = False
                    self._streak_dropped = 0
            else:
                self._dropped["export_failed"] += count
                self._streak_dropped += count
                self._last_error = (error or "the exporter reported a failure")[:_MAX_ERROR_TEXT]
                self._last_error_at = self._clock()
                if not self._degraded:
                    self._degraded = True
                    self._warned = warn = not self._exporter_logs_failures
            self._queue_overflowed = False
        if warn:
            _logger.warning(
                "traces: exporter %s failed (%s); dropping spans until exports succeed again",
                self._describe(),
                self._last_error,
            )
        if recovered:
            _logger.info("traces: exporter %s works again after %d dropped spans", self._describe(), streak)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "exporter": self.exporter,
                "target": self.target,
                "state": "degraded" if self._degraded else "ok",
                "dropped_spans": sum(self._dropped.values()),
                "dropped": dict(self._dropped),
                "last_error": self._last_error,
                "last_error_at": None if self._last_error_at is None else iso_utc(self._last_error_at),
            }


_DISCARD: list[str] = []  # a sentinel: never appended to


class _SdkRecords(threading.local):
    """What happens to the SDK's records on this thread while a monitored processor or
    exporter runs: ``None`` (not inside one: logged normally), ``_DISCARD``, or a list
    collecting their text (the export's failure reasons). ``error``: the exception an
    OTLP export failed with, when the exporter reported one."""

    capture: list[str] | None = None
    error: BaseException | None = None


_sdk_records = _SdkRecords()


class _FoldSdkRecords(logging.Filter):
    """On the SDK's exporter and batch-processor loggers: records emitted inside a
    monitored processor or exporter (per thread) are folded into the monitor's state
    instead of being logged, one per retry and per batch. Records from anything else
    in the process pass untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        capture = _sdk_records.capture
        if capture is None:
            return True
        if capture is not _DISCARD and record.levelno >= logging.WARNING:
            capture.append(record.getMessage())
        return False


_FOLD_SDK_RECORDS = _FoldSdkRecords()
# The OTLP http exporter's retry/failure records, and the batch processor's "Queue full".
_SDK_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk._shared_internal")


def _fold_sdk_records() -> None:
    for name in _SDK_LOGGERS:
        sdk_logger = logging.getLogger(name)
        if _FOLD_SDK_RECORDS not in sdk_logger.filters:
            sdk_logger.addFilter(_FOLD_SDK_RECORDS)  # inert outside monitored code (see the class)


class _MonitoredSpanExporter(SpanExporter):
    """Wraps an exporter: reports each export's result to the monitor. An exception is
    a failed export (the batch processor would log it with a traceback per batch)."""

    def __init__(self, inner: SpanExporter, monitor: SpanExportMonitor) -> None:
        self.inner = inner
        self._monitor = monitor
        if isinstance(inner, OTLPSpanExporter):
            # The OTLP exporter hands the exception an export failed with only to its
            # (internal, usually no-op) metrics object; read it there for /readyz.
            sdk_metrics = getattr(inner, "_metrics", None)
            if callable(getattr(sdk_metrics, "export_operation", None)):
                inner._metrics = _ErrorCatcher(sdk_metrics)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        captured: list[str] = []
        error: str | None = None
        _sdk_records.capture = captured
        _sdk_records.error = None
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # noqa: BLE001 - a failing exporter must not kill the worker or spam tracebacks
            result, error = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        finally:
            _sdk_records.capture = None
            cause, _sdk_records.error = _sdk_records.error, None
        ok = result is SpanExportResult.SUCCESS
        if not ok and error is None:
            error = getattr(self.inner, "last_error", None) or _export_error(captured, cause)
        self._monitor.export_finished(len(spans), ok=ok, error=error)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _ErrorCatcher:
    """Stands in for the OTLP exporter's internal metrics object: notes the exception of
    a failed export on this thread, then delegates to the SDK's own object."""

    def __init__(self, sdk_metrics: Any) -> None:
        self._sdk_metrics = sdk_metrics

    @contextlib.contextmanager
    def export_operation(self, num_items: int) -> Iterator[Any]:
        with self._sdk_metrics.export_operation(num_items) as result:
            try:
                yield result
            finally:
                error = getattr(result, "error", None)
                if isinstance(error, BaseException):
                    _sdk_records.error = error


def _export_error(records: list[str], cause: BaseException | None) -> str | None:
    """One failed export as one line: the SDK's verdict (its last record), then the
    exception it failed with or, failing that, its first record (a retried error)."""
    verdict = records[-1] if records else None
    if cause is not None:
        reason = f"{type(cause).__name__}: {cause}"
        return f"{verdict} Cause: {reason}" if verdict else reason
    if len(records) > 1:
        return f"{verdict} First error: {records[0]}"
    return verdict


class _DropCounter:
    """Stands in for the SDK batch processor's internal metrics object (the SDK's hook
    for dropped items, called exactly where it drops one), counting into the monitor
    and delegating to the SDK's own object (a no-op unless
    ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``)."""

    def __init__(self, sdk_metrics: Any, monitor: SpanExportMonitor) -> None:
        self._sdk_metrics = sdk_metrics
        self._monitor = monitor

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self._sdk_metrics.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._monitor.spans_dropped(count, "shutdown" if error_type == "already_shutdown" else "queue_full")
        self._sdk_metrics.drop_items(count, error_type)

    def finish_items(self, count: int) -> None:
        self._sdk_metrics.finish_items(count)


class _MonitoredBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue, own thread), with its drops counted.

    opentelemetry-sdk 1.45 reports queue overflow only through internal metrics that
    are off unless ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is set in os.environ,
    and does not count failed exports at all; this counts both, per exporter.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        monitor: SpanExportMonitor,
        settings: _BatchSettings,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(_MonitoredSpanExporter(exporter, monitor), **settings, meter_provider=meter_provider)
        self.monitor = monitor
        inner = getattr(self, "_batch_processor", None)
        sdk_metrics = getattr(inner, "_metrics", None)
        if inner is None or not callable(getattr(sdk_metrics, "drop_items", None)):
            # A unit test pins this against the locked SDK; in production, degrade gracefully.
            _logger.warning("this opentelemetry-sdk hides its span queue; queue overflow drops are not counted")
        else:
            inner._metrics = _DropCounter(sdk_metrics, monitor)

    def on_end(self, span: ReadableSpan) -> None:
        # The SDK logs "Queue full, dropping Span." here; the monitor reports it instead.
        _sdk_records.capture = _DISCARD
        try:
            super().on_end(span)
        finally:
            _sdk_records.capture = None


def _traces_status(monitors: Sequence[SpanExportMonitor]) -> dict[str, Any]:
    exporters = [monitor.status() for monitor in monitors]
    if not exporters:
        traces = "disabled"
    elif any(entry["state"] != "ok" for entry in exporters):
        traces = "degraded"
    else:
        traces = "ok"
    return {
        "traces": traces,
        "dropped_spans": sum(entry["dropped_spans"] for entry in exporters),
        "exporters": exporters,
    }


def _observe_rotations(exporter: OtlpJsonFileSpanExporter) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(exporter.rotations)

    return observe


def _observe_drops(monitors: Sequence[SpanExportMonitor]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        for monitor in monitors:
            for reason, count in monitor.dropped.items():
                yield Observation(count, {"exporter": monitor.exporter, "reason": reason})

    return observe


@dataclass
class TelemetryProviders:
    """The providers of one app instance, and how its traces leave the process."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    prometheus_registry: CollectorRegistry
    trace_exporter_kind: str
    """``"file"``, ``"otlp"``, ``"none"`` (or ``"console"``, or a comma-separated
    combination when ``OTEL_TRACES_EXPORTER`` lists several)."""
    trace_file: Path | None = None
    file_exporter: OtlpJsonFileSpanExporter | None = None
    otlp_traces_endpoint: str | None = None
    """Full URL spans are posted to, when exporting OTLP."""
    span_export_monitors: list[SpanExportMonitor] = field(default_factory=list)
    """One per trace exporter: dropped spans and health (see the module doc)."""
    duration_registry: CollectorRegistry | None = None
    """Where the batch-duration histogram, read from the connection summaries, is served
    from (:class:`canaryws.adapters.telemetry.records.DurationHistograms`): the Prometheus
    registry, unless metrics also leave by OTLP (then the OTel histogram carries it to
    both) or the SDK is disabled."""

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: ``{"traces": "ok"|"degraded"|"disabled", "dropped_spans": N,
        "exporters": [per-exporter state, drops by reason, last error]}``."""
        return _traces_status(self.span_export_monitors)

    def metrics_text(self) -> tuple[bytes, str]:
        """Prometheus exposition of this instance's metrics: ``(body, content_type)``."""
        return generate_latest(self.prometheus_registry), CONTENT_TYPE_LATEST

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and shut down both providers, waiting at most ``timeout_s`` seconds.

        Pending spans are exported (the batch processor drains its queue on shutdown)
        and the trace file is closed. The SDK's own shutdown has no overall deadline (an
        unreachable OTLP endpoint retries with back-off), so it runs on a daemon thread;
        if that thread is still busy at the deadline this returns False and the rest
        finishes, or not, in the background. Returns True when everything completed.
        Calling it again is harmless.
        """
        timeout_ms = max(timeout_s, 0.0) * 1000

        def _shutdown() -> None:
            try:
                self.tracer_provider.shutdown()
            except Exception:  # telemetry must never break the service's shutdown
                _logger.exception("tracer provider shutdown failed")
            try:
                self.meter_provider.shutdown(timeout_millis=timeout_ms)
            except Exception:
                _logger.exception("meter provider shutdown failed")

        worker = threading.Thread(target=_shutdown, name="canaryws-telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            _logger.warning(
                "telemetry shutdown did not finish within %.1f s; unexported spans or metrics may be lost",
                timeout_s,
            )
            return False
        return True


HTTP_METRIC_ATTRIBUTES = frozenset({"http.route", "http.status_code", "http.response.status_code"})
"""What the HTTP server metrics of the FastAPI/ASGI instrumentation keep: the matched route
(none for an unknown path) and the status, both sets the service defines. The instrumentation
would also label them with the request's ``Host`` (``http.server_name``, ``http.host``), the
method, the client's HTTP version and the port: values a client chooses, so each new ``Host``
made new series (issue 21: 200 requests, 25 times the lines; a 1 MB ``Host``, a 40 MB
``/metrics``), and every method times every status would still multiply them."""

HTTP_DURATION_BUCKETS_MS = (5.0, 25.0, 100.0, 500.0, 2500.0, 10000.0)
"""The buckets of ``http.server.duration`` (only ``/admin`` and unknown paths are measured: the
probes are not instrumented and ``/records`` has its own histogram)."""


def bounded_http_views() -> list[View]:
    """Views that bound the instrumentation's ``http.server.*`` metrics: the duration keeps only
    :data:`HTTP_METRIC_ATTRIBUTES` in :data:`HTTP_DURATION_BUCKETS_MS`, the active requests none,
    and the request and response size histograms (nothing reads them) are dropped."""
    return [
        View(instrument_name="http.server.request.size", aggregation=DropAggregation()),
        View(instrument_name="http.server.response.size", aggregation=DropAggregation()),
        View(instrument_name="http.server.request.body.size", aggregation=DropAggregation()),
        View(instrument_name="http.server.response.body.size", aggregation=DropAggregation()),
        View(instrument_name="http.server.duration", attribute_keys=set(HTTP_METRIC_ATTRIBUTES),
             aggregation=ExplicitBucketHistogramAggregation(HTTP_DURATION_BUCKETS_MS)),
        View(instrument_name="http.server.request.duration", attribute_keys=set(HTTP_METRIC_ATTRIBUTES),
             aggregation=ExplicitBucketHistogramAggregation(tuple(b / 1000 for b in HTTP_DURATION_BUCKETS_MS))),
        View(instrument_name="http.server.active_requests", attribute_keys=set()),
    ]


def setup_telemetry(
    *,
    data_dir: Path,
    service_name: str = "canaryws",
    environ: Mapping[str, str] | None = None,
) -> TelemetryProviders:
    """Build the tracer and meter providers for one app instance (see module doc)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    resource = _resource(service_name, env)
    sdk_disabled = _flag(env, "OTEL_SDK_DISABLED")
    names = ["none"] if sdk_disabled else _trace_exporter_names(env)
    batching = _batch_settings(env)  # validated before anything is started
    file_limits = trace_file_limits(env)  # validated even when no trace file is written: a typo is a typo

    registry = CollectorRegistry()
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp_metrics = _otlp_metric_reader(env)
    if otlp_metrics is not None:
        readers.append(otlp_metrics)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource, views=bounded_http_views())

    sampler: Sampler = ALWAYS_OFF if sdk_disabled else sampler_from_environ(env)
    tracer_provider = TracerProvider(
        sampler=ConnectionSpansSampler(sampler),
        resource=resource,
        meter_provider=meter_provider,
    )

    trace_file: Path | None = None
    file_exporter: OtlpJsonFileSpanExporter | None = None
    otlp_endpoint: str | None = None
    monitors: list[SpanExportMonitor] = []
    meter_provider.get_meter("canaryws.telemetry").create_observable_counter(
        "canaryws.telemetry.spans_dropped",
        callbacks=[_observe_drops(monitors)],
        unit="{span}",
        description="Spans lost before reaching the trace exporter's destination, by exporter and reason",
    )
    _fold_sdk_records()
    try:
        for name in names:
            exporter: SpanExporter
            if name == "file":
                trace_file = Path(data_dir) / trace_file_name(env)
                file_exporter = OtlpJsonFileSpanExporter(
                    trace_file, max_bytes=file_limits.max_bytes, rotate=file_limits.rotate
                )
                meter_provider.get_meter("canaryws.telemetry").create_observable_counter(
                    "canaryws.telemetry.trace_file_rotations",
                    callbacks=[_observe_rotations(file_exporter)],
                    unit="{rotation}",
                    description="Times the local trace file reached its size cap and was moved to its backup",
                )
                exporter = file_exporter
                monitor = SpanExportMonitor(name, str(trace_file), exporter_logs_failures=True)
            elif name == "otlp":
                otlp_endpoint = _otlp_endpoint(env, "TRACES", "v1/traces")
                exporter = OTLPSpanExporter(**_otlp_options(env, "TRACES", otlp_endpoint))
                monitor = SpanExportMonitor(name, otlp_endpoint)
            elif name == "console":
                exporter = ConsoleSpanExporter()
                monitor = SpanExportMonitor(name)
            else:
                continue
            tracer_provider.add_span_processor(
                _MonitoredBatchSpanProcessor(exporter, monitor, batching, meter_provider)
            )
            monitors.append(monitor)
    except BaseException:
        # e.g. the trace file cannot be opened: release what was started, then fail loudly.
        tracer_provider.shutdown()
        meter_provider.shutdown(timeout_millis=1000)
        raise

    return TelemetryProviders(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        prometheus_registry=registry,
        trace_exporter_kind=",".join(names),
        trace_file=trace_file,
        file_exporter=file_exporter,
        otlp_traces_endpoint=otlp_endpoint,
        span_export_monitors=monitors,
        duration_registry=registry if otlp_metrics is None and not sdk_disabled else None,
    )


# --------------------------------------------------------------------------------------
# Environment parsing (explicit, so a mapping other than os.environ works too)
# --------------------------------------------------------------------------------------


def trace_file_name(env: Mapping[str, str]) -> str:
    """``traces.jsonl``, or ``traces-<k>.jsonl`` for worker ``k`` (``CANARYWS_WORKER``): the
    file exporter assumes it is its file's only writer (it truncates a torn last line and
    tracks the size), so each worker process writes a file of its own."""
    worker = env.get(WORKER_VAR, "").strip()
    if not worker:
        return TRACE_FILE_NAME
    if not worker.isdecimal():
        raise ValueError(f"{WORKER_VAR}={worker!r} is not a worker number")
    return f"traces-{int(worker)}.jsonl"


class TraceFileLimits(NamedTuple):
    max_bytes: int | None
    """The cap on the trace file's size; None: no cap."""
    rotate: bool
    """At the cap, move the file to its backup and start a new one (True), or drop the
    batches that do not fit (False)."""


_SIZE = re.compile(r"(?P<number>[0-9]+)\s*(?P<unit>kib|mib|gib)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def trace_file_limits(env: Mapping[str, str]) -> TraceFileLimits:
    """The trace file's cap and rotation, from ``env``; ValueError names a bad value.

    ``CANARYWS_TRACE_FILE_MAX_BYTES``: bytes (``268435456``) or ``KiB``/``MiB``/``GiB``
    (``256MiB``), at least 64 KiB; ``0`` or ``unlimited`` for no cap; default 256 MiB.
    ``CANARYWS_TRACE_FILE_ROTATE``: ``true`` (default) or ``false`` (also 1/0, yes/no,
    on/off).
    """
    raw = env.get(TRACE_FILE_MAX_BYTES_VAR, "").strip()
    max_bytes: int | None = DEFAULT_MAX_BYTES
    if raw:
        match = _SIZE.fullmatch(raw)
        if raw.lower() == "unlimited":
            max_bytes = None
        elif match is None:
            raise ValueError(
                f"{TRACE_FILE_MAX_BYTES_VAR}={raw!r} is not a size: use bytes (268435456) or KiB/MiB/GiB "
                "(256MiB), or 0 or unlimited for no cap"
            )
        else:
            unit = match["unit"].lower() if match["unit"] else None
            max_bytes = int(match["number"]) * _SIZE_UNITS[unit] or None
            if max_bytes is not None and max_bytes < MIN_TRACE_FILE_MAX_BYTES:
                raise ValueError(
                    f"{TRACE_FILE_MAX_BYTES_VAR}={raw!r} is below the minimum of 64KiB ({MIN_TRACE_FILE_MAX_BYTES} "
                    "bytes); sizes are in bytes unless they say KiB, MiB or GiB (0 or unlimited: no cap)"
                )
    rotate_raw = env.get(TRACE_FILE_ROTATE_VAR, "").strip().lower()
    if rotate_raw in _FALSE:
        rotate = False
    elif not rotate_raw or rotate_raw in _TRUE:
        rotate = True
    else:
        raise ValueError(
            f"{TRACE_FILE_ROTATE_VAR}={env[TRACE_FILE_ROTATE_VAR]!r} is not a boolean: use true (rotate at the cap) "
            "or false (drop the spans beyond it)"
        )
    return TraceFileLimits(max_bytes, rotate)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def _int(env: Mapping[str, str], name: str) -> int | None:
    """An integer variable, or None (SDK default) when unset or malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        _logger.warning("%s=%r is not an integer; using the default", name, raw)
        return None


class _BatchSettings(TypedDict):
    max_queue_size: int
    schedule_delay_millis: int
    max_export_batch_size: int
    export_timeout_millis: int


def _batch_settings(env: Mapping[str, str]) -> _BatchSettings:
    """OTEL_BSP_* from ``env``; raises ValueError for values the SDK would refuse."""

    def value(name: str) -> int:
        parsed = _int(env, name)
        return _BSP_DEFAULTS[name] if parsed is None else parsed

    settings = _BatchSettings(
        max_queue_size=value("OTEL_BSP_MAX_QUEUE_SIZE"),
        schedule_delay_millis=value("OTEL_BSP_SCHEDULE_DELAY"),
        max_export_batch_size=value("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        export_timeout_millis=value("OTEL_BSP_EXPORT_TIMEOUT"),
    )
    if min(settings["max_queue_size"], settings["schedule_delay_millis"], settings["max_export_batch_size"]) <= 0:
        raise ValueError("OTEL_BSP_MAX_QUEUE_SIZE, _SCHEDULE_DELAY and _MAX_EXPORT_BATCH_SIZE must be positive")
    if settings["max_export_batch_size"] > settings["max_queue_size"]:
        raise ValueError("OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE")
    return settings


def _resource(service_name: str, env: Mapping[str, str]) -> Resource:
    """``Resource.create`` with OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME from
    ``env`` overriding the given service name (same parsing as the SDK's detector)."""
    attributes: dict[str, str] = {SERVICE_NAME: service_name}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _logger.warning("OTEL_RESOURCE_ATTRIBUTES: ignored malformed item %r", item)
            continue
        attributes[key.strip()] = unquote(value.strip())
    env_service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if env_service_name:
        attributes[SERVICE_NAME] = env_service_name
    return Resource.create(attributes)


def _has_otlp_endpoint(env: Mapping[str, str], signal: str) -> bool:
    return bool(
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def _trace_exporter_names(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        return ["otlp"] if _has_otlp_endpoint(env, "TRACES") else ["file"]
    names: list[str] = []
    for name in (part.strip() for part in raw.split(",")):
        if name not in _EXPORTER_NAMES:
            _logger.warning("OTEL_TRACES_EXPORTER: %r is not supported; ignored", name)
        elif name not in names:
            names.append(name)
    if "none" in names or not names:
        return ["none"]
    return names


def _otlp_endpoint(env: Mapping[str, str], signal: str, path: str) -> str:
    """Per the OTLP exporter spec: the signal variable is used as is, the generic one
    gets the signal path appended; default ``http://localhost:4318``."""
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _DEFAULT_OTLP_ENDPOINT
    return f"{base.rstrip('/')}/{path}"


def _otlp_setting(env: Mapping[str, str], signal: str, name: str) -> str | None:
    value = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_{name}", "").strip() or env.get(f"OTEL_EXPORTER_OTLP_{name}", "").strip()
    )
    return value or None


def _otlp_options(env: Mapping[str, str], signal: str, endpoint: str) -> _OtlpOptions:
    """Constructor arguments for an OTLP http exporter, read from ``env``.

    The exporter would read os.environ itself; passing what ``env`` holds keeps an
    explicit mapping authoritative. The timeout is in seconds, as this SDK reads it.
    """
    protocol = _otlp_setting(env, signal, "PROTOCOL")
    if protocol is not None and protocol != "http/protobuf":
        _logger.warning(
            "OTLP protocol %r is not available here; exporting http/protobuf to %s",
            protocol,
            endpoint,
        )
    options: _OtlpOptions = {"endpoint": endpoint}
    headers = _otlp_setting(env, signal, "HEADERS")
    if headers is not None:
        options["headers"] = parse_env_headers(headers, liberal=True)
    timeout = _otlp_setting(env, signal, "TIMEOUT")
    if timeout is not None:
        try:
            options["timeout"] = float(timeout)
        except ValueError:
            _logger.warning("OTLP timeout %r is not a number; using the default", timeout)
    compression = _otlp_setting(env, signal, "COMPRESSION")
    if compression is not None:
        try:
            options["compression"] = Compression(compression.lower())
        except ValueError:
            _logger.warning("OTLP compression %r is not supported; using none", compression)
    certificate = _otlp_setting(env, signal, "CERTIFICATE")
    if certificate is not None:
        options["certificate_file"] = certificate
    client_key = _otlp_setting(env, signal, "CLIENT_KEY")
    if client_key is not None:
        options["client_key_file"] = client_key
    client_certificate = _otlp_setting(env, signal, "CLIENT_CERTIFICATE")
    if client_certificate is not None:
        options["client_certificate_file"] = client_certificate
    return options


def _otlp_metric_reader(env: Mapping[str, str]) -> MetricReader | None:
    names = {part.strip().lower() for part in env.get("OTEL_METRICS_EXPORTER", "").split(",") if part.strip()}
    if "otlp" not in names:
        return None
    if not _has_otlp_endpoint(env, "METRICS"):
        _logger.warning(
            "OTEL_METRICS_EXPORTER=otlp but no OTLP endpoint is configured; metrics are served on /metrics only"
        )
        return None
    endpoint = _otlp_endpoint(env, "METRICS", "v1/metrics")
    exporter = OTLPMetricExporter(**_otlp_options(env, "METRICS", endpoint))
    interval = _int(env, "OTEL_METRIC_EXPORT_INTERVAL")
    timeout = _int(env, "OTEL_METRIC_EXPORT_TIMEOUT")
    return PeriodicExportingMetricReader(
        exporter,
        export_interval_millis=float(interval or _METRIC_EXPORT_INTERVAL_MS),
        export_timeout_millis=float(timeout or _METRIC_EXPORT_TIMEOUT_MS),
    )
