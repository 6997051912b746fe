"""The SDK against a stub server that breaks the contract on purpose (a real WebSocket server
in the test, since the real service cannot be made to): each bad frame becomes a
ContractViolation for the batch it answers, and the session goes on."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import ServerConnection, serve

from canaryws import client as cw

WELCOME = {"type": "welcome", "protocol": "canaryws.records.v1", "connection_id": "c1", "client_id": "stub",
           "cohort": {"strategy": "strict", "strategy_version": 1, "shadow": False, "flags_revision": "r"}}


def good(batch: dict[str, object]) -> dict[str, object]:
    records = batch["records"]
    assert isinstance(records, list)
    return {"type": "result", "id": batch["id"], "strategy": "strict", "strategy_version": 1,
            "accepted": [{"index": i, "value": str(v)} for i, v in enumerate(records)], "skipped": [], "rejected": []}


async def stub(ws: ServerConnection) -> None:
    await ws.send(json.dumps(WELCOME))
    async for frame in ws:
        batch = json.loads(frame)
        kind = batch["records"][0]
        if kind == "not-json":
            await ws.send("{oops")
        elif kind == "wrong-indices":
            await ws.send(json.dumps({**good(batch), "accepted": []}))
        elif kind == "wrong-type":
            await ws.send(json.dumps({**good(batch), "strategy_version": "1"}))
        elif kind == "other-id":
            await ws.send(json.dumps({**good(batch), "id": "nobody-asked"}))
            await ws.send(json.dumps(good(batch)))
        elif kind == "second-welcome":
            await ws.send(json.dumps(WELCOME))
            await ws.send(json.dumps(good(batch)))
        else:
            await ws.send(json.dumps(good(batch)))


@pytest.mark.parametrize(("kind", "problem"), [
    ("not-json", "not a contract message"),
    ("wrong-indices", "exactly once"),
    ("wrong-type", "not a contract message"),
])
def test_a_bad_answer_is_a_violation_for_its_batch(kind: str, problem: str) -> None:
    async def run() -> cw.ContractViolation:
        async with serve(stub, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with cw.connect(f"ws://127.0.0.1:{port}/records", token="t", reconnect=None) as client:
                with pytest.raises(cw.ContractViolation) as violation:
                    await client.process([kind, "x"])
                assert (await client.process(["fine"])).accepted[0].value == "fine"  # the session goes on
                return violation.value

    violation = asyncio.run(run())
    assert problem in violation.problem


@pytest.mark.parametrize(("kind", "problem"), [("other-id", "not in flight"), ("second-welcome", "second welcome")])
def test_a_frame_that_names_no_batch_in_flight_fails_the_oldest(kind: str, problem: str) -> None:
    """Answers come in order, so a frame that names no batch in flight takes the place of the
    oldest one's answer; the late right answer that follows is recorded, not delivered twice."""

    async def run() -> tuple[cw.ContractViolation, list[cw.ContractViolation]]:
        async with serve(stub, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with cw.connect(f"ws://127.0.0.1:{port}/records", token="t", reconnect=None) as client:
                with pytest.raises(cw.ContractViolation) as violation:
                    await client.process([kind])
                assert (await client.process(["next"])).accepted[0].value == "next"
                return violation.value, list(client.violations)

    violation, recorded = asyncio.run(run())
    assert problem in violation.problem
    assert [v.problem for v in recorded] == [f"a result for batch {json.loads(recorded[0].frame)['id']!r}, "
                                             "which is not in flight"]
