"""The client SDK (canaryws.client) against a real ``canaryws serve``: results, pipelining,
error mapping, cohort changes, a restart (1012) mid-stream with every batch answered exactly
once, a revoked token replaced by the provider, 429 back-off, refusals it must not retry,
a bounded give-up, the trace it joins, and the synchronous wrapper.

Every frame the SDK sends in these tests is validated against the AsyncAPI document's
``batch`` message (tests/contract_check.py); every frame the service sends, by the
integration suite's contract hook (tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from websockets.asyncio.client import ClientConnection

from canaryws import client as cw
from canaryws.adapters.auth import TokenAuthority
from canaryws.core.summary import ROLE, ConnectionSummary
from contract_check import validate_client_frame
from harness import Service, flags_doc, free_port, metric_value, run_cli

pytestmark = pytest.mark.integration

FAST = cw.Reconnect(max_attempts=100, initial_delay=0.05, max_delay=0.5, give_up_after=60)


@pytest.fixture(autouse=True)
def sdk_frames_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every text frame the SDK sends is a contract ``batch`` (checked as it is sent)."""
    sent: list[str] = []
    original = ClientConnection.send

    async def send(self: ClientConnection, message: Any, text: bool | None = None) -> None:
        if isinstance(message, str):
            validate_client_frame(message)
            sent.append(message)
        await original(self, message, text=text)

    monkeypatch.setattr(ClientConnection, "send", send)
    yield sent


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with Service(tmp_path, flags_doc(strict_rollout=0), env={"CANARYWS_MAX_RECORDS": "50"}) as svc:
        yield svc


def test_results_pipelining_and_the_welcome(service: Service, sdk_frames_follow_the_contract: list[str]) -> None:
    async def run() -> tuple[cw.CohortInfo | None, list[cw.Result], int]:
        most = 0
        async with cw.connect(service.ws_url, token=service.token("sdk-1"), window=8) as client:
            assert client.welcome is not None and client.client_id == "sdk-1"

            async def one(i: int) -> cw.Result:
                nonlocal most
                most = max(most, client.in_flight)
                return await client.process([f" r{i} ", "", None, 7, "\x01x"])

            results = await asyncio.gather(*(one(i) for i in range(200)))
            return client.cohort, list(results), most

    cohort, results, most = asyncio.run(run())
    assert cohort is not None and cohort.strategy == "lenient"
    for i, result in enumerate(results):  # each answer matched to its own batch
        assert [(a.index, a.value) for a in result.accepted] == [(0, f"r{i}"), (4, "\x01x")]
        assert [(s.index, s.reason) for s in result.skipped] == [(1, "empty"), (2, "missing"), (3, "not_a_string")]
        assert result.rejected == [] and result.strategy == "lenient"
    assert most == 8  # the window was full: 8 batches in flight at once, never more
    assert len({r.id for r in results}) == 200 and len(sdk_frames_follow_the_contract) == 200


def test_error_frames_are_typed_exceptions(service: Service) -> None:
    async def run() -> None:
        async with cw.connect(service.ws_url, token=service.token("sdk-errors")) as client:
            with pytest.raises(cw.BatchError) as too_many:
                await client.process(["a"] * 51, batch_id="big")
            assert (too_many.value.code, too_many.value.batch_id) == ("too_many_records", "big")
            assert "limit is 50" in too_many.value.detail
            assert (await client.process(["a"], batch_id="same")).id == "same"
            with pytest.raises(cw.BatchError) as duplicate:
                await client.process(["b"], batch_id="same")
            assert duplicate.value.code == "duplicate_id"
            with pytest.raises(ValueError, match="max_frame_bytes"):
                await client.process(["x" * (1 << 20)])
            slow = asyncio.create_task(client.process(["c"], batch_id="twice"))
            await asyncio.sleep(0)  # the task has sent its batch and waits for the answer
            with pytest.raises(ValueError, match="already in flight"):
                await client.process(["d"], batch_id="twice")
            assert (await slow).accepted[0].value == "c"
            assert (await client.process([])).accepted == []  # the session goes on after errors

    asyncio.run(run())


def test_cohort_changes_reach_the_callback_and_the_iterator(service: Service) -> None:
    async def run() -> tuple[list[cw.CohortUpdate], list[cw.CohortUpdate], cw.Result]:
        called: list[cw.CohortUpdate] = []
        async with cw.connect(service.ws_url, token=service.token("sdk-cohort"), on_cohort=called.append) as client:
            assert client.cohort is not None and client.cohort.strategy == "lenient"
            iterated: list[cw.CohortUpdate] = []

            async def follow() -> None:
                async for update in client.cohort_changes():
                    iterated.append(update)

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.05)
            service.write_flags(flags_doc(strict_rollout=100))
            deadline = time.monotonic() + 10
            result = await client.process(["a"])
            while result.strategy != "strict" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                result = await client.process(["a"])
        await asyncio.wait_for(follower, 5)  # the iterator ends when the client closes
        return called, iterated, result

    called, iterated, result = asyncio.run(run())
    assert result.strategy == "strict"
    assert [(u.reason, u.previous.strategy, u.cohort.strategy) for u in called] == [
        ("flags_changed", "lenient", "strict")]
    assert iterated == called


