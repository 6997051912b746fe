"""Reading connection summaries back from OTLP/JSON trace files, whole (report) or tailed (guard)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.analysis.traces import Slice, TraceTail, expand_paths, load_slices
from canaryws.core.compare import compare
from canaryws.core.strategies import LENIENT, STRICT
from canaryws.core.summary import END_CLOSED, END_INTERVAL, ConnectionSummary

S = 1_000_000_000
T0 = 1_700_000_000 * S


class TraceWriter:
    """The service's own span pipeline, writing to one trace file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(path)))
        self.meter_provider = MeterProvider()
        self.telemetry = RecordsTelemetry(self.tracer_provider, self.meter_provider)

    def emit(self, summary: ConnectionSummary, start_ns: int, end_ns: int) -> None:
        self.telemetry.emit_summary(summary, start_ns, end_ns, None)

    def emit_batch_span(self) -> None:
        self.telemetry.start_batch(None).end()

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def writers() -> Iterator[list[TraceWriter]]:
    opened: list[TraceWriter] = []
    yield opened
    for writer in opened:
        writer.close()


def open_writer(writers: list[TraceWriter], path: Path) -> TraceWriter:
    writer = TraceWriter(path)
    writers.append(writer)
    return writer


def make_summary(connection: str, seq: int = 0, *, end: str = END_INTERVAL, batches: int = 1) -> ConnectionSummary:
    summary = ConnectionSummary(connection, f"client-{connection}", "strict", 1, True, "rev", 0.5, seq=seq, end=end,
                                close_code=1000 if end == END_CLOSED else None)
    for _ in range(batches):
        records = ["a", "", "b\x00", "x" * 20]
        outcome = STRICT.process(records, 10)
        summary.add(outcome, 0.003)
        summary.add_shadow(compare(outcome, LENIENT.process(records, 10)))
    return summary


def ids(slices: list[Slice]) -> list[tuple[str, int]]:
    return [(summary.connection_id, summary.seq) for summary, _, _ in slices]


# ---------------------------------------------------------------------- TraceTail


def test_poll_returns_only_new_summaries(tmp_path: Path, writers: list[TraceWriter]) -> None:
    path = tmp_path / "traces.jsonl"
    writer = open_writer(writers, path)
    tail = TraceTail([path])
    assert tail.poll() == []

    first = make_summary("c1", 0)
    writer.emit(first, T0, T0 + S)
    writer.emit_batch_span()  # not a summary: ignored
    writer.emit(make_summary("c2", 0), T0 + S, T0 + 2 * S)
    polled = tail.poll()
    assert ids(polled) == [("c1", 0), ("c2", 0)]
    assert polled[0] == (first, T0, T0 + S)  # every field survives the file
    assert tail.poll() == []

    writer.emit(make_summary("c1", 1, end=END_CLOSED), T0 + S, T0 + 3 * S)
    polled = tail.poll()
    assert ids(polled) == [("c1", 1)]
    assert polled[0][0].end == END_CLOSED and polled[0][0].close_code == 1000
    assert polled[0][1:] == (T0 + S, T0 + 3 * S)
    assert tail.poll() == []


def test_a_torn_last_line_is_held_until_completed(tmp_path: Path, writers: list[TraceWriter]) -> None:
    source = tmp_path / "source.jsonl"
    writer = open_writer(writers, source)
    writer.emit(make_summary("c1"), T0, T0 + S)
    writer.emit(make_summary("c2"), T0, T0 + 2 * S)
    line1, line2 = source.read_bytes().splitlines(keepends=True)

    path = tmp_path / "tailed.jsonl"
    path.write_bytes(line1 + line2[:40])
    tail = TraceTail([path])
    assert ids(tail.poll()) == [("c1", 0)]
    assert tail.poll() == []
    with path.open("ab") as handle:
        handle.write(line2[40:-1])  # still no newline
    assert tail.poll() == []
    with path.open("ab") as handle:
        handle.write(b"\n")
    polled = tail.poll()
    assert ids(polled) == [("c2", 0)]
    assert polled[0][2] == T0 + 2 * S
    assert tail.poll() == []


def test_a_truncated_file_is_read_again_from_the_start(tmp_path: Path, writers: list[TraceWriter]) -> None:
    path = tmp_path / "traces.jsonl"
    writer = open_writer(writers, path)
    for i in range(3):
        writer.emit(make_summary(f"old{i}"), T0, T0 + S)
    tail = TraceTail([path])
    assert len(tail.poll()) == 3
    inode = path.stat().st_ino
    os.truncate(path, 0)
    writer.emit(make_summary("new"), T0, T0 + S)
    assert path.stat().st_ino == inode
    assert ids(tail.poll()) == [("new", 0)]
    assert tail.poll() == []


