"""Contract tests: a real ``canaryws serve`` is driven to send every message of
docs/asyncapi.yaml, and every error code and reason code in them, and each frame is validated
against the document's schemas (by the hook of tests/integration/conftest.py, which sees every
frame the ``websockets`` client receives). The handshake refusals are checked against the
document's refusal table (``x-canaryws-handshake-refusals``): status, ``error`` and headers.

Each test ends with a coverage assertion: what the document lists was provoked and validated,
so a message, code or refusal the document gains without a test here fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from contract_check import ContractRecord, ContractViolation, document, server_messages, validate_server_frame
from harness import PROTOCOL, Service, cohorts_of, flags_doc, free_port, send_batch

pytestmark = pytest.mark.integration

MAX_RECORDS = 7
MAX_RECORD_LENGTH = 8
# One record of each kind, in the contract's order of checks; index 0 is accepted by both strategies.
RECORDS: list[Any] = [" ok ", None, 5, "", "   ", "a\x00b", "x" * (MAX_RECORD_LENGTH + 1)]


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = document()["components"]["schemas"][name]
    return found


def enum_of(schema_name: str, field: str) -> set[str]:
    return set(schema(schema_name)["properties"][field]["enum"])


async def answer(ws: ClientConnection, text: str) -> dict[str, Any]:
    await ws.send(text)
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def one_of_each_cohort(service: Service) -> tuple[str, str]:
    """A client id in the strict cohort and one in the lenient cohort (rollout 50)."""
    cohorts = await cohorts_of(service, [f"contract-{i}" for i in range(24)])
    strict = next(c for c, s in cohorts.items() if s == "strict")
    lenient = next(c for c, s in cohorts.items() if s == "lenient")
    return strict, lenient


def test_every_server_message_error_code_and_reason_matches_the_document(
        tmp_path: Path, contract_record: ContractRecord) -> None:
    """welcome, result (strict and lenient, every reason), error (every code) and cohort frames
    from a real service all validate against docs/asyncapi.yaml, and all of them were seen."""
    env = {"CANARYWS_MAX_RECORDS": str(MAX_RECORDS), "CANARYWS_MAX_RECORD_LENGTH": str(MAX_RECORD_LENGTH)}
    with Service(tmp_path, flags_doc(strict_rollout=50), env=env) as service:

        async def scenario() -> None:
            strict_id, lenient_id = await one_of_each_cohort(service)
            async with service.client(strict_id) as (strict, welcome_s), \
                    service.client(lenient_id) as (lenient, welcome_l):
                assert (welcome_s["type"], welcome_s["cohort"]["strategy"]) == ("welcome", "strict")
                assert (welcome_l["type"], welcome_l["cohort"]["strategy"]) == ("welcome", "lenient")

                # results: strict rejects with every reason, lenient skips its four and accepts the rest
                (result,) = await send_batch(strict, "s-1", RECORDS)
                assert (result["type"], result["strategy"]) == ("result", "strict")
                assert [(a["index"], a["value"]) for a in result["accepted"]] == [(0, "ok")]
                assert {r["code"] for r in result["rejected"]} == enum_of("Rejected", "code")
                (result,) = await send_batch(lenient, "l-1", RECORDS)
                assert (result["type"], result["strategy"]) == ("result", "lenient")
                assert [a["index"] for a in result["accepted"]] == [0, 5, 6]
                assert {s["reason"] for s in result["skipped"]} == {"missing", "not_a_string", "empty", "blank"}

                # error frames, one per code; the connection stays open
                errors = {
                    "invalid_json": await answer(strict, "{not json"),
                    "invalid_message": await answer(strict, '{"type":"batch","id":"e-2"}'),
                    "unknown_type": await answer(strict, '{"type":"subscribe","id":"e-3","records":[]}'),
                    "too_many_records": await answer(strict, json.dumps(
                        {"type": "batch", "id": "e-4", "records": ["r"] * (MAX_RECORDS + 1)})),
                    "duplicate_id": await answer(strict, json.dumps({"type": "batch", "id": "s-1", "records": []})),
                }
                for code, frame in errors.items():
                    assert (frame["type"], frame["code"]) == ("error", code), frame
                assert [f["id"] for f in errors.values()] == [None, "e-2", "e-3", "e-4", "s-1"]

                # a cohort frame: the lenient client's cohort becomes strict when the rollout goes to 100
                revision = welcome_l["cohort"]["flags_revision"]
                service.write_flags(flags_doc(strict_rollout=100))
                service.wait_for_revision(lambda st: st["revision"] != revision and st["state"] == "ok")
                deadline = time.monotonic() + 5
                frames = await send_batch(lenient, "l-2", RECORDS)
                while frames[0]["type"] != "cohort" and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                    frames = await send_batch(lenient, f"l-{time.monotonic()}", RECORDS)
                assert [f["type"] for f in frames] == ["cohort", "result"], frames
                assert (frames[0]["reason"], frames[0]["cohort"]["strategy"]) == ("flags_changed", "strict")
                assert frames[1]["strategy"] == "strict"

        asyncio.run(scenario())

    # Coverage: every server message and every error code of the document was received and validated
    # (`unavailable`, which needs a sink that cannot commit: test_the_v2_frames_match_the_document).
    seen = contract_record.frames
    assert {f["type"] for f in seen} == set(server_messages())
    assert {f["code"] for f in seen if f["type"] == "error"} == enum_of("Error", "code") - {"unavailable"}
    assert not contract_record.violations


def test_the_v2_frames_match_the_document(tmp_path: Path, contract_record: ContractRecord) -> None:
    """Contract v2 from real services: the welcome and results with ``durable``, a replay, the
    ``unavailable`` error of a sink that cannot commit (a PostgreSQL port nothing listens on), and
    the v1 close 1013 in the same situation; every frame validates against docs/asyncapi.yaml."""
    v2 = [Subprotocol("canaryws.records.v2")]

    async def v2_frames(service: Service, batch_ids: list[str]) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {service.token('v2-client')}"}
        frames: list[dict[str, Any]] = []
        for batch_id in batch_ids:  # one connection each: a repeated id is a replay, not a duplicate_id
            async with connect(service.ws_url, additional_headers=headers, subprotocols=v2, open_timeout=10) as ws:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
                frames += await send_batch(ws, batch_id, RECORDS)
        return frames

    with Service(tmp_path / "sqlite", flags_doc(strict_rollout=50)) as service:
        frames = asyncio.run(v2_frames(service, ["d-1", "d-1"]))
        assert [(f["type"], f.get("durable"), f.get("replay")) for f in frames] == [
            ("welcome", True, None), ("result", True, False), ("welcome", True, None), ("result", True, True)]

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with Service(tmp_path / "down", flags_doc(strict_rollout=50), env={"CANARYWS_SINK": dead}) as service:
        frames = asyncio.run(v2_frames(service, ["u-1"]))
        assert (frames[-1]["type"], frames[-1]["code"], frames[-1]["retry_after_ms"]) == ("error", "unavailable", 1000)

        async def v1_closed() -> int:
            async with service.client("v1-client") as (ws, _):
                await ws.send(json.dumps({"type": "batch", "id": "u-2", "records": RECORDS}))
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except ConnectionClosed as closed:
                    assert closed.rcvd is not None
                    return closed.rcvd.code
            raise AssertionError("the v1 connection was not closed")

        assert asyncio.run(v1_closed()) == 1013
    codes = {row["code"] for row in document()["channels"]["records"]["x-canaryws-close-codes"]}
    assert 1013 in codes
    assert any(f.get("code") == "unavailable" for f in contract_record.frames)
    assert not contract_record.violations


# -- handshake refusals ----------------------------------------------------------------------------


def refusal_table() -> dict[tuple[int, str], dict[str, Any]]:
    rows = document()["channels"]["records"]["x-canaryws-handshake-refusals"]
    return {(row["status"], row["error"]): row for row in rows}


def check_refusal(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """An HTTP refusal checked against the document's table; its (status, error)."""
    parsed = json.loads(body)
    assert set(parsed) == {"error", "detail"}, parsed
    key = (status, parsed["error"])
    row = refusal_table().get(key)
    assert row is not None, f"refusal {key} is not in docs/asyncapi.yaml's table: {parsed}"
    lower = {k.lower(): v for k, v in headers.items()}
    assert ("retry-after" in lower) == row["retry_after"], (key, lower)
    if row["retry_after"]:
        assert int(lower["retry-after"]) >= 1
    if status == 401:
        assert lower["www-authenticate"] == f'Bearer realm="canaryws", error="{parsed["error"]}"'
    return key


