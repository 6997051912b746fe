"""Contract v1 over a real uvicorn server and a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness import PROTOCOL, Service, flags_doc, send_batch

pytestmark = pytest.mark.integration

GUIDE_RECORDS = [" a ", "", "  ", "b", None, 5]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("svc"), flags_doc(strict_rollout=100)) as svc:
        yield svc


def test_welcome_then_result_per_batch_in_order(service: Service) -> None:
    async def scenario() -> None:
        async with service.client("client-w") as (ws, welcome):
            assert ws.subprotocol == PROTOCOL
            assert welcome["type"] == "welcome"
            assert welcome["protocol"] == PROTOCOL
            assert welcome["client_id"] == "client-w"
            assert len(welcome["connection_id"]) >= 16
            assert welcome["cohort"]["strategy"] == "strict"
            assert welcome["cohort"]["strategy_version"] == 1
            assert welcome["cohort"]["shadow"] is False
            assert welcome["cohort"]["flags_revision"] == service.get("/readyz").json()["flags"]["revision"]
            frames = await send_batch(ws, "b-1", GUIDE_RECORDS)
            assert frames == [{
                "type": "result", "id": "b-1", "strategy": "strict", "strategy_version": 1,
                "accepted": [{"index": 0, "value": "a"}, {"index": 3, "value": "b"}],
                "skipped": [],
                "rejected": [{"index": 1, "code": "empty"}, {"index": 2, "code": "blank"},
                             {"index": 4, "code": "missing"}, {"index": 5, "code": "not_a_string"}],
            }]
            # pipelined batches are answered once each, in order
            for i in range(20):
                await ws.send(json.dumps({"type": "batch", "id": f"p-{i}", "records": [f" r{i} "]}))
            ids = [json.loads(await ws.recv())["id"] for _ in range(20)]
            assert ids == [f"p-{i}" for i in range(20)]

    asyncio.run(scenario())


def test_error_frames_do_not_end_the_connection(service: Service) -> None:
    async def scenario() -> None:
        async with service.client("client-e") as (ws, _):
            await ws.send("{not json")
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "invalid_json" and err["id"] is None
            await ws.send(json.dumps({"type": "subscribe", "id": "s-1"}))
            err = json.loads(await ws.recv())
            assert (err["code"], err["id"]) == ("unknown_type", "s-1")
            await ws.send(json.dumps({"type": "batch", "id": "x-1", "records": "nope"}))
            err = json.loads(await ws.recv())
            assert (err["code"], err["id"]) == ("invalid_message", "x-1")
            await ws.send(json.dumps({"type": "batch", "id": "big", "records": ["x"] * 10_001}))
            err = json.loads(await ws.recv())
            assert (err["code"], err["id"]) == ("too_many_records", "big")
            frames = await send_batch(ws, "ok-1", ["fine"])
            assert frames[-1]["accepted"] == [{"index": 0, "value": "fine"}]

    asyncio.run(scenario())


def test_binary_frames_close_with_1003(service: Service) -> None:
    async def scenario() -> None:
        async with service.client("client-bin") as (ws, _):
            await ws.send(b'{"type":"batch"}')
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1003

    asyncio.run(scenario())


def _refusal(service: Service, headers: dict[str, str] | None = None, subprotocols: list[str] | None = None,
             query: str = "") -> InvalidStatus:
    async def scenario() -> InvalidStatus:
        try:
            async with connect(service.ws_url + query, additional_headers=headers or {},
                               subprotocols=subprotocols, open_timeout=10):  # type: ignore[arg-type]
                pass
        except InvalidStatus as exc:
            return exc
        raise AssertionError("connection was accepted")

    return asyncio.run(scenario())


def test_refused_without_a_token(service: Service) -> None:
    refusal = _refusal(service)
    assert refusal.response.status_code == 401
    assert json.loads(refusal.response.body or b"{}")["error"] == "missing_token"
    assert "Bearer" in refusal.response.headers["WWW-Authenticate"]


def test_refused_with_a_forged_token(service: Service, tmp_path: Path) -> None:
    from canaryws.adapters.auth import TokenAuthority

    foreign = TokenAuthority.from_data_dir(tmp_path / "other").issue("client-f")
    refusal = _refusal(service, {"Authorization": f"Bearer {foreign}"})
    assert refusal.response.status_code == 401
    assert json.loads(refusal.response.body or b"{}")["error"] == "invalid_token"
    # a genuine token with its subject altered
    header, payload, sig = service.token("client-f").split(".")
    import base64

    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "client-g"
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _refusal(service, {"Authorization": f"Bearer {header}.{altered}.{sig}"}).response.status_code == 401


def test_unknown_subprotocol_is_refused_and_none_means_v1(service: Service) -> None:
    refusal = _refusal(service, {"Authorization": f"Bearer {service.token('c')}"},
                       subprotocols=["canaryws.records.v9"])
    assert refusal.response.status_code == 400
    assert json.loads(refusal.response.body or b"{}")["error"] == "unsupported_subprotocol"

    async def no_offer() -> dict[str, object]:
        async with connect(service.ws_url, additional_headers={"Authorization": f"Bearer {service.token('c')}"},
                           open_timeout=10) as ws:
            assert ws.subprotocol is None
            welcome: dict[str, object] = json.loads(await ws.recv())
            return welcome

    assert asyncio.run(no_offer())["protocol"] == PROTOCOL


def test_browser_access_token_query_parameter_works_and_is_never_logged(service: Service) -> None:
    token = service.token("browser-1")

    async def scenario() -> None:
        async with connect(f"{service.ws_url}?access_token={token}&lang=en", open_timeout=10) as ws:
            welcome = json.loads(await ws.recv())
            assert welcome["client_id"] == "browser-1"
            await send_batch(ws, "q-1", ["x"])

    asyncio.run(scenario())
    spans = service.wait_for_spans(lambda s: any(
        x["attributes"].get("canaryws.client.id") == "browser-1" and x["name"] == "records.connection" for x in s))
    assert any(x["attributes"].get("canaryws.client.id") == "browser-1" for x in spans)
    trace_text = (service.data_dir / "traces.jsonl").read_text()
    assert token not in trace_text and token not in service.logs()
    assert token.split(".")[2] not in trace_text + service.logs()


def test_probes(service: Service) -> None:
    assert service.get("/healthz").json() == {"status": "ok"}
    ready = service.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["flags"]["source"] == "file"
    assert body["flags"]["state"] == "ok"
    assert len(body["flags"]["revision"]) >= 8
    assert "path" not in body["flags"]  # a detail for the admin credential only
    assert service.get("/readyz", admin=True).json()["flags"]["path"].endswith("features.json")
    with pytest.raises(httpx.HTTPStatusError):
        service.get("/nope").raise_for_status()
