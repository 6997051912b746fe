"""The OTLP/JSON lines span exporter and its reader, with real SDK spans."""

from __future__ import annotations

import base64
import json
import logging
import re
import resource
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from canaryws.adapters.telemetry.otlp_json_file import (
    OtlpJsonFileSpanExporter,
    encode_otlp_json,
    read_otlp_json_lines,
)

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


def test_non_finite_doubles_bytes_and_maps_use_the_proto3_json_spelling() -> None:
    from canaryws.adapters.telemetry.otlp_json_file import _any_value

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


def test_max_bytes_drops_batches_that_would_grow_the_file_beyond_it(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    line_size = len(json.dumps(encode_otlp_json(spans[:1]), separators=(",", ":"))) + 1
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=line_size + 10)
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
    assert exporter.dropped_spans == 1 and not exporter.healthy
    assert path.stat().st_size == line_size
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
        replacement.replace(path)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.healthy is False  # shut down
    assert exporter.dropped_spans == 2 * len(spans)
    assert exporter.last_error == "No space left on device"  # kept for the record
    assert not path.is_symlink()
    assert len(list(read_otlp_json_lines(path, strict=True))) == len(spans) + 1
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "canaryws.telemetry"]
    assert [level for level, _ in messages] == ["WARNING", "INFO", "INFO"], messages
    assert "reopened" in messages[1][1] and f"after {2 * len(spans)} dropped spans" in messages[2][1]


def test_a_file_deleted_while_writes_fail_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    spans = _spans()
    line_size = len(json.dumps(encode_otlp_json(spans), separators=(",", ":"))) + 1
    exporter = OtlpJsonFileSpanExporter(path, max_bytes=line_size + 10)
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
