"""Telemetry seen from outside: /metrics, the OTLP/JSON trace file, JSON logs, OTEL_* env."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness import Service, flags_doc, send_batch
from harness import metric_value as _metric

pytestmark = pytest.mark.integration


def _drive(service: Service, client_id: str, batches: list[list[Any]], bad_frames: int = 0) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with service.client(client_id) as (ws, welcome):
            for i, records in enumerate(batches):
                await send_batch(ws, f"{client_id}-b{i}", records)
            for _ in range(bad_frames):
                await ws.send("not json")
                await ws.recv()
            return welcome

    return asyncio.run(scenario())


def test_metrics_are_labelled_by_strategy_and_outcome(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        _drive(service, "m-strict", [[" a ", "", "  ", None, 5, "b"]] * 3, bad_frames=2)
        service.write_flags(flags_doc(strict_rollout=0))
        service.wait_for_revision(lambda st: st["state"] == "ok")
        import time

        time.sleep(0.5)
        _drive(service, "m-lenient", [[" a ", "", "  ", None, 5, "b"]] * 2)
        text = service.get("/metrics").text
    assert _metric(text, "canaryws_batches_total", strategy="strict") == 3
    assert _metric(text, "canaryws_batches_total", strategy="lenient") == 2
    assert _metric(text, "canaryws_records_total", strategy="strict", outcome="accepted") == 6
    assert _metric(text, "canaryws_records_total", strategy="strict", outcome="rejected", reason="empty") == 3
    assert _metric(text, "canaryws_records_total", strategy="strict", outcome="rejected", reason="not_a_string") == 3
    assert _metric(text, "canaryws_records_total", strategy="lenient", outcome="skipped", reason="blank") == 2
    assert _metric(text, "canaryws_records_total", strategy="lenient", outcome="rejected") == 0
    assert _metric(text, "canaryws_errors_total", strategy="strict", code="invalid_json") == 2
    assert _metric(text, "canaryws_batch_duration_seconds_count", strategy="strict") == 3
    assert _metric(text, "canaryws_connections_opened_total", strategy="lenient") == 1
    assert _metric(text, "canaryws_connections_closed_total", strategy="strict", code="1000") == 1
    assert _metric(text, "canaryws_connections_active", strategy="strict") == 0
    assert _metric(text, "canaryws_flags_reloads_total", source="file", result="ok") >= 1
    assert _metric(text, "canaryws_flags_info", source="file", state="ok") == 1
    assert "canaryws_flags_age_seconds" in text


def test_trace_file_holds_connect_batch_and_connection_spans(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100), env={"OTEL_SERVICE_NAME": "canaryws-test"}) as service:
        welcome = _drive(service, "t-1", [[" a ", ""], ["b"]], bad_frames=1)
        spans = service.wait_for_spans(lambda s: any(x["name"] == "records.connection" for x in s))
    conn_id = welcome["connection_id"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    assert all(s["resource"].get("service.name") == "canaryws-test" for s in spans)
    assert not [n for n in by_name if "receive" in n or "send" in n], sorted(by_name)

    (connect,) = [s for s in by_name["records.connect"] if s["attributes"]["canaryws.connection.id"] == conn_id]
    assert re.fullmatch(r"[0-9a-f]{32}", connect["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", connect["span_id"])
    assert connect["attributes"]["canaryws.strategy"] == "strict"
    evaluations = [e for e in connect["events"] if e["name"] == "feature_flag.evaluation"]
    assert {e["attributes"]["feature_flag.key"] for e in evaluations} == {"records.strict", "records.shadow"}
    strict_ev = next(e for e in evaluations if e["attributes"]["feature_flag.key"] == "records.strict")["attributes"]
    assert strict_ev["feature_flag.result.variant"] == "on"
    assert strict_ev["feature_flag.provider.name"] == "Unleash"
    assert strict_ev["feature_flag.context.id"] == "t-1"
    assert strict_ev["feature_flag.version"] == welcome["cohort"]["flags_revision"]
    assert strict_ev["feature_flag.result.reason"]
    assert "feature_flag.variant" not in strict_ev

    batches = [s for s in by_name["records.batch"] if s["attributes"].get("canaryws.connection.id") == conn_id]
    assert len(batches) == 3  # two results, one error frame
    for batch in batches:
        assert batch["parent_span_id"] in (None, "")  # a root span
        assert batch["trace_id"] != connect["trace_id"]
        assert [(link["trace_id"], link["span_id"]) for link in batch["links"]] == [
            (connect["trace_id"], connect["span_id"])]
    first = next(b for b in batches if b["attributes"].get("canaryws.batch.id") == "t-1-b0")["attributes"]
    assert first["canaryws.strategy"] == "strict" and first["canaryws.strategy.version"] == 1
    assert (first["canaryws.batch.records"], first["canaryws.batch.accepted"], first["canaryws.batch.rejected"]) == (
        2, 1, 1)
    assert first["canaryws.batch.rejected.empty"] == 1
    assert any(b["attributes"].get("canaryws.error.code") == "invalid_json" for b in batches)

    (summary,) = [s for s in by_name["records.connection"] if s["attributes"]["canaryws.connection.id"] == conn_id]
    attrs = summary["attributes"]
    assert attrs["canaryws.connection.close_code"] == 1000
    assert (attrs["canaryws.connection.batches"], attrs["canaryws.connection.records"]) == (2, 3)
    assert (attrs["canaryws.connection.accepted"], attrs["canaryws.connection.rejected"]) == (2, 1)
    assert attrs["canaryws.connection.errors"] == 1
    assert attrs["canaryws.connection.errors.invalid_json"] == 1
    assert attrs["canaryws.connection.rejected.empty"] == 1
    assert (attrs["canaryws.strategy"], attrs["canaryws.summary.seq"], attrs["canaryws.summary.end"]) == (
        "strict", 0, "closed")
    assert attrs["canaryws.flags.strict_share"] == 1.0
    assert sum(attrs["canaryws.connection.latency.buckets"]) == 2
    assert summary["end_ns"] - summary["start_ns"] > 0


def test_connect_span_continues_the_clients_trace_and_is_the_only_handshake_span(tmp_path: Path) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"

    async def scenario() -> dict[str, Any]:
        traceparent = f"00-{trace_id}-{parent_id}-01"
        async with service.client("tp-1", additional_headers={"traceparent": traceparent}) as (_, welcome):
            return welcome

    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        welcome = asyncio.run(scenario())
        _drive(service, "tp-2", [["a"]])  # no traceparent: a new trace
        spans = service.wait_for_spans(lambda s: sum(x["name"] == "records.connection" for x in s) >= 2)
    connects = {s["attributes"]["canaryws.client.id"]: s for s in spans if s["name"] == "records.connect"}
    assert connects["tp-1"]["attributes"]["canaryws.connection.id"] == welcome["connection_id"]
    assert (connects["tp-1"]["trace_id"], connects["tp-1"]["parent_span_id"]) == (trace_id, parent_id)
    assert connects["tp-2"]["trace_id"] != trace_id and connects["tp-2"]["parent_span_id"] in (None, "")
    # the ASGI instrumentation leaves /records alone: no span of its own lives as long as a connection
    assert {s["name"] for s in spans} <= {"records.connect", "records.batch", "records.connection"}


def test_sampler_from_env_drops_batches_but_keeps_connection_spans(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    with Service(tmp_path, flags_doc(strict_rollout=100), env=env) as service:
        _drive(service, "s-1", [["a"]] * 5)
        spans = service.wait_for_spans(lambda s: any(x["name"] == "records.connection" for x in s))
    names = [s["name"] for s in spans]
    assert "records.batch" not in names
    assert "records.connect" in names and "records.connection" in names


def test_traces_exporter_none_writes_no_trace_file(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(), env={"OTEL_TRACES_EXPORTER": "none"}) as service:
        _drive(service, "n-1", [["a"]])
    assert not (service.data_dir / "traces.jsonl").exists() or not service.spans()


def test_logs_are_json_with_connection_client_and_trace_ids(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=100)) as service:
        welcome = _drive(service, "log-1", [["a"]])
        import time

        time.sleep(0.3)
        records = service.log_records()
    mine = [r for r in records if r.get("connection_id") == welcome["connection_id"]]
    assert {r["message"] for r in mine} >= {"connection accepted", "connection closed"}
    accepted = next(r for r in mine if r["message"] == "connection accepted")
    assert accepted["client_id"] == "log-1"
    assert re.fullmatch(r"[0-9a-f]{32}", accepted["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", accepted["span_id"])
    assert accepted["level"] == "INFO"
    non_json = [line for line in service.logs().splitlines() if line.strip() and not line.startswith("{")]
    assert not non_json, non_json
    assert not [r for r in records if "color_message" in r or "\x1b[" in json.dumps(r)]
