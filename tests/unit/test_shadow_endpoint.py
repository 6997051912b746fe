"""The endpoint and the shadow: a connection's summary slice never ends with a comparison
of its batches still pending (they run in the loop round after the answers)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.websockets import WebSocket

from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.websocket import CHANNEL_SCOPE_KEY
from canaryws.app import build_service
from canaryws.core.flagdoc import encode_flags_document, parse_flags_document, with_enabled, with_rollout
from canaryws.settings import Settings

FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"


class Channel:
    """An ASGI WebSocket channel whose frames are all there at once: a batch and the close
    come back to back, with no loop round between them (one TCP read holding both)."""

    def __init__(self, texts: list[str]) -> None:
        self.incoming: list[dict[str, Any]] = [{"type": "websocket.connect"}]
        self.incoming += [{"type": "websocket.receive", "text": t} for t in texts]
        self.incoming.append({"type": "websocket.disconnect", "code": 1000})
        self.incoming.reverse()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.incoming.pop()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def test_a_close_right_after_a_batch_still_counts_its_comparison(tmp_path: Path) -> None:
    doc = with_rollout(parse_flags_document(FLAGS.read_bytes()), "records.strict", 100)
    (tmp_path / "features.json").write_bytes(encode_flags_document(with_enabled(doc, "records.shadow", True)))
    settings = Settings.from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
                                 flags_path=tmp_path / "features.json", data_dir=tmp_path / "data")
    service = build_service(settings)
    token = TokenAuthority.from_data_dir(settings.data_dir).issue("shadow-client")
    batch = json.dumps({"type": "batch", "id": "b1", "records": ["ok", "x\x01y", ""]})
    channel = Channel([batch])
    scope = {"type": "websocket", "path": "/records", "subprotocols": [],
             "headers": [(b"authorization", f"Bearer {token}".encode())],
             CHANNEL_SCOPE_KEY: (channel.receive, channel.send)}

    app = service.fastapi

    async def serve_one_connection() -> str:
        async with app.router.lifespan_context(app):
            await service.records.handle(WebSocket(scope, channel.receive, channel.send))
            # the /metrics text right away, before the loop runs another round
            return generate_latest(service.telemetry.prometheus_registry).decode()

    metrics = asyncio.run(serve_one_connection())
    answers = [json.loads(m["text"]) for m in channel.sent if m.get("type") == "websocket.send"]
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
