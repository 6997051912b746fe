"""Span export to a local file in OTLP/JSON, one ``ExportTraceServiceRequest`` per line.

The lines have exactly the shape the OpenTelemetry Collector's ``file`` exporter
writes (``{"resourceSpans":[...]}``): camelCase field names, trace/span ids as
lowercase hex, enums as integers, 64-bit integers as decimal strings, fields holding
their default value left out (the OTLP/JSON encoding of the OTLP specification). A
file written here can be read by anything that reads Collector file-exporter output,
and :func:`read_otlp_json_lines` reads both.

The document is built directly from the SDK's ``ReadableSpan`` objects rather than
through ``encode_spans`` + ``json_format.MessageToDict``: the result is the same (a
unit test checks it against the SDK encoder, ids aside) at a fraction of the cost,
which is paid on the batch processor's thread but under the GIL.

The file is bounded by default: at ``max_bytes`` (:data:`DEFAULT_MAX_BYTES`, 256 MiB) it
is renamed to its backup (:func:`backup_path`: ``traces.jsonl`` -> ``traces.old.jsonl``)
and a new file is started, so a trace file takes at most about twice ``max_bytes`` of
disk. Both are owner-only (0600).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import math
import os
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FILE_MODE",
    "OtlpJsonFileSpanExporter",
    "backup_path",
    "encode_otlp_json",
    "parse_otlp_json_line",
    "read_otlp_json_lines",
]

_logger = logging.getLogger("canaryws.telemetry")

# OTLP `Span.SpanKind` numbers (SPAN_KIND_UNSPECIFIED = 0 is never produced by the SDK).
_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# `SpanFlags`: the SDK's OTLP encoder always sets HAS_IS_REMOTE, plus IS_REMOTE when
# the parent (or linked) context is remote.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200

_JSON = dict[str, Any]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""The trace file's default size cap (256 MiB): at it, the file is rotated."""
FILE_MODE = 0o600
"""The trace file and its backup are the owner's only: spans carry client ids and
connection details."""


# ------------------------------------------------------------------------------------
# Encoding (SDK objects -> OTLP/JSON dicts)
# ------------------------------------------------------------------------------------


