"""Export health: the spans each trace exporter loses, and whether it works.

Losing telemetry must never slow down or stop the service: spans wait in each batch
processor's bounded queue (``OTEL_BSP_MAX_QUEUE_SIZE``) and are sent by its own thread,
so an unreachable or slow collector, or a full disk, costs spans, never batch latency or
unbounded memory. Every span lost is counted, per exporter and reason, in
``canaryws.telemetry.spans_dropped`` (Prometheus
``canaryws_telemetry_spans_dropped_total{exporter,reason}``):

- ``queue_full``: the queue was full when the span ended (the exporter is slower than
  the service produces spans); the SDK drops the oldest queued span;
- ``export_failed``: the exporter returned FAILURE (or raised) for a batch: collector
  unreachable, timed out or refusing; trace file write or rotation failed, a batch
  larger than the file's cap, or (``CANARYWS_TRACE_FILE_ROTATE=false``) beyond it;
- ``shutdown``: the span ended after the processor was shut down.

An exporter that loses spans is *degraded* (:func:`traces_status`, shown by ``/readyz``
under ``telemetry``) until an export succeeds with no queue overflow since the previous
one. One warning is logged when it becomes degraded (the trace file exporter logs its
own write failures) and one info line when it recovers; the SDK's per-batch retry and
failure records and its "Queue full" warning, emitted while a monitored processor runs,
are folded into that state instead of being logged.

Where the SDK has no public hook, this module relies on its internals (the upgrade checklist
of docs/dependencies.md, each pinned by a test in ``tests/unit/test_providers.py``): the batch
processor's internal metrics object (``BatchSpanProcessor._batch_processor._metrics``),
which the SDK calls exactly where it drops a span; the OTLP exporter's
(``OTLPSpanExporter._metrics``), the only place the exception of a failed export
reaches; and the names of the SDK loggers whose records it folds (the batch processor
logs as ``opentelemetry.sdk._shared_internal``). The SDK's own dropped-span metric
(``otel.sdk.processor.span.processed``) is no substitute: it is recorded only when
``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is set in the process environment, it is
read at collection rather than when a span is dropped, and its conventions are still in
development.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from canaryws.adapters.telemetry.logs import iso_utc

if TYPE_CHECKING:
    from canaryws.adapters.telemetry.environment import BatchSettings

__all__ = [
    "DROP_REASONS",
    "MonitoredBatchSpanProcessor",
    "MonitoredSpanExporter",
    "SpanExportMonitor",
    "fold_sdk_records",
    "observe_drops",
    "traces_status",
]

_logger = logging.getLogger("canaryws.telemetry")

DROP_REASONS = ("queue_full", "export_failed", "shutdown")
ENCODE_GROUP = 32
"""Sampled spans a pre-encoding processor (the trace file's) encodes at a time, on the thread
that ends the last of them. One at a time, as each ended, each encoding ran with the
interpreter's and the CPU's caches cold from the connection's other work: about 28 µs a
connection span in the service, against about 10 in a loop; 32 in a row cost about as much
as 10 or so one at a time (docs/benchmarks.md, "Handshakes"). The one that completes a group
pays for it (about 0.3 ms on the event loop; the tail's budget is milliseconds); those that
wait are encoded by the export thread before its next export (``OTEL_BSP_SCHEDULE_DELAY``),
by ``force_flush`` and by ``shutdown``."""
_MAX_ERROR_TEXT = 500


class SpanExportMonitor:
    """Dropped spans and health of one trace exporter (see the module doc).

    Fed by :class:`MonitoredBatchSpanProcessor` (queue overflow, from whatever thread
    ends spans) and :class:`MonitoredSpanExporter` (export results, on the processor's
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


def fold_sdk_records() -> None:
    for name in _SDK_LOGGERS:
        sdk_logger = logging.getLogger(name)
        if _FOLD_SDK_RECORDS not in sdk_logger.filters:
            sdk_logger.addFilter(_FOLD_SDK_RECORDS)  # inert outside monitored code (see the class)


class MonitoredSpanExporter(SpanExporter):
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


class MonitoredBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor (bounded queue, own thread), with its drops counted.

    opentelemetry-sdk 1.45 reports queue overflow only through internal metrics that
    are off unless ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`` is set in os.environ,
    and does not count failed exports at all; this counts both, per exporter.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        monitor: SpanExportMonitor,
        settings: BatchSettings,
        meter_provider: MeterProvider | None = None,
        pre_encode: Callable[[ReadableSpan], ReadableSpan] | None = None,
        encode_group: int = ENCODE_GROUP,
    ) -> None:
        super().__init__(MonitoredSpanExporter(exporter, monitor), **settings, meter_provider=meter_provider)
        self.monitor = monitor
        self._pre_encode = pre_encode
        self._group = max(encode_group, 1)
        self._ended: list[ReadableSpan] = []  # sampled spans ended and not encoded yet (fewer than a group)
        self._ended_lock = threading.Lock()
        self._closed = False
        inner = getattr(self, "_batch_processor", None)
        sdk_metrics = getattr(inner, "_metrics", None)
        if inner is None or not callable(getattr(sdk_metrics, "drop_items", None)):
            # A unit test pins this against the locked SDK; in production, degrade gracefully.
            _logger.warning("this opentelemetry-sdk hides its span queue; queue overflow drops are not counted")
        else:
            inner._metrics = _DropCounter(sdk_metrics, monitor)
        export = getattr(inner, "_export", None)
        if pre_encode is not None and self._group > 1:
            if not callable(export):  # pinned by a unit test, as _metrics is; degrade to a group of one
                self._group = 1
            else:
                def ended_first(strategy: Any) -> None:
                    self._encode_ended()  # what waits for its group is queued before each export
                    export(strategy)
                inner._export = ended_first  # type: ignore[union-attr]

    def on_end(self, span: ReadableSpan) -> None:
        # ``pre_encode`` (the file exporter's): the span's encoding, done on the thread ending
        # spans rather than in one burst of up to 512 on the export thread, queued in the span's
        # place (otlp_json_encoder.pre_encode, EncodedSpan); ENCODE_GROUP spans at a time.
        if self._pre_encode is not None and span.context.trace_flags.sampled:
            if self._group > 1:
                with self._ended_lock:
                    ended: list[ReadableSpan] | None = None
                    if not self._closed:
                        ended = self._ended
                        ended.append(span)
                        if len(ended) < self._group:
                            return
                        self._ended = []
                if ended is not None:
                    self._queue([self._pre_encode(each) for each in ended])
                    return
            span = self._pre_encode(span)
        self._queue((span,))

    def _queue(self, spans: Iterable[ReadableSpan]) -> None:
        # The SDK logs "Queue full, dropping Span." here; the monitor reports it instead.
        _sdk_records.capture = _DISCARD
        try:
            for span in spans:
                super().on_end(span)
        finally:
            _sdk_records.capture = None

    def _encode_ended(self) -> None:
        """Encode and queue the spans waiting for their group (fewer than ENCODE_GROUP)."""
        with self._ended_lock:
            ended, self._ended = self._ended, []
        if ended and self._pre_encode is not None:
            self._queue([self._pre_encode(each) for each in ended])

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        self._encode_ended()
        return super().force_flush(timeout_millis)

    def shutdown(self) -> None:
        with self._ended_lock:
            self._closed = True  # spans ending from now on go straight to the SDK (which drops them: shutdown)
        self._encode_ended()
        super().shutdown()  # type: ignore[no-untyped-call]


def traces_status(monitors: Sequence[SpanExportMonitor]) -> dict[str, Any]:
    """The ``telemetry`` part of ``/readyz``: ``{"traces": "ok"|"degraded"|"disabled",
    "dropped_spans": N, "exporters": [each monitor's status]}``."""
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


def observe_drops(monitors: Sequence[SpanExportMonitor]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """The callback of ``canaryws.telemetry.spans_dropped``: each monitor's drops, by reason."""
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        for monitor in monitors:
            for reason, count in monitor.dropped.items():
                yield Observation(count, {"exporter": monitor.exporter, "reason": reason})

    return observe