def _restart(service: Service, root: Path) -> Service:
    """SIGTERM (the service closes its connections with 1012 after answering what it read),
    then a new process on the same port and data dir."""
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=30) == 0
    again = Service(root, flags_doc(strict_rollout=0))
    again.port = service.port
    return again.start()


def test_a_restart_mid_stream_answers_every_batch_exactly_once(tmp_path: Path) -> None:
    first = Service(tmp_path, flags_doc(strict_rollout=0)).start()
    services = [first]
    closes: list[int] = []
    try:
        async def run() -> tuple[dict[str, cw.Result], int]:
            answers: dict[str, cw.Result] = {}
            async with cw.connect(first.ws_url, token=first.token("sdk-restart"), window=16, reconnect=FAST) as client:
                async def one(i: int) -> None:
                    result = await client.process([f"r{i}", " "], batch_id=f"b-{i}")
                    assert result.id not in answers
                    answers[result.id] = result

                tasks = [asyncio.create_task(one(i)) for i in range(3000)]
                while len(answers) < 300:
                    await asyncio.sleep(0.01)
                loop = asyncio.get_running_loop()
                services.append(await loop.run_in_executor(None, _restart, first, tmp_path))
                await asyncio.gather(*tasks)
                return answers, client.reconnects

        answers, reconnects = asyncio.run(run())
        assert reconnects == 1
        assert len(answers) == 3000
        assert all([(a.index, a.value) for a in r.accepted] == [(0, f"r{r.id[2:]}")] for r in answers.values())
        # On the service's side, across both processes: 3,000 batches processed, none twice.
        done = services[-1].wait_for_spans(lambda s: sum(x.batches for x in _summaries(s)) >= 3000, timeout=10)
        slices = _summaries(done)
        closes = [s.close_code for s in slices if s.close_code is not None]
        assert sum(s.batches for s in slices) == 3000
        assert 300 <= sum(s.batches for s in slices if s.close_code == 1012) < 3000
    finally:
        for svc in services:
            svc.stop()
    assert 1012 in closes


def _summaries(spans: list[dict[str, Any]]) -> list[ConnectionSummary]:
    return [ConnectionSummary.from_attributes(s["attributes"]) for s in spans
            if s["attributes"].get("canaryws.span.role") == ROLE]


def test_a_revoked_token_is_replaced_by_the_provider(service: Service) -> None:
    authority = TokenAuthority.from_data_dir(service.data_dir)
    issued: list[str] = []

    def provider() -> str:
        issued.append(authority.issue("sdk-revoked"))
        return issued[-1]

    async def run() -> tuple[str | None, str | None, list[cw.Result]]:
        async with cw.connect(service.ws_url, token_provider=provider, reconnect=FAST) as client:
            first_connection = client.connection_id
            results = [await client.process(["a"])]
            revoked = await asyncio.to_thread(run_cli, "token", "revoke", issued[0], "--data-dir",
                                              str(service.data_dir))
            assert revoked.returncode == 0, revoked.stderr
            deadline = time.monotonic() + 10
            while client.connection_id == first_connection and time.monotonic() < deadline:
                results.append(await client.process(["b"]))
                await asyncio.sleep(0.05)
            results.append(await client.process(["c"]))
            return first_connection, client.connection_id, results

    first, second, results = asyncio.run(run())
    assert first != second and len(issued) == 2 and issued[0] != issued[1]
    assert [r.accepted[0].value for r in results][-1] == "c"
    spans = service.wait_for_spans(lambda s: any(x.connection_id == first and x.close_code for x in _summaries(s)))
    assert [x.close_code for x in _summaries(spans) if x.connection_id == first and x.close_code] == [1008]


def test_without_a_provider_a_revocation_ends_the_session(service: Service) -> None:
    token = service.token("sdk-no-provider")

    async def run() -> cw.ConnectionClosed:
        async with cw.connect(service.ws_url, token=token, reconnect=FAST) as client:
            await client.process(["a"])
            assert (await asyncio.to_thread(run_cli, "token", "revoke", token, "--data-dir",
                                            str(service.data_dir))).returncode == 0
            with pytest.raises(cw.ConnectionClosed) as closed:
                for _ in range(200):
                    await client.process(["b"])
                    await asyncio.sleep(0.05)
            with pytest.raises(cw.ConnectionClosed):  # and every later call
                await client.process(["c"])
            return closed.value

    closed = asyncio.run(run())
    assert (closed.code, closed.reason) == (1008, "token revoked")


