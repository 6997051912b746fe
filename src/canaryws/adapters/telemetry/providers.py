"""OpenTelemetry providers for one app instance: :func:`setup_telemetry`, the entry point.

Nothing here touches global state: no ``set_tracer_provider``/``set_meter_provider``, and
the Prometheus collector goes into a ``CollectorRegistry`` of its own, so several apps
(and their tests) can live in one process. (The one process-wide change is a logging
filter on two SDK loggers, inert outside the monitored processors; see
:mod:`canaryws.adapters.telemetry.export_health`.) The composition root hands the
providers to the FastAPI instrumentation and to its own telemetry code explicitly.

Like the OpenTelemetry SDK's environment-driven set-up (``opentelemetry.sdk._configuration``),
the assembly is split by signal, from settings read beforehand:

- :mod:`canaryws.adapters.telemetry.environment`: what the ``OTEL_*``,
  ``CANARYWS_TRACE_FILE_*`` and ``CANARYWS_WORKER`` variables ask for (every variable
  read is listed there), validated before anything is started;
- metrics (:func:`_init_metrics`): the meter provider with its Prometheus reader (always:
  ``/metrics``), an OTLP reader when asked for, and :func:`bounded_http_views`;
- traces (:func:`_init_tracing`): the tracer provider with the sampler
  (:mod:`canaryws.adapters.telemetry.sampling`) and one monitored batch processor per
  exporter (the trace file: :mod:`canaryws.adapters.telemetry.file_exporter`), whose
  dropped spans and health :mod:`canaryws.adapters.telemetry.export_health` keeps.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import DropAggregation, ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from canaryws.adapters.telemetry.environment import (
    BatchSettings,
    TraceFileLimits,
    batch_settings,
    otlp_endpoint,
    otlp_metrics_export,
    otlp_options,
    resource_from_environ,
    sdk_disabled,
    trace_exporter_names,
    trace_file_limits,
    trace_file_name,
)
from canaryws.adapters.telemetry.export_health import (
    MonitoredBatchSpanProcessor,
    SpanExportMonitor,
    fold_sdk_records,
    observe_drops,
    traces_status,
)
from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
from canaryws.adapters.telemetry.otlp_json_encoder import pre_encode
from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler, sampler_from_environ

__all__ = [
    "HTTP_DURATION_BUCKETS_MS",
    "HTTP_METRIC_ATTRIBUTES",
    "TelemetryProviders",
    "bounded_http_views",
    "setup_telemetry",
]

_logger = logging.getLogger("canaryws.telemetry")


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
    """One per trace exporter: dropped spans and health (:mod:`canaryws.adapters.telemetry.export_health`)."""
    duration_registry: CollectorRegistry | None = None
    """Where the batch-duration histogram, read from the connection summaries, is served
    from (:class:`canaryws.adapters.telemetry.totals.DurationHistograms`): the Prometheus
    registry, unless metrics also leave by OTLP (then the OTel histogram carries it to
    both) or the SDK is disabled."""

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: ``{"traces": "ok"|"degraded"|"disabled", "dropped_spans": N,
        "exporters": [per-exporter state, drops by reason, last error]}``."""
        return traces_status(self.span_export_monitors)

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