async def refused(url: str, **kwargs: Any) -> tuple[int, str]:
    try:
        async with connect(url, open_timeout=10, **kwargs):
            pass
    except InvalidStatus as exc:
        response = exc.response
        return check_refusal(response.status_code, dict(response.headers.raw_items()), response.body or b"")
    raise AssertionError(f"the handshake was accepted: {kwargs}")


def raw_http(port: int, request: bytes) -> tuple[int, str]:
    """Send ``request`` (possibly incomplete) and read the answer up to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it all went out
            sock.sendall(request)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return check_refusal(int(status_line.split()[1]), headers, body)


def test_every_handshake_refusal_matches_the_documents_table(tmp_path: Path) -> None:
    """Each refusal of docs/asyncapi.yaml's table, provoked against a real service: the status,
    the JSON body's ``error`` and the headers (Retry-After, WWW-Authenticate) are the table's."""
    env = {
        "CANARYWS_ALLOWED_ORIGINS": "https://app.example",
        "CANARYWS_MAX_CONNECTIONS_PER_CLIENT": "1",
        "CANARYWS_MAX_CONNECTIONS": "2",
        "CANARYWS_HEADER_TIMEOUT": "0.5",
    }
    rates = {  # a process that admits two handshakes from a source, and one in all, then none for a while
        "CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "0.001", "CANARYWS_SOURCE_HANDSHAKE_BURST": "2",
        "CANARYWS_MAX_HANDSHAKES_PER_SECOND": "0.001", "CANARYWS_HANDSHAKE_BURST": "1",
    }
    seen: set[tuple[int, str]] = set()
    with Service(tmp_path / "main", flags_doc(), env=env) as service, \
            Service(tmp_path / "rates", flags_doc(), env=rates) as limited:

        def bearer(client_id: str, svc: Service = service) -> dict[str, str]:
            return {"Authorization": f"Bearer {svc.token(client_id)}"}

        async def scenario() -> None:
            url = service.ws_url
            seen.add(await refused(url, additional_headers=bearer("a"), subprotocols=[Subprotocol("nope.v9")]))
            seen.add(await refused(url, additional_headers=[("Authorization", f"Bearer {service.token('a')}")] * 2))
            seen.add(await refused(url))
            seen.add(await refused(url, additional_headers={"Authorization": "Bearer not-a-token"}))
            seen.add(await refused(url, additional_headers=bearer("a"), origin=Origin("https://evil.example")))
            async with service.client("holder-a"):
                seen.add(await refused(url, additional_headers=bearer("holder-a")))  # 1 per client id
                async with service.client("holder-b"):
                    seen.add(await refused(url, additional_headers=bearer("holder-c")))  # 2 per process

            # the rates: the source's burst of 2 and the process's of 1 are spent within a few handshakes
            for _ in range(4):
                try:
                    async with connect(limited.ws_url, additional_headers=bearer("r", limited),
                                       subprotocols=[Subprotocol(PROTOCOL)], open_timeout=10) as ws:
                        await ws.recv()
                except InvalidStatus as exc:
                    response = exc.response
                    seen.add(check_refusal(response.status_code, dict(response.headers.raw_items()),
                                           response.body or b""))

        asyncio.run(scenario())
        # the door: headers that never complete, and headers over 64 KiB
        seen.add(raw_http(service.port, b"GET /records HTTP/1.1\r\nHost: x\r\n"))
        seen.add(raw_http(service.port, b"GET /records HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * (70 * 1024)
                          + b"\r\n\r\n"))

    assert seen == set(refusal_table()), f"not provoked: {set(refusal_table()) - seen}"


# -- the hook itself -------------------------------------------------------------------------------


def test_the_hook_reports_frames_the_document_does_not_allow(contract_record: ContractRecord) -> None:
    """The conftest hook is not a no-op: frames that break the document (a renamed field, an
    unknown type, a binary frame), received from a stand-in server, are recorded as violations.
    (They are cleared afterwards, so that this test passes.)"""
    bad = [
        '{"type":"result","id":"b","strategy":"strict","version":1,"accepted":[],"skipped":[],"rejected":[]}',
        '{"type":"welcome_back"}',
        b"\x00binary",
    ]
    good = '{"type":"error","id":null,"code":"invalid_json","detail":"frame is not valid JSON"}'

    async def stand_in(ws: ServerConnection) -> None:
        for frame in [*bad, good]:
            await ws.send(frame)
        await ws.wait_closed()

    async def scenario() -> None:
        port = free_port()
        async with serve(stand_in, "127.0.0.1", port), connect(f"ws://127.0.0.1:{port}") as ws:
            for _ in range(len(bad) + 1):
                await ws.recv()

    asyncio.run(scenario())
    violations, contract_record.violations = contract_record.violations, []
    assert len(violations) == len(bad), violations
    assert "'strategy_version' is a required property" in violations[0]
    assert "('version' was unexpected)" in violations[0]
    assert "type 'welcome_back'" in violations[1]
    assert "binary" in violations[2]
    assert [f["type"] for f in contract_record.frames] == ["error"]
    with pytest.raises(ContractViolation):
        validate_server_frame(bad[0])
