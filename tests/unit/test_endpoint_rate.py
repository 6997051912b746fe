"""The batch loop's rate limit and work budgets are exactly core.limits.TokenBucket: the loop
runs the bucket's arithmetic on its own locals (a call per frame cost more than the
arithmetic), so this drives the real endpoint on a clock the test controls and compares every
wait it takes with the waits of TokenBuckets asked for the same frames at the same times."""

from __future__ import annotations

import asyncio
import json
import time
import types
from pathlib import Path
from typing import Any

import pytest

from canaryws.adapters.records import loop as loop_module
from canaryws.core.flagdoc import with_rollout
from canaryws.core.limits import TokenBucket
from inprocess import embedded_flags, service_for, token_for, websocket_for

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
        # after the service's own stamps (its handshake buckets start at the real clock)
        self.now = time.perf_counter() + 1000.0

    def perf_counter(self) -> float:
        return self.now


def _frame(index: int, size: int) -> str:
    """A batch frame of exactly ``size`` characters (at least the frame with one empty record)."""
    frame = json.dumps({"type": "batch", "id": f"b{index}", "records": [""]})
    return frame[:-3] + "x" * (size - len(frame)) + frame[-3:] if size > len(frame) else frame


class Channel:
    """The handshake, then one batch per (gap, size) (the clock moves on by the gap before each)."""

    def __init__(self, clock: Clock, frames: list[tuple[float, int]]) -> None:
        self.clock = clock
        self.incoming: list[tuple[float, dict[str, Any]]] = [(0.0, {"type": "websocket.connect"})]
        for i, (gap, size) in enumerate(frames):
            self.incoming.append((gap, {"type": "websocket.receive", "text": _frame(i, size)}))
        self.incoming.append((0.0, {"type": "websocket.disconnect", "code": 1000}))
        self.incoming.reverse()
        self.results = 0
        self.arrivals: list[tuple[float, int]] = []

    async def receive(self) -> dict[str, Any]:
        gap, message = self.incoming.pop()
        self.clock.now += gap
        if message["type"] == "websocket.receive":
            self.arrivals.append((self.clock.now, len(message["text"])))
        await asyncio.sleep(0)
        return message

    async def send(self, message: dict[str, Any]) -> None:
        text = message.get("text")
        if text is not None and json.loads(text)["type"] == "result":
            self.results += 1


def _drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frames: list[tuple[float, int]],
           **limits: float) -> tuple[Channel, list[float], float]:
    """The real endpoint serving ``frames`` on the test's clock: the channel, every wait the
    loop took, and when the connection opened."""
    service = service_for(tmp_path, with_rollout(embedded_flags(), "records.strict", 100), **limits)
    token = token_for(service, "rate-client")

    clock = Clock()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the loop's wait: recorded, and the clock moves on
        waits.append(seconds)
        clock.now += seconds
        await real_sleep(0)

    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(
        perf_counter=clock.perf_counter, time=time.time, time_ns=time.time_ns, monotonic=time.monotonic))
    monkeypatch.setattr(loop_module, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": sleep}))

    channel = Channel(clock, frames)
    opened = clock.now
    asyncio.run(service.records.handle(websocket_for(token, channel.receive, channel.send)))
    assert channel.results == len(frames)  # every batch answered, none refused
    return channel, waits, opened


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_the_loop_waits_exactly_as_the_token_bucket(pattern: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    gaps = PATTERNS[pattern]
    channel, waits, opened = _drive(tmp_path, monkeypatch, [(gap, 0) for gap in gaps],
                                    max_messages_per_second=RATE, message_burst=BURST)
    bucket = TokenBucket(RATE, BURST, now=opened)
    expected = [bucket.take(at) for at, _ in channel.arrivals]
    assert [w for w in expected if w] == pytest.approx(waits, abs=1e-9)
    assert len(waits) == sum(1 for w in expected if w)
    if pattern == "flood":
        assert len(waits) == len(gaps) - BURST  # the burst passes, every later frame waits


# The work budgets, in frame characters: the connection's (on the loop's locals) and the
# client id's (a TokenBucket shared by its connections); (gap, frame size) per frame.
BYTE_RATE, BYTE_BURST = 10_000.0, 4_000
BYTE_PATTERNS = {
    "large frames back to back": [(0.0, 3_000)] * 12,
    "small, then one frame over the burst, then small": [(0.0, 100)] * 5 + [(0.0, 9_000)] + [(0.0, 100)] * 5,
    "paced under the budget": [(0.2, 1_500)] * 10,
    "mixed": [(0.0, 2_500), (0.05, 200), (0.0, 3_900), (0.3, 120), (0.0, 1_000)] * 4,
}


@pytest.mark.parametrize("binding", ["connection", "client", "both"])
@pytest.mark.parametrize("pattern", list(BYTE_PATTERNS))
def test_the_loop_waits_exactly_as_the_byte_budgets(pattern: str, binding: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each frame waits as long as the longer of the two buckets asks (TokenBucket.take(at,
    size) on each); a budget at 0 is off."""
    connection = (BYTE_RATE, BYTE_BURST) if binding != "client" else None
    client = (BYTE_RATE / 2, BYTE_BURST) if binding != "connection" else None
    channel, waits, opened = _drive(
        tmp_path, monkeypatch, BYTE_PATTERNS[pattern], max_messages_per_second=0,
        max_bytes_per_second=connection[0] if connection else 0, bytes_burst=connection[1] if connection else 1,
        max_client_bytes_per_second=client[0] if client else 0, client_bytes_burst=client[1] if client else 1)
    buckets = [TokenBucket(*budget, now=opened) for budget in (connection, client) if budget is not None]
    expected = []
    for at, size in channel.arrivals:
        wait = max(bucket.take(at, size) for bucket in buckets)
        if wait:
            expected.append(wait)
    assert waits == pytest.approx(expected, abs=1e-9)
    # 7,500 characters/s: under the connection's budget, over the client's (5,000/s)
    paced_within = pattern == "paced under the budget" and binding == "connection"
    assert bool(expected) != paced_within
