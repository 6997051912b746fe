"""Reading connection summaries from OTLP/JSON trace files, whole or as they grow.

Both the service's own trace file and the OpenTelemetry Collector's ``file`` exporter
output are OTLP/JSON lines; a directory stands for the ``*.json``/``*.jsonl`` files in it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canaryws.adapters.telemetry.otlp_json_file import parse_otlp_json_line, read_otlp_json_lines
from canaryws.analysis.units import summaries
from canaryws.core.summary import ConnectionSummary

log = logging.getLogger("canaryws.analysis")

Slice = tuple[ConnectionSummary, int, int]  # a summary with its span's start and end (ns)


def _trace_files(path: Path) -> list[Path]:
    """A file as itself; a directory as its ``*.json``/``*.jsonl`` files, sorted; else nothing."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    return [path] if path.is_file() else []


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory as its ``*.json``/``*.jsonl`` files, sorted. Missing paths raise."""
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such trace file or directory: {path}")
        files.extend(_trace_files(path))
    return files


def in_window(slices: Iterable[Slice], since_ns: int | None, until_ns: int | None) -> Iterator[Slice]:
    """The slices that ended within ``[since_ns, until_ns]`` (either bound may be open)."""
    for item in slices:
        end = item[2]
        if (since_ns is None or end >= since_ns) and (until_ns is None or end <= until_ns):
            yield item


def load_slices(files: Sequence[Path], since_ns: int | None = None, until_ns: int | None = None) -> list[Slice]:
    """Every connection summary in ``files`` that ended within the window."""
    result: list[Slice] = []
    for path in files:
        result.extend(in_window(summaries(read_otlp_json_lines(path)), since_ns, until_ns))
    return result


@dataclass
class _Cursor:
    offset: int = 0
    inode: int | None = None
    partial: bytes = b""


@dataclass
class TraceTail:
    """Follows trace files as they grow (the guard): :meth:`poll` returns the summaries
    appended since the last call. A file that shrinks or is replaced is read again from
    its start; a torn last line waits for its end."""

    paths: Sequence[Path]
    _cursors: dict[Path, _Cursor] = field(default_factory=dict)

    def poll(self) -> list[Slice]:
        spans: list[dict[str, Any]] = []
        for root in self.paths:  # files and directories may appear later: no error for missing ones
            for path in _trace_files(root):
                spans.extend(self._read_new(path))
        return list(summaries(spans))

    def _read_new(self, path: Path) -> list[dict[str, Any]]:
        cursor = self._cursors.setdefault(path, _Cursor())
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return []
        if cursor.inode not in (None, stat.st_ino) or stat.st_size < cursor.offset:
            cursor.offset, cursor.partial = 0, b""  # rotated or truncated
        cursor.inode = stat.st_ino
        if stat.st_size == cursor.offset:
            return []
        with open(path, "rb") as handle:
            handle.seek(cursor.offset)
            data = handle.read()
        cursor.offset += len(data)
        data = cursor.partial + data
        lines = data.split(b"\n")
        cursor.partial = lines.pop()  # b"" when data ended with a newline
        spans: list[dict[str, Any]] = []
        for line in lines:
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                spans.extend(parse_otlp_json_line(text))
            except ValueError as error:
                log.warning("%s: skipped a line that is not OTLP/JSON traces: %s", path, error)
        return spans


__all__ = ["Slice", "TraceTail", "expand_paths", "in_window", "load_slices"]
