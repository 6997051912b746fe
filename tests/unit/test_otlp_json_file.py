"""The OTLP/JSON lines span exporter and its reader, with real SDK spans."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import resource
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from canaryws.adapters.telemetry.export_health import MonitoredBatchSpanProcessor, SpanExportMonitor
from canaryws.adapters.telemetry.file_exporter import DEFAULT_MAX_BYTES, OtlpJsonFileSpanExporter, backup_path
from canaryws.adapters.telemetry.otlp_json_encoder import EncodedSpan, encode_otlp_json, pre_encode
from canaryws.adapters.telemetry.otlp_json_reader import read_otlp_json_lines
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.analysis.traces import TraceTail, expand_paths, load_slices
from canaryws.core.summary import END_CLOSED, ConnectionSummary

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def _spans() -> list[ReadableSpan]:
    """A connect span, a batch span linked to it with an event, and an erroring child."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-test"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("canaryws.test", "1.2.3")
    with tracer.start_as_current_span(
        "records.connect", kind=SpanKind.SERVER, attributes={"canaryws.span.role": "connect"}
    ) as connect:
        pass
    with tracer.start_as_current_span(
        "records.batch",
        kind=SpanKind.SERVER,
        links=[Link(connect.get_span_context(), {"link.kind": "connection"})],
        attributes={
            "s": "strict",
            "i": 7,
            "neg": -3,
            "f": 0.25,
            "b": True,
            "strs": ["a", "b"],
            "ints": [1, 2],
            "empty": "",
        },
    ) as batch:
        batch.add_event("feature_flag.evaluation", {"feature_flag.key": "records.strict", "n": 1})
        with tracer.start_as_current_span("records.strategy") as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def _by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


def test_batch_processor_spans_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "traces.jsonl"
    exporter = OtlpJsonFileSpanExporter(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "otlp-test"}), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("canaryws.test", "1.2.3")

    with tracer.start_as_current_span("records.connect", kind=SpanKind.SERVER) as connect:
        pass
    with tracer.start_as_current_span(
        "records.batch",
        kind=SpanKind.SERVER,
        links=[Link(connect.get_span_context(), {"link.kind": "connection"})],
        attributes={"strategy": "strict", "records": 5, "ratio": 0.5, "shadow": False, "codes": ["empty", "blank"]},
    ) as batch:
        batch.add_event("feature_flag.evaluation", {"feature_flag.key": "records.strict"})
        with tracer.start_as_current_span("records.strategy") as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()  # drains the batch processor and closes the file

    spans = _by_name(list(read_otlp_json_lines(path)))
    assert set(spans) == {"records.connect", "records.batch", "records.strategy"}
    connect_ctx, batch_ctx, child_ctx = (
        connect.get_span_context(),
        batch.get_span_context(),
        child.get_span_context(),
    )
    for span in spans.values():
        assert HEX32.match(span["trace_id"]) and HEX16.match(span["span_id"])
        assert span["resource"]["service.name"] == "otlp-test"
        assert span["scope"] == "canaryws.test"
        assert span["end_ns"] >= span["start_ns"] > 0

    assert spans["records.connect"]["span_id"] == f"{connect_ctx.span_id:016x}"
    assert spans["records.connect"]["parent_span_id"] is None
    assert spans["records.connect"]["kind"] == 2  # SERVER

    got_batch = spans["records.batch"]
    assert got_batch["trace_id"] == f"{batch_ctx.trace_id:032x}"
    assert got_batch["attributes"] == {
        "strategy": "strict",
        "records": 5,
        "ratio": 0.5,
        "shadow": False,
        "codes": ["empty", "blank"],
    }
    assert got_batch["links"] == [
        {
            "trace_id": f"{connect_ctx.trace_id:032x}",
            "span_id": f"{connect_ctx.span_id:016x}",
            "attributes": {"link.kind": "connection"},
        }
    ]
    (event,) = got_batch["events"]
    assert event["name"] == "feature_flag.evaluation"
    assert event["attributes"] == {"feature_flag.key": "records.strict"}
    assert got_batch["start_ns"] <= event["time_ns"] <= got_batch["end_ns"]

    got_child = spans["records.strategy"]
    assert got_child["parent_span_id"] == f"{batch_ctx.span_id:016x}"
    assert got_child["span_id"] == f"{child_ctx.span_id:016x}"
    assert got_child["kind"] == 1  # INTERNAL
    assert got_child["status_code"] == 2 and got_child["status_message"] == "boom"


