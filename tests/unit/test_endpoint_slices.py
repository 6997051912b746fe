"""The sweep ends the interval slices of busy connections too, so a slice may end while the
batch loop waits in a send. The next slice must start under the connection's current
cohort, and no batch may be lost or counted twice."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.core.flagdoc import with_rollout
from inprocess import embedded_flags, service_for, token_for, websocket_for


def test_a_slice_the_sweep_ends_during_the_cohort_frame_starts_under_the_new_cohort(tmp_path: Path) -> None:
    doc = with_rollout(embedded_flags(), "records.strict", 100)
    service = service_for(tmp_path, doc, summary_interval=0.001)
    endpoint = service.records
    token = token_for(service, "slice-client")
    lenient = FlagSnapshot.from_document(with_rollout(doc, "records.strict", 0), source="file")
    assert lenient.revision != service.flags.current.revision

    batch = {"type": "batch", "records": ["ok", " padded ", ""]}
    incoming: list[dict[str, Any]] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": json.dumps({**batch, "id": "b1"})},
        {"type": "websocket.receive", "text": json.dumps({**batch, "id": "b2"})},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []
    slices_started_under: list[str] = []

    async def receive() -> dict[str, Any]:
        message = incoming.pop(0)
        if message.get("text") and '"b2"' in message["text"]:
            service.flags.snapshot = lenient  # a reload applied between the two batches
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        text = message.get("text") or ""
        if '"type":"cohort"' in text:
            # The sweep runs while the cohort frame is on its way: the slice is past its interval.
            endpoint.sweep(time.perf_counter() + 1.0, time.time())
            slices_started_under.extend(conn.summary.strategy for conn in endpoint._open.values())
        await asyncio.sleep(0)

    async def serve_one_connection() -> str:
        await endpoint.handle(websocket_for(token, receive, send))
        return generate_latest(service.telemetry.prometheus_registry).decode()

    metrics = asyncio.run(serve_one_connection())
    answers = [json.loads(m["text"]) for m in sent if m.get("type") == "websocket.send"]
    assert [(a["type"], a.get("strategy") or a.get("cohort", {}).get("strategy")) for a in answers] == [
        ("welcome", "strict"), ("result", "strict"), ("cohort", "lenient"), ("result", "lenient")]
    assert slices_started_under == ["lenient"]
    batches = {
        sample.labels["strategy"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "canaryws_batches_total"
    }
    assert batches == {"strict": 1, "lenient": 1}
