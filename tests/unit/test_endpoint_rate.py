"""The batch loop's rate limit is exactly core.limits.TokenBucket: the loop runs the
bucket's arithmetic on its own locals (a call per frame cost more than the arithmetic),
so this drives the real endpoint on a clock the test controls and compares every wait it
takes with the waits of a TokenBucket asked for the same frames at the same times."""

from __future__ import annotations

import asyncio
import json
import time
import types
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocket

from canaryws.adapters import websocket as websocket_module
from canaryws.adapters.auth import TokenAuthority
from canaryws.adapters.websocket import CHANNEL_SCOPE_KEY
from canaryws.app import build_service
from canaryws.core.flagdoc import encode_flags_document, parse_flags_document, with_rollout
from canaryws.core.limits import TokenBucket
from canaryws.settings import Settings

FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"
RATE = 100.0
BURST = 5

# seconds between frames (the sender honours every wait, then waits the gap)
PATTERNS = {
    "flood": [0.0] * 40,
    "steady under the rate": [1.5 / RATE] * 40,
    "burst, idle (the bucket refills to its cap), burst": [0.0] * 12 + [10.0] + [0.0] * 12,
    "mixed": [0.0, 0.001, 0.02, 0.0, 0.0, 0.3, 0.0, 0.004, 0.0, 0.05] * 4,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class Channel:
    """The handshake, then one batch per gap (the clock moves on by the gap before each)."""

    def __init__(self, clock: Clock, gaps: list[float]) -> None:
        self.clock = clock
        self.incoming: list[tuple[float, dict[str, Any]]] = [(0.0, {"type": "websocket.connect"})]
        for i, gap in enumerate(gaps):
            frame = json.dumps({"type": "batch", "id": f"b{i}", "records": ["x"]})
            self.incoming.append((gap, {"type": "websocket.receive", "text": frame}))
        self.incoming.append((0.0, {"type": "websocket.disconnect", "code": 1000}))
        self.incoming.reverse()
        self.results = 0
        self.arrivals: list[float] = []

    async def receive(self) -> dict[str, Any]:
        gap, message = self.incoming.pop()
        self.clock.now += gap
        if message["type"] == "websocket.receive":
            self.arrivals.append(self.clock.now)
        await asyncio.sleep(0)
        return message

    async def send(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if text is not None and json.loads(text)["type"] == "result":
            self.results += 1


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_the_loop_waits_exactly_as_the_token_bucket(pattern: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gaps = PATTERNS[pattern]
    (tmp_path / "features.json").write_bytes(encode_flags_document(
        with_rollout(parse_flags_document(FLAGS.read_bytes()), "records.strict", 100)))
    settings = Settings.from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
                                 flags_path=tmp_path / "features.json", data_dir=tmp_path / "data",
                                 max_messages_per_second=RATE, message_burst=BURST)
    service = build_service(settings)
    token = TokenAuthority.from_data_dir(settings.data_dir).issue("rate-client")

    clock = Clock()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the loop's wait: recorded, and the clock moves on
        waits.append(seconds)
        clock.now += seconds
        await real_sleep(0)

    monkeypatch.setattr(websocket_module, "time", types.SimpleNamespace(
        perf_counter=clock.perf_counter, time=time.time, time_ns=time.time_ns))
    monkeypatch.setattr(websocket_module, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep}))

    channel = Channel(clock, gaps)
    scope = {"type": "websocket", "path": "/records", "subprotocols": [],
             "headers": [(b"authorization", f"Bearer {token}".encode())],
             CHANNEL_SCOPE_KEY: (channel.receive, channel.send)}
    opened = clock.now
    asyncio.run(service.records.handle(WebSocket(scope, channel.receive, channel.send)))

    assert channel.results == len(gaps)  # every batch answered, none refused
    bucket = TokenBucket(RATE, BURST, now=opened)
    expected = [bucket.take(at) for at in channel.arrivals]
    assert [w for w in expected if w] == pytest.approx(waits, abs=1e-9)
    assert len(waits) == sum(1 for w in expected if w)
    if pattern == "flood":
        assert len(waits) == len(gaps) - BURST  # the burst passes, every later frame waits
