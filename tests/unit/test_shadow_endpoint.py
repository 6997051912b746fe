"""The endpoint and the shadow: a connection's summary slice never ends with a comparison
of its batches still pending (they run in the loop round after the answers)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canaryws.core.flagdoc import with_enabled, with_rollout
from inprocess import Channel, embedded_flags, service_for, token_for, websocket_for


def test_a_close_right_after_a_batch_still_counts_its_comparison(tmp_path: Path) -> None:
    doc = with_rollout(embedded_flags(), "records.strict", 100)
    service = service_for(tmp_path, with_enabled(doc, "records.shadow", True))
    token = token_for(service, "shadow-client")
    batch = json.dumps({"type": "batch", "id": "b1", "records": ["ok", "x\x01y", ""]})
    channel = Channel([batch])

    app = service.fastapi

    async def serve_one_connection() -> str:
        async with app.router.lifespan_context(app):
            await service.records.handle(websocket_for(token, channel.receive, channel.send))
            # the /metrics text right away, before the loop runs another round
            return generate_latest(service.telemetry.prometheus_registry).decode()

    metrics = asyncio.run(serve_one_connection())
    answers = channel.answers()
    assert [a["type"] for a in answers] == ["welcome", "result"]
    shadow = {
        (sample.name, sample.labels.get("kind", ""), sample.labels.get("reason", "")): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name.startswith("canaryws_shadow_")
        and (sample.labels["strategy"], sample.labels.get("shadow_strategy")) == ("strict", "lenient")
    }
    assert shadow.pop(("canaryws_shadow_work_seconds_total", "", "")) > 0
    assert shadow == {
        ("canaryws_shadow_batches_total", "", ""): 1,
        ("canaryws_shadow_records_total", "", ""): 3,
        ("canaryws_shadow_divergent_total", "accepted_by_lenient_only", "control_character"): 1,
    }
