"""The telemetry's environment: ``OTEL_*``, ``CANARYWS_TRACE_FILE_*`` and ``CANARYWS_WORKER``.

Everything here is read from an explicit mapping (``os.environ`` unless the caller passes
another) and handed to the SDK as arguments, so that several apps with different settings
(and their tests) can live in one process. Like the
OpenTelemetry SDK's own environment-driven set-up (``opentelemetry.sdk._configuration``),
it is arranged by signal: the resource, the traces, the metrics, and the OTLP exporter
settings both share. :func:`canaryws.adapters.telemetry.providers.setup_telemetry`
assembles the providers from what this module reads.

Environment (read from the ``environ`` mapping given, ``os.environ`` by default):

- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource (the service name
  argument is the default).
- ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler for batch spans
  (default ``parentbased_always_on``; read by
  :func:`canaryws.adapters.telemetry.sampling.sampler_from_environ`).
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


A value the SDK would refuse (a batch setting, the trace file's limits, a worker number)
raises ``ValueError`` naming it; one it would ignore is logged as a warning and the
default used, as the SDK does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import NamedTuple, TypedDict
from urllib.parse import unquote

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.util.re import parse_env_headers

from canaryws.adapters.telemetry.file_exporter import DEFAULT_MAX_BYTES

__all__ = [
    "MIN_TRACE_FILE_MAX_BYTES",
    "TRACE_FILE_MAX_BYTES_VAR",
    "TRACE_FILE_NAME",
    "TRACE_FILE_ROTATE_VAR",
    "WORKER_VAR",
    "BatchSettings",
    "OtlpMetricsExport",
    "OtlpOptions",
    "TraceFileLimits",
    "batch_settings",
    "otlp_endpoint",
    "otlp_metrics_export",
    "otlp_options",
    "resource_from_environ",
    "sdk_disabled",
    "trace_exporter_names",
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


class OtlpOptions(TypedDict, total=False):
    """Constructor arguments of an OTLP http exporter (:func:`otlp_options`)."""

    endpoint: str
    headers: Mapping[str, str]
    timeout: float
    compression: Compression
    certificate_file: str
    client_key_file: str
    client_certificate_file: str


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def sdk_disabled(env: Mapping[str, str]) -> bool:
    """``OTEL_SDK_DISABLED=true``: no spans are sampled or exported."""
    return _flag(env, "OTEL_SDK_DISABLED")


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


# --------------------------------------------------------------------------------------
# Resource
# --------------------------------------------------------------------------------------


def resource_from_environ(service_name: str, env: Mapping[str, str]) -> Resource:
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


# --------------------------------------------------------------------------------------
# Traces: exporters, the batch processor, the trace file
# --------------------------------------------------------------------------------------


def trace_exporter_names(env: Mapping[str, str]) -> list[str]:
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


class BatchSettings(TypedDict):
    max_queue_size: int
    schedule_delay_millis: int
    max_export_batch_size: int
    export_timeout_millis: int


def batch_settings(env: Mapping[str, str]) -> BatchSettings:
    """OTEL_BSP_* from ``env``; raises ValueError for values the SDK would refuse."""

    def value(name: str) -> int:
        parsed = _int(env, name)
        return _BSP_DEFAULTS[name] if parsed is None else parsed

    settings = BatchSettings(
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


# --------------------------------------------------------------------------------------
# Metrics: OTLP export besides the Prometheus endpoint
# --------------------------------------------------------------------------------------


class OtlpMetricsExport(NamedTuple):
    """How metrics also leave by OTLP: the exporter's arguments and the reader's period."""

    options: OtlpOptions
    """Constructor arguments of the OTLP http metric exporter (:func:`otlp_options`)."""
    export_interval_millis: float
    export_timeout_millis: float


def otlp_metrics_export(env: Mapping[str, str]) -> OtlpMetricsExport | None:
    """``OTEL_METRICS_EXPORTER`` containing ``otlp``, with an OTLP endpoint configured: the
    OTLP metric export's settings. None otherwise (a warning when ``otlp`` is asked for
    but no endpoint is configured)."""
    names = {part.strip().lower() for part in env.get("OTEL_METRICS_EXPORTER", "").split(",") if part.strip()}
    if "otlp" not in names:
        return None
    if not _has_otlp_endpoint(env, "METRICS"):
        _logger.warning(
            "OTEL_METRICS_EXPORTER=otlp but no OTLP endpoint is configured; metrics are served on /metrics only"
        )
        return None
    endpoint = otlp_endpoint(env, "METRICS", "v1/metrics")
    options = otlp_options(env, "METRICS", endpoint)
    interval = _int(env, "OTEL_METRIC_EXPORT_INTERVAL")
    timeout = _int(env, "OTEL_METRIC_EXPORT_TIMEOUT")
    return OtlpMetricsExport(
        options,
        export_interval_millis=float(interval or _METRIC_EXPORT_INTERVAL_MS),
        export_timeout_millis=float(timeout or _METRIC_EXPORT_TIMEOUT_MS),
    )


# --------------------------------------------------------------------------------------
# OTLP exporters (both signals)
# --------------------------------------------------------------------------------------


def _has_otlp_endpoint(env: Mapping[str, str], signal: str) -> bool:
    return bool(
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def otlp_endpoint(env: Mapping[str, str], signal: str, path: str) -> str:
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


def otlp_options(env: Mapping[str, str], signal: str, endpoint: str) -> OtlpOptions:
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
    options: OtlpOptions = {"endpoint": endpoint}
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
