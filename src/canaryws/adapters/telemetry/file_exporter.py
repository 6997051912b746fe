"""Span export to a local file in OTLP/JSON lines, bounded by size (rotation).

Each exported batch is one line: an ``ExportTraceServiceRequest`` in OTLP/JSON
(:func:`canaryws.adapters.telemetry.otlp_json_encoder.encode_otlp_json`), the shape the
OpenTelemetry Collector's ``file`` exporter writes, so anything that reads Collector
file-exporter output reads this file too (and
:func:`canaryws.adapters.telemetry.otlp_json_reader.read_otlp_json_lines` reads both).

The file is bounded by default: at ``max_bytes`` (:data:`DEFAULT_MAX_BYTES`, 256 MiB) it
is renamed to its backup (:func:`backup_path`: ``traces.jsonl`` -> ``traces.old.jsonl``)
and a new file is started, so a trace file takes at most about twice ``max_bytes`` of
disk. Both are owner-only (0600).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from canaryws.adapters.telemetry.otlp_json_encoder import encode_otlp_json

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FILE_MODE",
    "OtlpJsonFileSpanExporter",
    "backup_path",
]

_logger = logging.getLogger("canaryws.telemetry")

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""The trace file's default size cap (256 MiB): at it, the file is rotated."""
FILE_MODE = 0o600
"""The trace file and its backup are the owner's only: spans carry client ids and
connection details."""


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