def _any_value(value: object) -> _JSON:
    """Encode one attribute value as an OTLP/JSON ``AnyValue``."""
    # Exact type checks first: the common case, cheaper than an isinstance chain.
    cls = value.__class__
    if cls is str:
        return {"stringValue": value}
    if cls is bool:
        return {"boolValue": value}
    if cls is int:
        return {"intValue": str(value)}
    if cls is float:
        return {"doubleValue": _double(value)}  # type: ignore[arg-type]
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": bool(value)}
    if isinstance(value, str):
        return {"stringValue": str(value)}
    if isinstance(value, int):
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": _double(float(value))}
    if isinstance(value, bytes | bytearray):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        values = [_any_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        kvs = [_key_value(str(k), v) for k, v in value.items()]
        return {"kvlistValue": {"values": kvs} if kvs else {}}
    raise TypeError(f"unsupported attribute value type {cls.__name__}")


def _double(value: float) -> float | str:
    # proto3 JSON spells non-finite doubles as strings; JSON itself has no NaN/Infinity.
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _key_value(key: str, value: object) -> _JSON:
    if key:
        return {"key": key, "value": _any_value(value)}
    return {"value": _any_value(value)}


def _attributes(attributes: Mapping[str, object] | None) -> list[_JSON]:
    if not attributes:
        return []
    out: list[_JSON] = []
    for key, value in attributes.items():
        try:
            out.append(_key_value(key, value))
        except TypeError as error:  # mirrors the SDK encoder: skip the attribute, keep the span
            _logger.warning("span attribute %r not exported: %s", key, error)
    return out


def _trace_state(context: SpanContext) -> str:
    state = context.trace_state
    if not state:
        return ""
    return ",".join(f"{key}={value}" for key, value in state.items())


def _span_flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE
    return _FLAG_HAS_IS_REMOTE


def _encode_span(span: ReadableSpan) -> _JSON:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    out: _JSON = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    trace_state = _trace_state(context)
    if trace_state:
        out["traceState"] = trace_state
    parent = span.parent
    if parent is not None and parent.span_id:
        out["parentSpanId"] = f"{parent.span_id:016x}"
    if span.name:
        out["name"] = span.name
    out["kind"] = _KIND.get(span.kind, 0)
    if span.start_time:
        out["startTimeUnixNano"] = str(span.start_time)
    if span.end_time:
        out["endTimeUnixNano"] = str(span.end_time)
    attributes = _attributes(span.attributes)
    if attributes:
        out["attributes"] = attributes
    if span.dropped_attributes:
        out["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        events: list[_JSON] = []
        for event in span.events:
            encoded: _JSON = {}
            if event.timestamp:
                encoded["timeUnixNano"] = str(event.timestamp)
            if event.name:
                encoded["name"] = event.name
            event_attributes = _attributes(event.attributes)
            if event_attributes:
                encoded["attributes"] = event_attributes
            if event.dropped_attributes:
                encoded["droppedAttributesCount"] = event.dropped_attributes
            events.append(encoded)
        out["events"] = events
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    if span.links:
        links: list[_JSON] = []
        for link in span.links:
            link_context = link.context
            encoded = {
                "traceId": f"{link_context.trace_id:032x}",
                "spanId": f"{link_context.span_id:016x}",
            }
            link_state = _trace_state(link_context)
            if link_state:
                encoded["traceState"] = link_state
            link_attributes = _attributes(link.attributes)
            if link_attributes:
                encoded["attributes"] = link_attributes
            if link.dropped_attributes:
                encoded["droppedAttributesCount"] = link.dropped_attributes
            encoded["flags"] = _span_flags(link_context)
            links.append(encoded)
        out["links"] = links
    if span.dropped_links:
        out["droppedLinksCount"] = span.dropped_links
    status: _JSON = {}
    if span.status.description:
        status["message"] = span.status.description
    if span.status.status_code.value:
        status["code"] = span.status.status_code.value
    out["status"] = status
    out["flags"] = _span_flags(parent)
    return out


def _encode_scope(scope: InstrumentationScope | None) -> _JSON:
    if scope is None:
        return {}
    out: _JSON = {}
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    attributes = _attributes(scope.attributes)
    if attributes:
        out["attributes"] = attributes
    return out


def _encode_resource(resource: Resource) -> _JSON:
    attributes = _attributes(resource.attributes)
    return {"attributes": attributes} if attributes else {}


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> _JSON:
    """Build the OTLP/JSON ``ExportTraceServiceRequest`` document for ``spans``.

    Spans are grouped by resource, then by instrumentation scope, in first-seen order,
    exactly as the SDK's OTLP encoder groups them.
    """
    # Grouped by object identity: spans of one provider share their Resource and scope
    # objects, and hashing a Resource serialises all of its attributes.
    resources: dict[int, Resource] = {}
    scopes: dict[int, InstrumentationScope | None] = {}
    grouped: dict[int, dict[int, list[_JSON]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        by_scope = grouped.get(id(resource))
        if by_scope is None:
            by_scope = grouped[id(resource)] = {}
            resources[id(resource)] = resource
        encoded = by_scope.get(id(scope))
        if encoded is None:
            encoded = by_scope[id(scope)] = []
            scopes[id(scope)] = scope
        encoded.append(_encode_span(span))
    resource_spans: list[_JSON] = []
    for resource_key, by_scope in grouped.items():
        resource = resources[resource_key]
        scope_spans: list[_JSON] = []
        for scope_key, encoded_spans in by_scope.items():
            scope = scopes[scope_key]
            entry: _JSON = {"scope": _encode_scope(scope), "spans": encoded_spans}
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        resource_entry: _JSON = {
            "resource": _encode_resource(resource),
            "scopeSpans": scope_spans,
        }
        if resource.schema_url:
            resource_entry["schemaUrl"] = resource.schema_url
        resource_spans.append(resource_entry)
    return {"resourceSpans": resource_spans}


# ------------------------------------------------------------------------------------
# The exporter
# ------------------------------------------------------------------------------------


def backup_path(path: Path) -> Path:
    """Where a rotated trace file goes: ``traces.jsonl`` -> ``traces.old.jsonl``,
    ``traces-2.jsonl`` -> ``traces-2.old.jsonl``.

    The suffix is kept, so a directory given to ``canaryws report``/``guard`` still
    stands for both files, and the name never collides with a worker's
    ``traces-<k>.jsonl``.
    """
    return path.with_name(f"{path.stem}.old{path.suffix}")


_Note = tuple[int, str, tuple[object, ...]]  # a log record to emit once the lock is released


class OtlpJsonFileSpanExporter(SpanExporter):
    """Append each exported batch as one OTLP/JSON line to ``path``.

    Thread-safe: the batch processor's worker thread and ``force_flush`` callers may
    call concurrently. A failed write (``OSError``: disk full, I/O error, ...) makes
    ``export`` return ``FAILURE`` and counts the batch's spans in
    :attr:`dropped_spans`; one warning is logged on ``canaryws.telemetry`` per failure
    streak, and one info line on recovery. A partially written line is truncated away
    when the file allows it, otherwise the next line starts on a fresh line, so a
    reader never sees two documents glued together.

    Size. ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, 256 MiB; ``None``: no cap)
    bounds the file. With ``rotate`` (the default), a batch that would take the file
    beyond it first moves the file to :func:`backup_path` (replacing the previous
    backup) and starts a new one, so the two take at most ``2 * max_bytes`` of disk and
    the newest spans are always kept; each rotation is logged (info) and counted in
    :attr:`rotations`. Without ``rotate``, such a batch is dropped instead (the file
    keeps its oldest spans). A batch whose line would be larger than ``max_bytes`` is
    written as several lines (each an ``ExportTraceServiceRequest`` of its own), so
    only a single span larger than the cap is ever refused. A rotation that fails (the
    directory not writable, ...) drops the line like a failed write: nothing is ever
    written beyond the cap. When some lines of a batch are written and others are not,
    :attr:`dropped_spans` counts the spans lost but ``export`` returns ``FAILURE`` for
    the whole batch (the SDK's result is all or nothing). The cap applies to regular
    files only (not to ``/dev/null`` or a pipe). When ``path`` is a symbolic link, the
    file it points to is rotated, next to itself.

    Permissions. A file created here is ``0600`` (owner only), whatever the umask. An
    existing file that others may read is made owner-only when this process owns it
    (info line), and a warning says so when it cannot be.

    While writes fail, each export first checks whether ``path`` still names the open
    file; when it was replaced, re-pointed (a symlink) or deleted, the exporter opens
    the path again, so an operator can recover without a restart by moving the trace
    file somewhere with space. (A healthy exporter keeps the file it has open.)
    """

    def __init__(self, path: Path, *, max_bytes: int | None = DEFAULT_MAX_BYTES, rotate: bool = True) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max_bytes must be positive or None")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._rotate = rotate
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._regular = True
        notes: list[_Note] = []
        # Unbuffered: each line goes to the kernel in `export`, and a failed write leaves
        # no half-line in a userspace buffer to be flushed later inside another line.
        self._file: io.FileIO | None = self._open(notes)
        self._emit(notes)
        self._size = self._current_size()
        self._lock = threading.Lock()
        self._dropped = 0
        self._rotations = 0
        self._failing = False
        self._streak_dropped = 0
        self._last_error: str | None = None
        self._open_error: str | None = None
        self._needs_newline = False
        self._closed = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def backup_path(self) -> Path:
        """Where the file goes when it is rotated (next to the file a symlink points to)."""
        return backup_path(Path(os.path.realpath(self._path)))

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    @property
    def rotate(self) -> bool:
        return self._rotate

    @property
    def rotations(self) -> int:
        """How many times the file was moved to its backup since start."""
        return self._rotations

    @property
    def dropped_spans(self) -> int:
        """Spans handed to ``export`` that never reached the file.

        Counts write and rotation failures, batches refused by ``max_bytes`` and exports
        after shutdown.
        """
        return self._dropped

    @property
    def healthy(self) -> bool:
        """False from a failed write until the next successful one, and after shutdown."""
        return not self._failing and not self._closed

    @property
    def last_error(self) -> str | None:
        """Why the last failed export failed (e.g. ``No space left on device``); None
        before the first failure. Kept after recovery, for the record."""
        return self._last_error

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            lines = self._encode_lines(spans)
        except (TypeError, ValueError, msgspec.EncodeError) as error:
            with self._lock:
                self._dropped += len(spans)
                self._last_error = f"could not encode {len(spans)} spans: {error}"
            _logger.warning(
                "trace file %s: could not encode %d spans: %s",
                self._path,
                len(spans),
                error,
            )
            return SpanExportResult.FAILURE

        failure: str | None = None
        warn = False
        recovered_after: int | None = None
        notes: list[_Note] = []
        with self._lock:
            if self._closed:
                self._dropped += len(spans)
                self._last_error = "the exporter is shut down"
                return SpanExportResult.FAILURE
            had_file = self._file is not None
            if (self._failing or not had_file) and self._reopen_if_replaced(notes):
                reopened = "the path names another file now; reopened it" if had_file else "opened it again"
                notes.append((logging.INFO, "trace file %s: %s", (self._path, reopened)))
            for line, count in lines:
                line_failure: str | None
                if self._file is None:
                    line_failure = self._open_error or "no trace file is open"
                else:
                    line_failure = self._make_room(len(line) + (1 if self._needs_newline else 0), notes)
                if line_failure is None:
                    try:
                        self._write_line(line)
                    except OSError as error:
                        line_failure = error.strerror or str(error)
                if line_failure is not None:
                    failure = line_failure
                    self._dropped += count
                    self._streak_dropped += count
            if failure is None:
                if self._failing:
                    recovered_after = self._streak_dropped
                    self._failing = False
                    self._streak_dropped = 0
            else:
                self._last_error = failure
                warn = not self._failing  # one warning per failure streak
                self._failing = True
        # Log outside the lock: a log handler must never wait on (or re-enter) export.
        self._emit(notes)
        if failure is not None:
            if warn:
                _logger.warning(
                    "trace file %s: write failed (%s); dropping spans until writes succeed again",
                    self._path,
                    failure,
                )
            return SpanExportResult.FAILURE
        if recovered_after is not None:
            _logger.info(
                "trace file %s: writes succeed again after %d dropped spans",
                self._path,
                recovered_after,
            )
        return SpanExportResult.SUCCESS

    def _encode_lines(self, spans: Sequence[ReadableSpan]) -> list[tuple[bytes, int]]:
        """``spans`` as OTLP/JSON lines, with the number of spans in each: one line, or,
        when that one would be larger than ``max_bytes``, as many as it takes (halving)."""
        line = msgspec.json.encode(encode_otlp_json(spans)) + b"\n"
        if self._max_bytes is None or len(line) <= self._max_bytes or len(spans) == 1:
            return [(line, len(spans))]
        half = len(spans) // 2
        return self._encode_lines(spans[:half]) + self._encode_lines(spans[half:])

    def _make_room(self, needed: int, notes: list[_Note]) -> str | None:
        """Under the lock: rotate when ``needed`` more bytes would take the file beyond
        ``max_bytes``. None when the line may be written, else why it may not."""
        cap = self._max_bytes
        if cap is None or not self._regular or self._size + needed <= cap:
            return None
        if needed > cap:
            return f"a span of {needed} bytes is larger than max_bytes={cap}"
        if not self._rotate:
            return f"the file would exceed max_bytes={cap}"
        # The path may name another file by now (moved away, replaced): rotate that one.
        if self._reopen_if_replaced(notes):
            notes.append((logging.INFO, "trace file %s: the path names another file now; reopened it", (self._path,)))
            if not self._regular or self._size + needed <= cap:
                return None
        real = Path(os.path.realpath(self._path))
        backup = backup_path(real)
        try:
            os.replace(real, backup)
        except OSError as error:
            return f"could not rotate {real} to {backup.name}: {error.strerror or error}"
        previous, self._file = self._file, None
        if previous is not None:
            with contextlib.suppress(OSError):  # its lines are written: nothing to lose
                previous.close()
        rotated, self._size = self._size, 0
        self._needs_newline = False
        self._rotations += 1
        notes.append(
            (
                logging.INFO,
                "trace file %s reached max_bytes=%d: moved its %d bytes to %s (replacing the previous backup) "
                "and started a new file",
                (self._path, cap, rotated, backup),
            )
        )
        try:
            self._file = self._open(notes)
        except OSError as error:
            self._open_error = f"could not start a new trace file after rotating: {error.strerror or error}"
            return self._open_error
        self._size = self._current_size()
        return None

    def _open(self, notes: list[_Note]) -> io.FileIO:
        """Open ``path`` for appending, creating it owner-only; make an existing file that
        others may read owner-only when it is ours. Sets ``_regular``."""
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            info = os.fstat(fd)
            self._regular = stat.S_ISREG(info.st_mode)
            mode = stat.S_IMODE(info.st_mode)
            if self._regular and mode & 0o077:
                if info.st_uid == os.geteuid():
                    try:
                        os.fchmod(fd, mode & ~0o077)
                        notes.append(
                            (
                                logging.INFO,
                                "trace file %s was readable by others (mode %04o); made it owner-only (%04o)",
                                (self._path, mode, mode & ~0o077),
                            )
                        )
                    except OSError as error:
                        notes.append(
                            (
                                logging.WARNING,
                                "trace file %s is readable by others (mode %04o) and could not be made owner-only: %s",
                                (self._path, mode, error.strerror or error),
                            )
                        )
                else:
                    notes.append(
                        (
                            logging.WARNING,
                            "trace file %s is readable by others (mode %04o) and belongs to another user "
                            "(uid %d): left as it is",
                            (self._path, mode, info.st_uid),
                        )
                    )
            return open(fd, "ab", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _emit(notes: list[_Note]) -> None:
        for level, message, args in notes:
            _logger.log(level, message, *args)

    def _write_line(self, line: bytes) -> None:
        """Write ``line`` completely or raise; the file always ends on a line boundary
        (or the next write starts with a newline)."""
        assert self._file is not None  # checked by export
        data = b"\n" + line if self._needs_newline else line
        start = self._size
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                if not written:  # 0/None would loop forever; treat as "no space"
                    raise OSError(28, os.strerror(28))
                view = view[written:]
        except OSError:
            if len(view) != len(data):  # something reached the file: cut it off again
                try:
                    self._file.truncate(start)
                    self._needs_newline = False
                except OSError:
                    self._needs_newline = True
            raise
        self._needs_newline = False
        self._size = start + len(data)

    def _reopen_if_replaced(self, notes: list[_Note]) -> bool:
        """Open ``path`` again when it no longer names the open file, or no file is open
        (called under the lock). True when a file was (re)opened."""
        if self._file is not None:
            try:
                opened = os.fstat(self._file.fileno())
                named = os.stat(self._path)
                if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
                    return False
            except FileNotFoundError:
                pass  # deleted: create it again
            except OSError:
                return False
        try:
            replacement = self._open(notes)
        except OSError as error:
            if self._file is None:
                self._open_error = f"could not open the trace file: {error.strerror or error}"
            return False  # still unusable; the write below fails on the old file and counts
        previous, self._file = self._file, replacement
        self._size = self._current_size()
        self._needs_newline = False
        self._open_error = None
        if previous is not None:
            with contextlib.suppress(OSError):  # the old file was failing anyway
                previous.close()
        return True

    def _current_size(self) -> int:
        if self._file is None:
            return 0
        try:
            return os.fstat(self._file.fileno()).st_size
        except OSError:
            return 0

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._file is None:
                return
            try:
                self._file.close()
            except OSError as error:
                _logger.warning(
                    "trace file %s: close failed (%s)",
                    self._path,
                    error.strerror or error,
                )

    def force_flush(self, timeout_millis: int = 30000) -> bool:  # noqa: ARG002 - fsync is not boundable
        """Make written lines durable (``fsync``); writes are never buffered here."""
        with self._lock:
            if self._closed:
                return False
            if self._file is None:
                return True  # nothing written since the last rotation could not open a file
            try:
                os.fsync(self._file.fileno())
            except OSError as error:
                # Character devices (e.g. /dev/null) reject fsync with EINVAL.
                return error.errno == 22
        return True


# ------------------------------------------------------------------------------------
# Reading (OTLP/JSON lines -> flat span dicts)
# ------------------------------------------------------------------------------------


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

    Reads this module's exporter output and OpenTelemetry Collector ``file`` exporter
    output (any number of ``resourceSpans``/``scopeSpans`` per line). Each span is::

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
