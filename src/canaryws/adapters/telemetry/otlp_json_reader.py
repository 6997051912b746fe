"""Reading OTLP/JSON trace lines back as flat span dicts.

Reads the service's own trace file (:mod:`canaryws.adapters.telemetry.file_exporter`)
and OpenTelemetry Collector ``file`` exporter output alike; ``canaryws.analysis`` reads
trace files through this module, without the exporter.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "parse_otlp_json_line",
    "read_otlp_json_lines",
]

_logger = logging.getLogger("canaryws.telemetry")


def _hex_id(value: object, size: int) -> str | None:
    """Normalise a trace/span id to lowercase hex.

    Accepts hex (OTLP/JSON) and base64 (protobuf's generic JSON mapping). An empty or
    absent id (a root span's parent) becomes None.
    """
    if not value or not isinstance(value, str):
        return None
    if len(value) == size * 2:
        try:
            bytes.fromhex(value)
            return value.lower()
        except ValueError:
            pass
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value.lower()
    return raw.hex() if len(raw) == size else value.lower()


def _int(value: object) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, int | str | float):
        return int(value)
    raise ValueError(f"not an integer: {value!r}")


def _python_value(any_value: Mapping[str, Any]) -> Any:
    """Convert an OTLP/JSON ``AnyValue`` object to the Python value it carries."""
    if "stringValue" in any_value:
        return any_value["stringValue"]
    if "boolValue" in any_value:
        return bool(any_value["boolValue"])
    if "intValue" in any_value:
        return int(any_value["intValue"])
    if "doubleValue" in any_value:
        return float(any_value["doubleValue"])  # also parses "NaN" / "Infinity"
    if "arrayValue" in any_value:
        return [_python_value(v) for v in (any_value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in any_value:
        return _python_attributes((any_value["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in any_value:
        return base64.b64decode(any_value["bytesValue"])
    return None


def _python_attributes(
    key_values: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    return {kv.get("key", ""): _python_value(kv.get("value") or {}) for kv in key_values or ()}


def _flat_spans(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for resource_spans in document.get("resourceSpans") or ():
        resource = _python_attributes((resource_spans.get("resource") or {}).get("attributes"))
        # "instrumentationLibrarySpans" is the pre-1.0 OTLP name of scopeSpans.
        scope_list = resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or ()
        for scope_spans in scope_list:
            scope = scope_spans.get("scope") or scope_spans.get("instrumentationLibrary") or {}
            scope_name = scope.get("name", "")
            for span in scope_spans.get("spans") or ():
                status = span.get("status") or {}
                yield {
                    "trace_id": _hex_id(span.get("traceId"), 16),
                    "span_id": _hex_id(span.get("spanId"), 8),
                    "parent_span_id": _hex_id(span.get("parentSpanId"), 8),
                    "name": span.get("name", ""),
                    "kind": _int(span.get("kind")),
                    "start_ns": _int(span.get("startTimeUnixNano")),
                    "end_ns": _int(span.get("endTimeUnixNano")),
                    "attributes": _python_attributes(span.get("attributes")),
                    "events": [
                        {
                            "name": event.get("name", ""),
                            "time_ns": _int(event.get("timeUnixNano")),
                            "attributes": _python_attributes(event.get("attributes")),
                        }
                        for event in span.get("events") or ()
                    ],
                    "links": [
                        {
                            "trace_id": _hex_id(link.get("traceId"), 16),
                            "span_id": _hex_id(link.get("spanId"), 8),
                            "attributes": _python_attributes(link.get("attributes")),
                        }
                        for link in span.get("links") or ()
                    ],
                    "status_code": _int(status.get("code")),
                    "status_message": status.get("message", ""),
                    "resource": resource,
                    "scope": scope_name,
                }


def parse_otlp_json_line(text: str) -> list[dict[str, Any]]:
    """The spans of one OTLP/JSON line (see :func:`read_otlp_json_lines` for their shape).

    Raises ``ValueError`` when the line is not an OTLP/JSON traces document.
    """
    try:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("line is not a JSON object")
        return list(_flat_spans(document))
    except (AttributeError, TypeError) as error:
        raise ValueError(str(error)) from error


def read_otlp_json_lines(path: Path | str, *, strict: bool = False) -> Iterator[dict[str, Any]]:
    """Yield every span in an OTLP/JSON lines file as a flat dict.

    Reads the service's trace file (:mod:`canaryws.adapters.telemetry.file_exporter`) and
    OpenTelemetry Collector ``file`` exporter output (any number of
    ``resourceSpans``/``scopeSpans`` per line). Each span is::

        {"trace_id", "span_id", "parent_span_id",  # hex; parent None for a root
         "name", "kind",                  # kind: OTLP integer (1 internal, 2 server...)
         "start_ns", "end_ns",            # int nanoseconds since the epoch
         "attributes": {key: python value},
         "events": [{"name", "time_ns", "attributes"}],
         "links": [{"trace_id", "span_id", "attributes"}],
         "status_code", "status_message", # 0 unset, 1 ok, 2 error
         "resource": {key: python value}, "scope": scope name}

    Blank lines are skipped. A line that is not valid JSON (e.g. the torn last line of a
    process killed mid-write) is skipped with a warning, or raises ``ValueError`` when
    ``strict`` is true.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                spans = parse_otlp_json_line(text)
            except ValueError as error:
                if strict:
                    raise ValueError(f"{path}:{number}: not an OTLP/JSON trace line: {error}") from error
                _logger.warning(
                    "%s:%d: skipped a line that is not OTLP/JSON traces: %s",
                    path,
                    number,
                    error,
                )
                continue
            yield from spans
