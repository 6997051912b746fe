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

from canaryws.adapters.telemetry.otlp_json_reader import parse_otlp_json_line, read_otlp_json_lines
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
    partial: bytes = b""


_FileId = tuple[int, int]  # (st_dev, st_ino)


@dataclass
class TraceTail:
    """Follows trace files as they grow (the guard): :meth:`poll` returns the summaries
    appended since the last call.

    Files are followed by identity (device and inode), like ``tail -F``: a file that is
    renamed (the trace file's rotation to ``traces.old.jsonl``) is read on from where it
    was under its new name, so nothing is read twice or skipped; a new file is read from
    its start, one that shrinks again from its start; a torn last line waits for its end.
    For a file given by name, its rotation backup (``<stem>.old<suffix>``) is read too,
    but only to finish a file that was being followed."""

    paths: Sequence[Path]
    _cursors: dict[_FileId, _Cursor] = field(default_factory=dict)

    def poll(self) -> list[Slice]:
        spans: list[dict[str, Any]] = []
        seen: set[_FileId] = set()
        for root in self.paths:  # files and directories may appear later: no error for missing ones
            if not root.is_dir():  # the rest of the file it was before its last rotation
                spans.extend(self._read_new(root.with_name(f"{root.stem}.old{root.suffix}"), seen, known_only=True))
            for path in _trace_files(root):
                spans.extend(self._read_new(path, seen))
        for gone in [key for key in self._cursors if key not in seen]:
            del self._cursors[gone]  # no name left: forget it (its inode may be reused)
        return list(summaries(spans))

    def _read_new(self, path: Path, seen: set[_FileId], *, known_only: bool = False) -> list[dict[str, Any]]:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return []
        key = (stat.st_dev, stat.st_ino)
        if key in seen or (known_only and key not in self._cursors):
            return []  # read under another name this poll, or a backup rotated before it was followed
        seen.add(key)
        cursor = self._cursors.setdefault(key, _Cursor())
        if stat.st_size < cursor.offset:
            cursor.offset, cursor.partial = 0, b""  # truncated
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
