"""The in-process endpoint harness: the real service (``build_service``) with its exporters
off, and a fake ASGI WebSocket channel that the test drives, for tests that need the batch
loop's timing or state under their control (a real server is tests/harness.py).

The service runs without a sink (``CANARYWS_SINK=none``): the harness does not run the app's
lifespan, which opens the sink, and these tests are about the loop's own timing. The persist
step is tested against real servers (tests/integration/test_sink_*.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.websockets import WebSocket

from canaryws.adapters.asgi.scope import CHANNEL_SCOPE_KEY
from canaryws.adapters.auth import TokenAuthority
from canaryws.app import Service, build_service
from canaryws.core.flagdoc import FlagsDocument, encode_flags_document, parse_flags_document
from canaryws.settings import Settings

FLAGS = Path(__file__).resolve().parents[1] / "flags" / "features.json"
EXPORT_OFF = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "CANARYWS_SINK": "none"}

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def embedded_flags() -> FlagsDocument:
    """The embedded default flags document (flags/features.json)."""
    return parse_flags_document(FLAGS.read_bytes())


def service_for(tmp_path: Path, flags: FlagsDocument, **settings: Any) -> Service:
    """The real service on ``flags`` (written to ``tmp_path``/features.json), exporters off,
    its data dir in ``tmp_path``/data; ``settings`` override Settings fields."""
    (tmp_path / "features.json").write_bytes(encode_flags_document(flags))
    return build_service(Settings.from_env(EXPORT_OFF, flags_path=tmp_path / "features.json",
                                           data_dir=tmp_path / "data", **settings))


def token_for(service: Service, client_id: str) -> str:
    return TokenAuthority.from_data_dir(service.settings.data_dir).issue(client_id)


def websocket_for(token: str, receive: Receive, send: Send) -> WebSocket:
    """A ``/records`` WebSocket with ``token`` whose batch loop runs on ``receive``/``send``
    (the channel the service's ASGI wrapper hands it)."""
    scope = {"type": "websocket", "path": "/records", "subprotocols": [],
             "headers": [(b"authorization", f"Bearer {token}".encode())],
             CHANNEL_SCOPE_KEY: (receive, send)}
    return WebSocket(scope, receive, send)  # type: ignore[arg-type]


class Channel:
    """An ASGI WebSocket channel whose frames are all there at once: the handshake, ``texts``
    and the close back to back, with no loop round between them (one TCP read holding all)."""

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

    def answers(self) -> list[dict[str, Any]]:
        """The frames the service sent, decoded."""
        return [json.loads(m["text"]) for m in self.sent if m.get("type") == "websocket.send"]