def test_each_export_is_one_line_in_collector_file_exporter_shape(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    exporter = OtlpJsonFileSpanExporter(path)
    spans = _spans()
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    assert exporter.export(spans[1:]) is SpanExportResult.SUCCESS
    exporter.shutdown()

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    document = json.loads(lines[1])
    assert list(document) == ["resourceSpans"]
    (resource_spans,) = document["resourceSpans"]
    (scope_spans,) = resource_spans["scopeSpans"]
    assert scope_spans["scope"] == {"name": "canaryws.test", "version": "1.2.3"}
    raw = {span["name"]: span for span in scope_spans["spans"]}
    batch, child = raw["records.batch"], raw["records.strategy"]
    assert HEX32.match(batch["traceId"]) and HEX16.match(batch["spanId"])
    assert "parentSpanId" not in batch
    assert child["parentSpanId"] == batch["spanId"]
    assert HEX32.match(batch["links"][0]["traceId"]) and HEX16.match(batch["links"][0]["spanId"])
    assert batch["kind"] == 2 and child["kind"] == 1
    assert child["status"] == {"code": 2, "message": "boom"} and batch["status"] == {}
    assert isinstance(batch["startTimeUnixNano"], str) and int(batch["startTimeUnixNano"]) > 0
    attributes = {kv["key"]: kv["value"] for kv in batch["attributes"]}
    assert attributes["s"] == {"stringValue": "strict"}
    assert attributes["i"] == {"intValue": "7"}
    assert attributes["neg"] == {"intValue": "-3"}
    assert attributes["f"] == {"doubleValue": 0.25}
    assert attributes["b"] == {"boolValue": True}
    assert attributes["empty"] == {"stringValue": ""}
    assert attributes["strs"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}
    assert attributes["ints"] == {"arrayValue": {"values": [{"intValue": "1"}, {"intValue": "2"}]}}


def _hex_ids(value: Any) -> Any:
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants hex ids."""
    if isinstance(value, dict):
        return {
            key: base64.b64decode(item).hex() if key in ("traceId", "spanId", "parentSpanId") else _hex_ids(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(item) for item in value]
    return value


def test_document_equals_the_sdk_otlp_encoder_with_hex_ids() -> None:
    spans = _spans()
    reference = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    assert encode_otlp_json(spans) == _hex_ids(reference)


def test_a_pre_encoded_span_is_placed_as_the_same_bytes() -> None:
    plain = msgspec.json.encode(encode_otlp_json(_spans()))
    spans = _spans()
    queued = [spans[0], *(pre_encode(span) for span in spans[1:])]  # a mix: the connect span is left to the exporter
    assert all(isinstance(span, EncodedSpan) and isinstance(getattr(span, "_canaryws_otlp_json", None), msgspec.Raw)
               for span in queued[1:])
    assert [(s.name, s.context, s.resource, s.instrumentation_scope) for s in queued] == [
        (s.name, s.context, s.resource, s.instrumentation_scope) for s in spans]
    mixed = msgspec.json.encode(encode_otlp_json(queued))
    # Same document, ids and times aside (the spans are new): compare with them masked.
    ids = re.compile(rb'"(traceId|spanId|parentSpanId|startTimeUnixNano|endTimeUnixNano|timeUnixNano)":"[0-9a-f]+"')
    assert ids.sub(b"", mixed) == ids.sub(b"", plain)
    assert json.loads(mixed) == json.loads(msgspec.json.encode(encode_otlp_json([_unencoded(s) for s in spans])))


def _unencoded(span: ReadableSpan) -> ReadableSpan:
    copy = ReadableSpan(
        name=span.name, context=span.context, parent=span.parent, resource=span.resource,
        attributes=span.attributes, events=span.events, links=span.links, kind=span.kind,
        status=span.status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
    assert not hasattr(copy, "_canaryws_otlp_json")
    return copy


def test_a_span_pre_encoding_cannot_encode_is_left_to_the_exporter(tmp_path: Path) -> None:
    (span, *_) = _spans()
    span._attributes = {"bad": "\ud800"}  # type: ignore[attr-defined]  # a lone surrogate: not UTF-8
    assert pre_encode(span) is span  # does not raise: ending a span never does
    assert not hasattr(span, "_canaryws_otlp_json")
    exporter = OtlpJsonFileSpanExporter(tmp_path / "traces.jsonl")
    assert exporter.export([span]) == SpanExportResult.FAILURE  # the exporter counts it and says why
    assert exporter.dropped_spans == 1


def test_the_file_processor_encodes_sampled_spans_on_the_ending_thread(tmp_path: Path) -> None:
    """The file exporter's processor encodes sampled spans on the thread that ends them, so the
    export thread only writes (no 5 ms bursts under the GIL: the p99.9); one span short of a
    group is encoded at the shutdown, on the thread shutting down (here, the same)."""
    seen: list[tuple[str, bool]] = []
    ended_on: list[int] = []

    class Spy(InMemorySpanExporter):
        def export(self, spans: Any) -> Any:
            seen.extend((span.name, isinstance(getattr(span, "_canaryws_otlp_json", None), msgspec.Raw))
                        for span in spans)
            return super().export(spans)

    def encode_here(span: ReadableSpan) -> ReadableSpan:
        ended_on.append(threading.get_ident())
        return pre_encode(span)

    settings = {"max_queue_size": 64, "schedule_delay_millis": 60_000, "max_export_batch_size": 64,
                "export_timeout_millis": 1000}
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(MonitoredBatchSpanProcessor(
        Spy(), SpanExportMonitor("spy"), settings, pre_encode=encode_here))  # type: ignore[arg-type]
    tracer = provider.get_tracer("canaryws.test")
    with tracer.start_as_current_span("records.batch"):
        pass
    provider.shutdown()
    assert seen == [("records.batch", True)]
    assert ended_on == [threading.get_ident()]


def test_non_finite_doubles_bytes_and_maps_use_the_proto3_json_spelling() -> None:
    from canaryws.adapters.telemetry.otlp_json_encoder import _any_value

    assert _any_value(float("nan")) == {"doubleValue": "NaN"}
    assert _any_value(float("-inf")) == {"doubleValue": "-Infinity"}
    assert _any_value(b"\x00\xff") == {"bytesValue": "AP8="}
    assert _any_value({"k": 1}) == {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}}
    assert _any_value([]) == {"arrayValue": {}}


COLLECTOR_LINE = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc-a"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "scope-1"},
                    "spans": [
                        {
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b174",
                            "parentSpanId": "",
                            "name": "a",
                            "kind": 2,
                            "startTimeUnixNano": "1544712660000000000",
                            "endTimeUnixNano": "1544712661000000000",
                            "attributes": [
                                {"key": "d", "value": {"doubleValue": "NaN"}},
                                {
                                    "key": "m",
                                    "value": {"kvlistValue": {"values": [{"key": "x", "value": {"intValue": 3}}]}},
                                },
                                {"key": "raw", "value": {"bytesValue": "AP8="}},
                                {"key": "none", "value": {}},
                            ],
                            "status": {},
                        }
                    ],
                },
                {
                    "scope": {"name": "scope-2"},
                    "spans": [
                        {
                            "traceId": "5b8efff798038103d269b633813fc60c",
                            "spanId": "eee19b7ec3c1b175",
                            "name": "b",
                            "parentSpanId": "eee19b7ec3c1b174",
                            "status": {"code": 1},
                        }
                    ],
                },
            ],
        },
        {
            "resource": {},
            "scopeSpans": [
                {
                    "scope": {},
                    "spans": [{"traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": "7uGbfsPBsXY=", "name": "base64-ids"}],
                }
            ],
        },
    ]
}


def test_reader_handles_collector_lines_with_many_resources_and_scopes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "collector.json"
    path.write_text("\n" + json.dumps(COLLECTOR_LINE) + "\n\n" + '{"resourceSpans": [{"scopeSp')
    with caplog.at_level(logging.WARNING, logger="canaryws.telemetry"):
        spans = _by_name(list(read_otlp_json_lines(path)))
    assert set(spans) == {"a", "b", "base64-ids"}
    a = spans["a"]
    assert a["parent_span_id"] is None and a["kind"] == 2 and a["status_code"] == 0
    assert a["start_ns"] == 1544712660000000000 and a["end_ns"] == 1544712661000000000
    assert a["resource"] == {"service.name": "svc-a"} and a["scope"] == "scope-1"
    assert a["attributes"]["m"] == {"x": 3} and a["attributes"]["raw"] == b"\x00\xff"
    assert a["attributes"]["d"] != a["attributes"]["d"]  # NaN
    assert a["attributes"]["none"] is None
    assert spans["b"]["parent_span_id"] == "eee19b7ec3c1b174" and spans["b"]["scope"] == "scope-2"
    assert spans["b"]["status_code"] == 1
    assert spans["base64-ids"]["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert spans["base64-ids"]["span_id"] == "eee19b7ec3c1b176"
    assert spans["base64-ids"]["resource"] == {} and spans["base64-ids"]["kind"] == 0
    assert "skipped a line" in caplog.text  # the torn last line

    with pytest.raises(ValueError, match=":4:"):
        list(read_otlp_json_lines(path, strict=True))


def test_disk_full_fails_the_export_counts_drops_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    assert Path("/dev/full").exists(), "this test needs Linux's /dev/full (every write fails with ENOSPC)"
    exporter = OtlpJsonFileSpanExporter(Path("/dev/full"))  # every write: ENOSPC
    spans = _spans()
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
        assert exporter.export(spans[:2]) is SpanExportResult.FAILURE
    assert exporter.dropped_spans == len(spans) + 3
    assert not exporter.healthy
    records = [r for r in caplog.records if r.name == "canaryws.telemetry"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "No space left on device" in records[0].getMessage()
    exporter.shutdown()


@pytest.fixture
def file_size_limit() -> Iterator[Any]:
    """Set RLIMIT_FSIZE for a moment: writes beyond it fail with EFBIG, like a full disk
    (the first write crossing it is cut short, the next raises)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def set_limit(limit: int | None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if limit is None else limit, hard))

    try:
        yield set_limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_cut_short_write_is_removed_and_recovery_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, file_size_limit: Any
) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(b"\n" * 60_000)  # blank lines: skipped by readers
    exporter = OtlpJsonFileSpanExporter(path)
    spans = _spans()
    line_size = len(json.dumps(encode_otlp_json(spans)))
    assert line_size > 1000
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        file_size_limit(60_500)  # the line starts fitting, then the "disk" is full
        try:
            first = exporter.export(spans)
            second = exporter.export(spans)
        finally:
            file_size_limit(None)
        assert path.stat().st_size == 60_000  # the partial line was cut off again
        third = exporter.export(spans)
        fourth = exporter.export(spans)
    exporter.shutdown()

    assert (first, second, third, fourth) == (
        SpanExportResult.FAILURE,
        SpanExportResult.FAILURE,
        SpanExportResult.SUCCESS,
        SpanExportResult.SUCCESS,
    )
    assert exporter.dropped_spans == 2 * len(spans)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]
    assert len(messages) == 2
    assert messages[0][0] == logging.WARNING and "File too large" in messages[0][1]
    assert messages[1][0] == logging.INFO and f"after {2 * len(spans)} dropped spans" in messages[1][1]
    assert len(list(read_otlp_json_lines(path, strict=True))) == 2 * len(spans)


