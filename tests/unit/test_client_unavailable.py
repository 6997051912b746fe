"""The SDK's answer to ``unavailable`` (contract v2), against a stub server that decides how
often the sink "fails" (the real service's outages are in tests/integration/test_sink_*.py):
the batch is resent under its id after ``retry_after_ms``, and given up after ``give_up_after``."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from websockets.asyncio.server import ServerConnection, serve

from canaryws import client as cw
from canaryws.client.backoff import Reconnect

WELCOME = {"type": "welcome", "protocol": "canaryws.records.v2", "connection_id": "c1", "client_id": "stub",
           "cohort": {"strategy": "strict", "strategy_version": 1, "shadow": False, "flags_revision": "r"},
           "durable": True}


def stub(failures: int, sent: Counter[str], retry_after_ms: int = 50) -> object:
    """A v2 server whose sink fails the first ``failures`` sends of each batch id."""

    async def handler(ws: ServerConnection) -> None:
        assert ws.subprotocol == "canaryws.records.v2"
        await ws.send(json.dumps(WELCOME))
        async for frame in ws:
            batch = json.loads(frame)
            sent[batch["id"]] += 1
            if sent[batch["id"]] <= failures:
                await ws.send(json.dumps({"type": "error", "id": batch["id"], "code": "unavailable",
                                          "detail": "stub sink down", "retry_after_ms": retry_after_ms}))
            else:
                await ws.send(json.dumps({"type": "result", "id": batch["id"], "strategy": "strict",
                                          "strategy_version": 1, "accepted": [{"index": 0, "value": "a"}],
                                          "skipped": [], "rejected": [], "durable": True, "replay": False}))
    return handler


def test_a_batch_answered_unavailable_is_resent_after_the_hint_and_then_answered() -> None:
    sent: Counter[str] = Counter()

    async def run() -> tuple[cw.Result, float]:
        async with serve(stub(2, sent), "127.0.0.1", 0, subprotocols=["canaryws.records.v2"]) as server:  # type: ignore[arg-type,list-item]
            port = server.sockets[0].getsockname()[1]
            async with cw.connect(f"ws://127.0.0.1:{port}/records", token="t") as client:
                assert client.durable
                started = time.monotonic()
                result = await client.process(["a"], batch_id="b-1")
                return result, time.monotonic() - started

    result, took = asyncio.run(run())
    assert (result.id, result.durable, result.replay) == ("b-1", True, False)
    assert sent == {"b-1": 3}  # twice unavailable, then committed: the same id each time
    assert 0.1 <= took < 2.0  # two waits of 50-75 ms each (the hint plus up to 50 % jitter)


def test_a_batch_still_unavailable_after_give_up_after_is_a_batch_error() -> None:
    sent: Counter[str] = Counter()

    async def run() -> cw.BatchError:
        async with serve(stub(10**6, sent), "127.0.0.1", 0, subprotocols=["canaryws.records.v2"]) as server:  # type: ignore[arg-type,list-item]
            port = server.sockets[0].getsockname()[1]
            policy = Reconnect(give_up_after=0.3)
            async with cw.connect(f"ws://127.0.0.1:{port}/records", token="t", reconnect=policy) as client:
                try:
                    await client.process(["a"], batch_id="b-2")
                except cw.BatchError as error:
                    return error
        raise AssertionError("no BatchError")

    error = asyncio.run(run())
    assert (error.code, error.batch_id) == ("unavailable", "b-2")
    assert 3 <= sent["b-2"] <= 12  # resent every 50-75 ms for 0.3 s


def test_without_reconnection_unavailable_is_raised_at_once() -> None:
    sent: Counter[str] = Counter()

    async def run() -> cw.BatchError:
        async with serve(stub(1, sent), "127.0.0.1", 0, subprotocols=["canaryws.records.v2"]) as server:  # type: ignore[arg-type,list-item]
            port = server.sockets[0].getsockname()[1]
            async with cw.connect(f"ws://127.0.0.1:{port}/records", token="t", reconnect=None) as client:
                try:
                    await client.process(["a"], batch_id="b-3")
                except cw.BatchError as error:
                    return error
        raise AssertionError("no BatchError")

    assert asyncio.run(run()).code == "unavailable"
    assert sent == {"b-3": 1}