def setup_telemetry(
    *,
    data_dir: Path,
    service_name: str = "canaryws",
    environ: Mapping[str, str] | None = None,
) -> TelemetryProviders:
    """Build the tracer and meter providers for one app instance (see the module doc)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    resource = resource_from_environ(service_name, env)
    disabled = sdk_disabled(env)
    names = ["none"] if disabled else trace_exporter_names(env)
    batching = batch_settings(env)  # validated before anything is started
    file_limits = trace_file_limits(env)  # validated even when no trace file is written: a typo is a typo

    metrics = _init_metrics(env, resource)
    traces = _init_tracing(
        env,
        resource,
        metrics.meter_provider,
        names=names,
        sdk_disabled=disabled,
        batching=batching,
        file_limits=file_limits,
        data_dir=Path(data_dir),
    )
    return TelemetryProviders(
        tracer_provider=traces.tracer_provider,
        meter_provider=metrics.meter_provider,
        prometheus_registry=metrics.registry,
        trace_exporter_kind=",".join(names),
        trace_file=traces.trace_file,
        file_exporter=traces.file_exporter,
        otlp_traces_endpoint=traces.otlp_endpoint,
        span_export_monitors=traces.monitors,
        duration_registry=metrics.registry if not metrics.otlp and not disabled else None,
    )


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


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


class _Metrics(NamedTuple):
    meter_provider: MeterProvider
    registry: CollectorRegistry
    """The Prometheus registry ``/metrics`` serves."""
    otlp: bool
    """Metrics also leave by OTLP."""


def _init_metrics(env: Mapping[str, str], resource: Resource) -> _Metrics:
    """The meter provider: the Prometheus reader, always; an OTLP reader when asked for."""
    registry = CollectorRegistry()
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp_metrics = _otlp_metric_reader(env)
    if otlp_metrics is not None:
        readers.append(otlp_metrics)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource, views=bounded_http_views())
    return _Metrics(meter_provider, registry, otlp=otlp_metrics is not None)


def _otlp_metric_reader(env: Mapping[str, str]) -> MetricReader | None:
    export = otlp_metrics_export(env)
    if export is None:
        return None
    return PeriodicExportingMetricReader(
        OTLPMetricExporter(**export.options),
        export_interval_millis=export.export_interval_millis,
        export_timeout_millis=export.export_timeout_millis,
    )


# --------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------


@dataclass
class _Tracing:
    tracer_provider: TracerProvider
    monitors: list[SpanExportMonitor] = field(default_factory=list)
    trace_file: Path | None = None
    file_exporter: OtlpJsonFileSpanExporter | None = None
    otlp_endpoint: str | None = None


def _init_tracing(
    env: Mapping[str, str],
    resource: Resource,
    meter_provider: MeterProvider,
    *,
    names: list[str],
    sdk_disabled: bool,
    batching: BatchSettings,
    file_limits: TraceFileLimits,
    data_dir: Path,
) -> _Tracing:
    """The tracer provider: the sampler, and one monitored batch processor per exporter in
    ``names``, with their dropped spans counted on ``meter_provider``. Raises (having shut
    down both providers) when an exporter cannot be set up, e.g. the trace file cannot be
    opened."""
    sampler: Sampler = ALWAYS_OFF if sdk_disabled else sampler_from_environ(env)
    tracer_provider = TracerProvider(
        sampler=ConnectionSpansSampler(sampler),
        resource=resource,
        meter_provider=meter_provider,
    )
    tracing = _Tracing(tracer_provider)
    meter_provider.get_meter("canaryws.telemetry").create_observable_counter(
        "canaryws.telemetry.spans_dropped",
        callbacks=[observe_drops(tracing.monitors)],
        unit="{span}",
        description="Spans lost before reaching the trace exporter's destination, by exporter and reason",
    )
    fold_sdk_records()
    try:
        for name in names:
            exporter: SpanExporter
            pre: Callable[[ReadableSpan], ReadableSpan] | None = None
            if name == "file":
                trace_file = tracing.trace_file = data_dir / trace_file_name(env)
                file_exporter = tracing.file_exporter = OtlpJsonFileSpanExporter(
                    trace_file, max_bytes=file_limits.max_bytes, rotate=file_limits.rotate
                )
                meter_provider.get_meter("canaryws.telemetry").create_observable_counter(
                    "canaryws.telemetry.trace_file_rotations",
                    callbacks=[_observe_rotations(file_exporter)],
                    unit="{rotation}",
                    description="Times the local trace file reached its size cap and was moved to its backup",
                )
                exporter = file_exporter
                pre = pre_encode
                monitor = SpanExportMonitor(name, str(trace_file), exporter_logs_failures=True)
            elif name == "otlp":
                endpoint = tracing.otlp_endpoint = otlp_endpoint(env, "TRACES", "v1/traces")
                exporter = OTLPSpanExporter(**otlp_options(env, "TRACES", endpoint))
                monitor = SpanExportMonitor(name, endpoint)
            elif name == "console":
                exporter = ConsoleSpanExporter()
                monitor = SpanExportMonitor(name)
            else:
                continue
            processor = MonitoredBatchSpanProcessor(exporter, monitor, batching, meter_provider, pre_encode=pre)
            tracer_provider.add_span_processor(processor)
            tracing.monitors.append(monitor)
    except BaseException:
        # e.g. the trace file cannot be opened: release what was started, then fail loudly.
        tracer_provider.shutdown()
        meter_provider.shutdown(timeout_millis=1000)
        raise
    return tracing


def _observe_rotations(exporter: OtlpJsonFileSpanExporter) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(exporter.rotations)

    return observe