def test_without_rotation_max_bytes_drops_batches_that_would_grow_the_file_beyond_it(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    line_size = len(json.dumps(encode_otlp_json(spans[:1]), separators=(",", ":"))) + 1
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=line_size + 10, rotate=False)
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
    assert exporter.dropped_spans == 1 and not exporter.healthy
    assert exporter.last_error == f"the file would exceed max_bytes={line_size + 10}"
    assert path.stat().st_size == line_size
    assert exporter.rotations == 0 and not exporter.backup_path.exists()
    exporter.shutdown()


def test_concurrent_exports_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    exporter = OtlpJsonFileSpanExporter(path)
    spans = _spans()

    def work() -> None:
        for _ in range(50):
            assert exporter.export(spans) is SpanExportResult.SUCCESS

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert exporter.force_flush()
    exporter.shutdown()
    assert len(path.read_text().splitlines()) == 200
    assert len(list(read_otlp_json_lines(path, strict=True))) == 200 * len(spans)


def test_appends_to_an_existing_file_and_refuses_exports_after_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    first = OtlpJsonFileSpanExporter(path)
    first.export(spans)
    first.shutdown()
    second = OtlpJsonFileSpanExporter(path)
    assert second.healthy
    second.export(spans)
    second.shutdown()
    second.shutdown()  # harmless
    assert second.export(spans) is SpanExportResult.FAILURE
    assert second.dropped_spans == len(spans) and not second.healthy
    assert not second.force_flush()
    assert len(list(read_otlp_json_lines(path))) == 2 * len(spans)