def test_429_is_retried_after_retry_after(tmp_path: Path) -> None:
    env = {"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "1", "CANARYWS_SOURCE_HANDSHAKE_BURST": "1"}
    with Service(tmp_path, flags_doc(), env=env) as service:
        token = service.token("sdk-429")

        async def run() -> tuple[cw.HandshakeRefused, float]:
            async with cw.connect(service.ws_url, token=token):
                with pytest.raises(cw.HandshakeRefused) as refused:  # no policy: the refusal as it is
                    async with cw.connect(service.ws_url, token=token, reconnect=None):
                        pass
                started = time.monotonic()
                async with cw.connect(service.ws_url, token=token, reconnect=FAST) as patient:
                    waited = time.monotonic() - started
                    assert (await patient.process(["a"])).accepted[0].value == "a"
                return refused.value, waited

        refused, waited = asyncio.run(run())
        assert (refused.status, refused.error, refused.retry_after) == (429, "too_many_handshakes_from_source", 1.0)
        assert waited >= 1.0  # Retry-After (1 s) at least, plus jitter
        refusals = metric_value(service.get("/metrics").text, "canaryws_connections_refused_total",
                                reason="too_many_handshakes_from_source")
        assert 1 <= refusals <= 3  # the patient client waited instead of hammering


@pytest.mark.parametrize(("case", "status", "error"), [
    ("bad_token", 401, "invalid_token"),
    ("origin", 403, "origin_not_allowed"),
])
def test_refusals_that_are_not_retried(tmp_path: Path, case: str, status: int, error: str) -> None:
    with Service(tmp_path, flags_doc(), env={"CANARYWS_ALLOWED_ORIGINS": "https://good.example"}) as service:
        token = "not-a-token" if case == "bad_token" else service.token("sdk-refused")
        headers = {"Origin": "https://evil.example"} if case == "origin" else {}

        async def run() -> cw.HandshakeRefused:
            with pytest.raises(cw.HandshakeRefused) as refused:
                async with cw.connect(service.ws_url, token=token, reconnect=FAST, additional_headers=headers):
                    pass
            return refused.value

        started = time.monotonic()
        refused = asyncio.run(run())
        assert time.monotonic() - started < 2
        assert (refused.status, refused.error) == (status, error)
        assert metric_value(service.get("/metrics").text, "canaryws_connections_refused_total", reason=error) == 1


def test_a_provider_gets_one_more_chance_after_a_401(service: Service) -> None:
    tokens = ["not-a-token", service.token("sdk-fresh")]

    async def run() -> str | None:
        async with cw.connect(service.ws_url, token_provider=lambda: tokens.pop(0), reconnect=FAST) as client:
            await client.process(["a"])
            return client.client_id

    assert asyncio.run(run()) == "sdk-fresh" and tokens == []


def test_giving_up_is_bounded() -> None:
    url = f"ws://127.0.0.1:{free_port()}/records"  # nobody listens

    async def run() -> cw.GaveUp:
        policy = cw.Reconnect(max_attempts=4, initial_delay=0.01, max_delay=0.05)
        with pytest.raises(cw.GaveUp) as gave_up:
            async with cw.connect(url, token="t", reconnect=policy):
                pass
        return gave_up.value

    started = time.monotonic()
    gave_up = asyncio.run(run())
    assert time.monotonic() - started < 5
    assert gave_up.attempts == 4 and isinstance(gave_up.last, cw.ConnectFailed)


def test_the_handshake_joins_the_callers_trace(service: Service) -> None:
    tracer = TracerProvider().get_tracer("sdk-test")

    async def run() -> tuple[str, str, str | None]:
        with tracer.start_as_current_span("caller") as span:
            async with cw.connect(service.ws_url, token=service.token("sdk-trace")) as client:
                await client.process(["a"])
                context = span.get_span_context()
                return f"{context.trace_id:032x}", f"{context.span_id:016x}", client.connection_id

    trace_id, span_id, connection_id = asyncio.run(run())
    spans = service.wait_for_spans(lambda s: any(x["name"] == "records.connect" for x in s))
    connect = next(s for s in spans if s["name"] == "records.connect"
                   and s["attributes"].get("canaryws.connection.id") == connection_id)
    assert (connect["trace_id"], connect["parent_span_id"]) == (trace_id, span_id)


def test_the_synchronous_wrapper(service: Service) -> None:
    with cw.connect_sync(service.ws_url, token=service.token("sdk-sync")) as client:
        assert client.cohort is not None and client.cohort.strategy == "lenient"
        result = client.process([" x ", None])
        assert [(a.index, a.value) for a in result.accepted] == [(0, "x")]
        with pytest.raises(cw.BatchError):
            client.process(["a"] * 51)
        assert client.process(["y"]).accepted[0].value == "y"
    with pytest.raises(cw.HandshakeRefused):
        cw.connect_sync(service.ws_url, token="nope", reconnect=None)