def test_a_replaced_file_is_read_again_from_the_start(tmp_path: Path, writers: list[TraceWriter]) -> None:
    path = tmp_path / "traces.jsonl"
    writer = open_writer(writers, path)
    writer.emit(make_summary("old"), T0, T0 + S)
    tail = TraceTail([path])
    assert ids(tail.poll()) == [("old", 0)]

    # a new file, larger than what was read, moved into place (log rotation)
    replacement = tmp_path / "replacement.jsonl"
    other = open_writer(writers, replacement)
    for i in range(3):
        other.emit(make_summary(f"new{i}"), T0, T0 + S)
    assert replacement.stat().st_size > path.stat().st_size
    os.replace(replacement, path)
    assert ids(tail.poll()) == [("new0", 0), ("new1", 0), ("new2", 0)]
    assert tail.poll() == []


def test_a_missing_file_gives_nothing_until_it_appears(tmp_path: Path, writers: list[TraceWriter]) -> None:
    path = tmp_path / "later.jsonl"
    tail = TraceTail([path])
    assert tail.poll() == []
    writer = open_writer(writers, path)
    writer.emit(make_summary("c1"), T0, T0 + S)
    assert ids(tail.poll()) == [("c1", 0)]
    path.unlink()
    assert tail.poll() == []


def test_a_line_that_is_not_otlp_json_is_skipped(tmp_path: Path, writers: list[TraceWriter],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "traces.jsonl"
    writer = open_writer(writers, path)
    tail = TraceTail([path])
    with path.open("ab") as handle:
        handle.write(b"{not json\n\n[1, 2]\n")
    writer.emit(make_summary("c1"), T0, T0 + S)
    assert ids(tail.poll()) == [("c1", 0)]
    assert "not OTLP/JSON" in caplog.text


def test_a_directory_stands_for_its_json_files(tmp_path: Path, writers: list[TraceWriter]) -> None:
    directory = tmp_path / "collector"
    directory.mkdir()
    a = open_writer(writers, directory / "a.jsonl")
    ignored = open_writer(writers, directory / "notes.txt")
    a.emit(make_summary("a1"), T0, T0 + S)
    ignored.emit(make_summary("txt"), T0, T0 + S)
    tail = TraceTail([directory])
    assert ids(tail.poll()) == [("a1", 0)]

    b = open_writer(writers, directory / "b.json")  # a file that appears later is followed too
    b.emit(make_summary("b1"), T0, T0 + S)
    a.emit(make_summary("a2"), T0, T0 + S)
    assert sorted(ids(tail.poll())) == [("a2", 0), ("b1", 0)]
    assert tail.poll() == []


# ---------------------------------------------------------------- expand_paths


def test_expand_paths(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    for name in ("b.jsonl", "a.json", "c.txt", "z.jsonl.gz"):
        (directory / name).write_text("")
    (directory / "sub.json").mkdir()  # a directory named like a trace file is not one
    single = tmp_path / "spans.log"
    single.write_text("")
    assert expand_paths([single, directory]) == [single, directory / "a.json", directory / "b.jsonl"]
    assert expand_paths([]) == []
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        expand_paths([directory, tmp_path / "missing.jsonl"])


# ----------------------------------------------------------------- load_slices


def test_load_slices_filters_on_span_end(tmp_path: Path, writers: list[TraceWriter]) -> None:
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    w1, w2 = open_writer(writers, first), open_writer(writers, second)
    # ends at T0+1s, +2s, +3s (starts all before the window, so the filter is on the end)
    w1.emit(make_summary("e1"), T0 - 100 * S, T0 + 1 * S)
    w2.emit(make_summary("e2"), T0 - 100 * S, T0 + 2 * S)
    w1.emit(make_summary("e3"), T0 + 2 * S, T0 + 3 * S)
    w1.emit_batch_span()
    files = [first, second]
    assert sorted(ids(load_slices(files))) == [("e1", 0), ("e2", 0), ("e3", 0)]
    assert sorted(ids(load_slices(files, since_ns=T0 + 2 * S))) == [("e2", 0), ("e3", 0)]
    assert sorted(ids(load_slices(files, until_ns=T0 + 2 * S))) == [("e1", 0), ("e2", 0)]
    assert ids(load_slices(files, since_ns=T0 + 2 * S, until_ns=T0 + 2 * S)) == [("e2", 0)]
    assert ids(load_slices(files, since_ns=T0 + 2 * S + 1, until_ns=T0 + 3 * S - 1)) == []
    assert load_slices([]) == []


def test_load_slices_reads_the_summaries_back_unchanged(tmp_path: Path, writers: list[TraceWriter]) -> None:
    path = tmp_path / "t.jsonl"
    writer = open_writer(writers, path)
    summary = make_summary("c1", 4, end=END_CLOSED, batches=3)
    summary.add_error("bad_frame")
    summary.shadow_skipped = 1
    writer.emit(summary, T0, T0 + 7 * S)
    ((back, start, end),) = load_slices(expand_paths([tmp_path]))
    assert back == summary
    assert (start, end) == (T0, T0 + 7 * S)