def test_while_writes_fail_a_replaced_path_is_reopened_and_writes_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Disk full (a symlink to /dev/full); the operator points the path at a file with
    space; the next export opens it and succeeds, without a restart."""
    assert Path("/dev/full").exists(), "this test needs Linux's /dev/full (every write fails with ENOSPC)"
    path = tmp_path / "traces.jsonl"
    path.symlink_to("/dev/full")
    exporter = OtlpJsonFileSpanExporter(path)
    spans = _spans()
    assert exporter.last_error is None
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert exporter.export(spans) is SpanExportResult.FAILURE  # same file: not reopened
        assert exporter.last_error == "No space left on device" and not exporter.healthy
        replacement = tmp_path / "new.jsonl"
        replacement.write_bytes(b"")
        replacement.chmod(0o644)  # made owner-only when reopened
        replacement.replace(path)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.healthy is False  # shut down
    assert exporter.dropped_spans == 2 * len(spans)
    assert exporter.last_error == "No space left on device"  # kept for the record
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(list(read_otlp_json_lines(path, strict=True))) == len(spans) + 1
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]
    assert [level for level, _ in messages] == ["WARNING", "INFO", "INFO", "INFO"], messages
    assert "(mode 0644); made it owner-only (0600)" in messages[1][1]
    assert "reopened" in messages[2][1] and f"after {2 * len(spans)} dropped spans" in messages[3][1]


def test_a_file_deleted_while_writes_fail_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    line_size = len(json.dumps(encode_otlp_json(spans), separators=(",", ":"))) + 1
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=line_size + 10, rotate=False)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.FAILURE  # the cap
    assert exporter.last_error == f"the file would exceed max_bytes={line_size + 10}"
    path.rename(tmp_path / "traces.1.jsonl")  # rotated away
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(list(read_otlp_json_lines(path, strict=True))) == len(spans)
    assert len(list(read_otlp_json_lines(tmp_path / "traces.1.jsonl", strict=True))) == len(spans)


def test_a_healthy_exporter_keeps_the_file_it_has_open(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    exporter = OtlpJsonFileSpanExporter(path)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    path.rename(tmp_path / "moved.jsonl")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert not path.exists()
    assert len(list(read_otlp_json_lines(tmp_path / "moved.jsonl", strict=True))) == 2 * len(spans)


# ------------------------------------------------------------------ size cap and rotation

S = 1_000_000_000
T0 = 1_700_000_000 * S


class _SummaryWriter:
    """Connection summaries through the service's own span pipeline: one export, so one
    line, per summary; connection ``c<n>`` for summary ``n``."""

    def __init__(self, exporter: OtlpJsonFileSpanExporter) -> None:
        self.exporter = exporter
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.meter_provider = MeterProvider()
        self.telemetry = RecordsTelemetry(self.tracer_provider, self.meter_provider)
        self.emitted = 0

    def emit(self, count: int = 1) -> None:
        for _ in range(count):
            n = self.emitted
            summary = ConnectionSummary(
                f"c{n}", f"client-{n}", "strict", 1, True, "rev", 0.5, end=END_CLOSED, close_code=1000
            )
            self.telemetry.emit_summary(summary, T0 + n * S, T0 + n * S + S // 2, None)
            self.emitted += 1

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def summary_writers() -> Iterator[list[_SummaryWriter]]:
    opened: list[_SummaryWriter] = []
    yield opened
    for writer in opened:
        writer.close()


def _writer(opened: list[_SummaryWriter], path: Path, **options: Any) -> _SummaryWriter:
    writer = _SummaryWriter(OtlpJsonFileSpanExporter(path, **options))
    opened.append(writer)
    return writer


@pytest.fixture
def summary_line_size(tmp_path: Path, summary_writers: list[_SummaryWriter]) -> int:
    """Bytes of one summary line (the same for every ``c<n>`` with one digit)."""
    probe = tmp_path / "probe" / "traces.jsonl"
    _writer(summary_writers, probe, max_bytes=None).emit()
    size = probe.stat().st_size
    probe.unlink()
    probe.parent.rmdir()
    return size


def _connections(slices: list[Any]) -> list[int]:
    return sorted(int(summary.connection_id[1:]) for summary, _, _ in slices)


def test_backup_names_keep_the_suffix_and_never_look_like_a_worker_file(tmp_path: Path) -> None:
    assert backup_path(tmp_path / "traces.jsonl") == tmp_path / "traces.old.jsonl"
    assert backup_path(tmp_path / "traces-2.jsonl") == tmp_path / "traces-2.old.jsonl"
    assert DEFAULT_MAX_BYTES == 256 * 1024 * 1024
    exporter = OtlpJsonFileSpanExporter(tmp_path / "traces.jsonl")
    assert exporter.max_bytes == DEFAULT_MAX_BYTES and exporter.rotate  # bounded by default
    assert exporter.backup_path == tmp_path / "traces.old.jsonl"
    exporter.shutdown()


def test_at_the_cap_the_file_moves_to_its_one_backup_and_the_newest_spans_are_kept(
    tmp_path: Path,
    summary_writers: list[_SummaryWriter],
    summary_line_size: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 4 * summary_line_size + summary_line_size // 2  # four lines per file
    path = tmp_path / "traces.jsonl"
    worker = _writer(summary_writers, tmp_path / "traces-2.jsonl", max_bytes=cap)  # a worker's file alongside
    writer = _writer(summary_writers, path, max_bytes=cap)
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        for expected_rotations in (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3):
            writer.emit()
            assert writer.exporter.rotations == expected_rotations
            assert path.stat().st_size <= cap
        worker.emit(5)
    exporter = writer.exporter
    assert exporter.healthy and exporter.dropped_spans == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "traces-2.jsonl",
        "traces-2.old.jsonl",
        "traces.jsonl",
        "traces.old.jsonl",
    ]  # one backup per file, named after it
    backup = tmp_path / "traces.old.jsonl"
    assert backup.stat().st_size <= cap and len(backup.read_bytes().splitlines()) == 4
    # What `canaryws report --traces <data-dir>` reads: the newest summaries, none missing in between.
    assert _connections(load_slices([backup])) == [8, 9, 10, 11]
    assert _connections(load_slices([path])) == [12, 13]
    files = expand_paths([tmp_path])
    assert backup in files and path in files
    assert _connections(load_slices([backup, path])) == list(range(8, 14))
    assert len(load_slices(files)) == 6 + 5  # and the worker's five
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]
    rotations = [m for level, m in messages if "reached max_bytes" in m and m.startswith(f"trace file {path} ")]
    assert len(rotations) == 3 and all(level == logging.INFO for level, _ in messages), messages
    assert f"moved its {4 * summary_line_size} bytes to {backup} (replacing the previous backup)" in rotations[0]


def test_the_trace_file_and_its_backup_are_owner_only_whatever_the_umask(
    tmp_path: Path, summary_writers: list[_SummaryWriter], summary_line_size: int
) -> None:
    previous = os.umask(0)
    try:
        writer = _writer(summary_writers, tmp_path / "traces.jsonl", max_bytes=2 * summary_line_size)
        assert stat.S_IMODE((tmp_path / "traces.jsonl").stat().st_mode) == 0o600
        writer.emit(3)  # one rotation
    finally:
        os.umask(previous)
    assert writer.exporter.rotations == 1
    for name in ("traces.jsonl", "traces.old.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o666])
def test_an_existing_file_others_may_read_is_made_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(b"\n")
    path.chmod(mode)
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        exporter = OtlpJsonFileSpanExporter(path)
    exporter.shutdown()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"\n"  # appended to, never truncated
    (message,) = [r.getMessage() for r in caplog.records if r.name == "canaryws.telemetry"]
    assert f"was readable by others (mode {mode:04o}); made it owner-only (0600)" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_of_another_user_is_left_as_it_is_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(b"")
    path.chmod(0o644)
    os.chown(path, 54321, 54321)
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        exporter = OtlpJsonFileSpanExporter(path)
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    (record,) = [r for r in caplog.records if r.name == "canaryws.telemetry"]
    assert record.levelno == logging.WARNING and "belongs to another user (uid 54321)" in record.getMessage()


def _line_size(spans: list[ReadableSpan]) -> int:
    return len(json.dumps(encode_otlp_json(spans), separators=(",", ":"))) + 1


def test_a_batch_larger_than_the_cap_is_written_as_several_lines(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    cap = _line_size(spans) - 1  # halved: [first] and [second, third], each of which fits
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=cap)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.dropped_spans == 0 and exporter.rotations == 1  # the two lines do not fit in one file
    assert expand_paths([tmp_path]) == [path, exporter.backup_path]
    for file in (path, exporter.backup_path):
        assert file.stat().st_size <= cap and len(file.read_bytes().splitlines()) == 1
    names = [span["name"] for file in (exporter.backup_path, path) for span in read_otlp_json_lines(file, strict=True)]
    assert names == [span.name for span in spans]


def test_only_a_span_larger_than_the_cap_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    sizes = [_line_size([span]) for span in spans]
    cap = max(sizes) - 1  # every span but the largest fits
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=cap)
    with caplog.at_level(logging.WARNING, logger="canaryws.telemetry"):
        assert exporter.export(spans) is SpanExportResult.FAILURE  # not all of it was written
    assert exporter.dropped_spans == 1 and not exporter.healthy
    assert exporter.last_error == f"a span of {max(sizes)} bytes is larger than max_bytes={cap}"
    written = [span["name"] for file in expand_paths([tmp_path]) for span in read_otlp_json_lines(file, strict=True)]
    assert sorted(written) == sorted(span.name for span, size in zip(spans, sizes, strict=True) if size <= cap)
    assert "larger than max_bytes" in caplog.text
    tiny = OtlpJsonFileSpanExporter(tmp_path / "tiny" / "traces.jsonl", max_bytes=100)
    assert tiny.export(spans) is SpanExportResult.FAILURE
    assert tiny.dropped_spans == len(spans) and tiny.rotations == 0 and tiny.path.stat().st_size == 0
    exporter.shutdown()
    tiny.shutdown()


def test_a_failed_rotation_drops_the_batch_warns_once_and_is_retried(
    tmp_path: Path,
    summary_writers: list[_SummaryWriter],
    summary_line_size: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "traces.jsonl"
    blocker = tmp_path / "traces.old.jsonl"  # a non-empty directory where the backup goes
    (blocker / "x").mkdir(parents=True)
    writer = _writer(summary_writers, path, max_bytes=2 * summary_line_size)
    exporter = writer.exporter
    with caplog.at_level(logging.INFO, logger="canaryws.telemetry"):
        writer.emit(4)  # two fit; the next two need a rotation, which fails
        assert exporter.rotations == 0 and exporter.dropped_spans == 2 and not exporter.healthy
        assert exporter.last_error is not None and exporter.last_error.startswith(
            f"could not rotate {path} to traces.old.jsonl: "
        )
        assert path.stat().st_size == 2 * summary_line_size  # nothing beyond the cap
        (blocker / "x").rmdir()
        blocker.rmdir()
        writer.emit()
    assert exporter.rotations == 1 and exporter.healthy and exporter.dropped_spans == 2
    assert _connections(load_slices(expand_paths([tmp_path]))) == [0, 1, 4]
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO, logging.INFO], records
    assert "could not rotate" in records[0][1]
    assert "reached max_bytes" in records[1][1] and "after 2 dropped spans" in records[2][1]


def test_when_no_new_file_can_be_started_after_rotating_the_next_export_tries_again(
    tmp_path: Path,
    summary_writers: list[_SummaryWriter],
    summary_line_size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "traces.jsonl"
    writer = _writer(summary_writers, path, max_bytes=2 * summary_line_size)
    exporter = writer.exporter
    writer.emit(2)
    real_open = exporter._open
    calls: list[int] = []

    def open_fails_once(notes: list[Any]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, os.strerror(28))
        return real_open(notes)

    monkeypatch.setattr(exporter, "_open", open_fails_once)
    writer.emit()  # rotates, then cannot create the new file
    assert exporter.rotations == 1 and not path.exists() and not exporter.healthy
    assert exporter.last_error == "could not start a new trace file after rotating: No space left on device"
    assert exporter.force_flush()
    writer.emit()  # creates it
    assert exporter.healthy and exporter.dropped_spans == 1 and exporter.rotations == 1
    assert _connections(load_slices([exporter.backup_path])) == [0, 1]  # the backup got nothing more
    assert _connections(load_slices([path])) == [3]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlinked_trace_file_is_rotated_next_to_the_file_it_points_to(
    tmp_path: Path, summary_writers: list[_SummaryWriter], summary_line_size: int
) -> None:
    elsewhere = tmp_path / "bigdisk"
    elsewhere.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    path = data / "traces.jsonl"
    path.symlink_to(elsewhere / "spans.jsonl")
    writer = _writer(summary_writers, path, max_bytes=2 * summary_line_size)
    assert writer.exporter.backup_path == elsewhere / "spans.old.jsonl"
    writer.emit(3)
    assert writer.exporter.rotations == 1 and writer.exporter.healthy
    assert path.is_symlink() and sorted(p.name for p in data.iterdir()) == ["traces.jsonl"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["spans.jsonl", "spans.old.jsonl"]
    assert _connections(load_slices([elsewhere / "spans.old.jsonl"])) == [0, 1]
    assert _connections(load_slices([path])) == [2]


def test_the_cap_applies_to_regular_files_only(tmp_path: Path) -> None:
    fifo = tmp_path / "traces.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        spans = _spans()
        line_size = len(json.dumps(encode_otlp_json(spans), separators=(",", ":"))) + 1
        exporter = OtlpJsonFileSpanExporter(fifo, max_bytes=line_size + 10)
        for _ in range(3):
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.rotations == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["traces.jsonl"]
        assert os.read(reader, 1 << 16).count(b"\n") == 3
    finally:
        os.close(reader)


def test_a_tail_following_the_file_reads_the_new_file_from_its_start(
    tmp_path: Path, summary_writers: list[_SummaryWriter], summary_line_size: int
) -> None:
    """Polled between rotations, the guard's tail sees each summary once: the new file,
    another inode, is read from its start."""
    path = tmp_path / "traces.jsonl"
    writer = _writer(summary_writers, path, max_bytes=2 * summary_line_size + 10)
    tail = TraceTail([path])
    seen: list[int] = []
    for _ in range(7):
        writer.emit()
        seen += _connections(tail.poll())
    assert writer.exporter.rotations == 3
    assert seen == list(range(7))


@pytest.mark.parametrize("follow", ["directory", "file"])
def test_a_tail_across_rotations_sees_every_summary_exactly_once(
    tmp_path: Path, summary_writers: list[_SummaryWriter], summary_line_size: int, follow: str
) -> None:
    path = tmp_path / "traces.jsonl"
    writer = _writer(summary_writers, path, max_bytes=3 * summary_line_size + 10)
    tail = TraceTail([tmp_path if follow == "directory" else path])
    seen: list[int] = []
    for _ in range(7):
        writer.emit(2)  # polled every other line: lines are written between a poll and a rotation
        seen += _connections(tail.poll())
    assert writer.exporter.rotations == 4
    assert sorted(seen) == list(range(14))


def test_the_file_processor_encodes_in_groups_and_none_waits_beyond_the_next_export() -> None:
    """ENCODE_GROUP spans at a time, by the thread ending the last of them, in the order they
    ended; fewer wait at most until the export thread's next scheduled export (which encodes
    them first), a force_flush or the shutdown; a span ending after the shutdown is dropped and
    counted, as the SDK's processor does."""
    exported: list[tuple[str, bool]] = []
    encoded_on: list[tuple[str, int]] = []
    monitor = SpanExportMonitor("spy")

    class Spy(InMemorySpanExporter):
        def export(self, spans: Any) -> Any:
            exported.extend((span.name, isinstance(getattr(span, "_canaryws_otlp_json", None), msgspec.Raw))
                            for span in spans)
            return super().export(spans)

    def encode(span: ReadableSpan) -> ReadableSpan:
        encoded_on.append((span.name, threading.get_ident()))
        return pre_encode(span)

    settings = {"max_queue_size": 64, "schedule_delay_millis": 200, "max_export_batch_size": 64,
                "export_timeout_millis": 1000}
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(MonitoredBatchSpanProcessor(
        Spy(), monitor, settings, pre_encode=encode, encode_group=4))  # type: ignore[arg-type]
    tracer = provider.get_tracer("canaryws.test")
    here = threading.get_ident()

    for n in range(3):
        tracer.start_span(f"s{n}").end()
    assert encoded_on == []  # a group is not complete
    tracer.start_span("s3").end()
    assert encoded_on == [(f"s{n}", here) for n in range(4)]  # the fourth ends it: all four, here, in order

    tracer.start_span("s4").end()
    tracer.start_span("s5").end()
    deadline = time.monotonic() + 5
    while len(exported) < 6:  # the next scheduled export takes the two that wait
        assert time.monotonic() < deadline, exported
        time.sleep(0.01)
    assert [name for name, _ in encoded_on[4:]] == ["s4", "s5"]
    assert all(thread != here for _, thread in encoded_on[4:])  # the export thread encoded them

    tracer.start_span("s6").end()
    assert provider.force_flush()
    tracer.start_span("s7").end()
    provider.shutdown()
    tracer.start_span("s8").end()  # after the shutdown
    assert exported == [(f"s{n}", True) for n in range(8)]
    assert monitor.dropped["shutdown"] == 1
