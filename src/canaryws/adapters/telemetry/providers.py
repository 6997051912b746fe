"""OpenTelemetry providers for one app instance, configured from ``OTEL_*`` variables.

Nothing here touches global state: no ``set_tracer_provider``/``set_meter_provider``, and
the Prometheus collector goes into a ``CollectorRegistry`` of its own, so several apps
(and their tests) can live in one process. The composition root hands the providers to
the FastAPI instrumentation and to its own telemetry code explicitly.

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
- ``OTEL_SDK_DISABLED=true``: no spans are sampled or exported (metrics stay on, since
  ``/metrics`` is part of the service's probes).
- ``CANARYWS_TRACE_FILE_MAX_BYTES``: optional cap on the trace file's size.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict
from urllib.parse import unquote

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler
from opentelemetry.util.re import parse_env_headers
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from canaryws.adapters.telemetry.otlp_json_file import OtlpJsonFileSpanExporter
from canaryws.adapters.telemetry.sampling import (
    ConnectionSpansSampler,
    sampler_from_environ,
)

__all__ = ["TRACE_FILE_NAME", "TelemetryProviders", "setup_telemetry"]

_logger = logging.getLogger("canaryws.telemetry")

TRACE_FILE_NAME = "traces.jsonl"
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
    """Build the tracer and meter providers for one app instance (see module doc)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    resource = _resource(service_name, env)
    sdk_disabled = _flag(env, "OTEL_SDK_DISABLED")
    names = ["none"] if sdk_disabled else _trace_exporter_names(env)
    batching = _batch_settings(env)  # validated before anything is started

    registry = CollectorRegistry()
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    otlp_metrics = _otlp_metric_reader(env)
    if otlp_metrics is not None:
        readers.append(otlp_metrics)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource)

    sampler: Sampler = ALWAYS_OFF if sdk_disabled else sampler_from_environ(env)
    tracer_provider = TracerProvider(
        sampler=ConnectionSpansSampler(sampler),
        resource=resource,
        meter_provider=meter_provider,
    )

    trace_file: Path | None = None
    file_exporter: OtlpJsonFileSpanExporter | None = None
    otlp_endpoint: str | None = None
    try:
        for name in names:
            exporter: SpanExporter
            if name == "file":
                trace_file = Path(data_dir) / TRACE_FILE_NAME
                file_exporter = OtlpJsonFileSpanExporter(
                    trace_file, max_bytes=_int(env, "CANARYWS_TRACE_FILE_MAX_BYTES")
                )
                exporter = file_exporter
            elif name == "otlp":
                otlp_endpoint = _otlp_endpoint(env, "TRACES", "v1/traces")
                exporter = OTLPSpanExporter(**_otlp_options(env, "TRACES", otlp_endpoint))
            elif name == "console":
                exporter = ConsoleSpanExporter()
            else:
                continue
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter, **batching, meter_provider=meter_provider))
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
    )


# --------------------------------------------------------------------------------------
# Environment parsing (explicit, so a mapping other than os.environ works too)
# --------------------------------------------------------------------------------------


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
