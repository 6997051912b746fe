"""Limits and fairness (docs/contract.md, "Limits") over a real server and real clients.

A client that stops reading is dropped after ``CANARYWS_SEND_TIMEOUT`` without slowing
the others; a flooding connection is slowed by its own token bucket only; connections
per client id are capped; batch ids repeat only outside the window; the Origin
allowlist; permessage-deflate off by default; open connections end when their token
expires; idle connections get interval summary spans.

Timing assertions compare with a baseline measured in the same test (ratios with
generous bounds): the machine may be shared and noisy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin
from websockets.utils import accept_key

from canaryws.adapters.auth import TokenAuthority
from canaryws.core.summary import A_CLOSE_CODE, A_CONNECTION_ID, A_END, A_SEQ, END_CLOSED, END_INTERVAL
from harness import PROTOCOL, Service, flags_doc, metric_value, send_batch

pytestmark = pytest.mark.integration

SEND_TIMEOUT = 2.0  # CANARYWS_SEND_TIMEOUT of the ``service`` fixture
SWEEP = 1.0  # the endpoint checks open connections every second
ALLOWED = "https://app.example"
CLOSED = "canaryws_connections_closed_total"
TERMINATED = "canaryws_connections_terminated_total"
REFUSED = "canaryws_connections_refused_total"
THROTTLED = "canaryws_frames_throttled_total"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One server for every limit that does not get in the way of the other tests."""
    env = {
        "CANARYWS_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "CANARYWS_MAX_CONNECTIONS_PER_CLIENT": "2",
        "CANARYWS_DUPLICATE_ID_WINDOW": "3",
        "CANARYWS_ALLOWED_ORIGINS": ALLOWED,
        "CANARYWS_SUMMARY_INTERVAL": "1",
    }
    with Service(tmp_path_factory.mktemp("limits"), flags_doc(strict_rollout=100), env=env) as svc:
        yield svc


@pytest.fixture(scope="module")
def open_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Any Origin, permessage-deflate on."""
    env = {"CANARYWS_ALLOWED_ORIGINS": "*", "CANARYWS_PER_MESSAGE_DEFLATE": "true"}
    with Service(tmp_path_factory.mktemp("open"), flags_doc(strict_rollout=100), env=env) as svc:
        yield svc


# -- helpers ---------------------------------------------------------------------------


def metrics(service: Service) -> str:
    response = service.get("/metrics")
    assert response.status_code == 200
    return response.text


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (``tcpi_state``): 1 established, 7 closed, 8 close-wait."""
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])


TCP_CLOSE = 7


async def refusal(url: str, **kwargs: Any) -> InvalidStatus:
    try:
        async with connect(url, open_timeout=10, **kwargs):
            pass
    except InvalidStatus as exc:
        return exc
    raise AssertionError("the handshake was accepted")


def refusal_body(exc: InvalidStatus) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.response.body or b"{}")
    return body


def bearer(service: Service, client_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.token(client_id)}"}


class SlowReader:
    """A client that completes a real WebSocket handshake, then sends batches whose
    results are large and never reads a byte (a raw socket with a small receive buffer).

    The frames are masked with a zero key (valid: the key is XORed into the payload),
    so the large shared tail is sent as is, without copying it per batch.
    """

    RECORDS = 200
    RECORD_CHARS = 4000

    def __init__(self, service: Service, client_id: str, batches: int) -> None:
        self.batches = batches
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", service.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /records HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {PROTOCOL}\r\nAuthorization: Bearer {service.token(client_id)}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:  # the answer's head only (the welcome frame may follow: left unread)
            chunk = self.sock.recv(1)
            assert chunk, f"the server closed during the handshake: {head!r}"
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101"), head
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        assert {k.lower(): v for k, v in headers.items()}["sec-websocket-accept"] == accept_key(key), head
        record = json.dumps("r" * self.RECORD_CHARS)
        self.tail = (",".join([record] * self.RECORDS) + "]}").encode()
        self.sent = 0  # whole frames handed to the kernel
        self.error: OSError | None = None
        self.error_at = 0.0
        self.started = 0.0
        self._thread = threading.Thread(target=self._send_all, name="slow-reader", daemon=True)

    def _frame_head(self, n: int) -> bytes:
        prefix = json.dumps({"type": "batch", "id": f"slow-{n:04d}"})[:-1].encode() + b',"records":['
        length = len(prefix) + len(self.tail)
        return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + b"\0\0\0\0" + prefix

    def _send_all(self) -> None:
        try:
            for n in range(self.batches):
                self.sock.sendall(self._frame_head(n))
                self.sock.sendall(self.tail)
                self.sent += 1
        except OSError as exc:
            self.error, self.error_at = exc, time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread.start()

    def dropped(self) -> bool:
        """The server dropped the TCP connection (seen without reading anything)."""
        return self.error is not None or tcp_state(self.sock) == TCP_CLOSE

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)


@dataclass
class SteadyClient:
    """Sends a small batch, waits for its answer, repeats; each latency is tagged with the phase."""

    client_id: str
    interval: float = 0.01
    latencies: dict[str, list[float]] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0

    async def run(self, ws: ClientConnection, phase: list[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            tag = phase[0]
            batch_id = f"{self.client_id}-{self.sent}"
            self.sent += 1
            started = time.perf_counter()
            frames = await send_batch(ws, batch_id, [f" v{self.sent} ", "ok", "", None])
            elapsed = time.perf_counter() - started
            result = frames[-1]
            assert result["type"] == "result" and result["id"] == batch_id, result
            assert [a["value"] for a in result["accepted"]] == [f"v{self.sent}", "ok"]
            self.answered += 1
            self.latencies.setdefault(tag, []).append(elapsed)
            await asyncio.sleep(self.interval)


# -- 1. a client that stops reading ----------------------------------------------------------


def test_slow_reader_is_dropped_without_slowing_the_others(service: Service) -> None:
    pid = service.proc.pid if service.proc else 0
    steady = [SteadyClient(f"steady-{i}") for i in range(4)]
    report: dict[str, Any] = {}

    async def scenario() -> None:
        before = metrics(service)
        phase = ["warmup"]
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            sockets = [(await stack.enter_async_context(service.client(c.client_id)))[0] for c in steady]
            tasks = [asyncio.create_task(c.run(ws, phase, stop)) for c, ws in zip(steady, sockets, strict=True)]
            try:
                await asyncio.sleep(0.5)
                phase[0] = "baseline"
                baseline_rss: list[int] = []
                deadline = time.perf_counter() + 3.0
                while time.perf_counter() < deadline:
                    baseline_rss.append(rss_bytes(pid))
                    await asyncio.sleep(0.05)
                slow = SlowReader(service, "slow-reader", batches=100)
                try:
                    phase[0] = "during"
                    slow.start()
                    during_rss: list[int] = []
                    limit = slow.started + SEND_TIMEOUT + SWEEP + 5.0
                    while not slow.dropped() and time.perf_counter() < limit:
                        during_rss.append(rss_bytes(pid))
                        await asyncio.sleep(0.05)
                    dropped_at = slow.error_at if slow.error is not None else time.perf_counter()
                    phase[0] = "after"
                    assert slow.dropped(), f"still connected {limit - slow.started:.1f} s after its first batch"
                    report.update(
                        drop_s=dropped_at - slow.started, frames_sent=slow.sent, client_error=repr(slow.error),
                        tcp_state=tcp_state(slow.sock),
                    )
                finally:
                    slow.close()
                await asyncio.sleep(1.0)  # the others keep being answered after the drop
            finally:
                stop.set()
                done = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome
        report.update(baseline_rss=max(baseline_rss), during_rss=max(during_rss))
        after = metrics(service)
        report["before"], report["after"] = before, after

    asyncio.run(scenario())

    base = [x for c in steady for x in c.latencies.get("baseline", [])]
    during = [x for c in steady for x in c.latencies.get("during", [])]
    after_drop = [x for c in steady for x in c.latencies.get("after", [])]
    numbers = {
        "baseline_p50_ms": 1000 * percentile(base, 0.5), "baseline_p99_ms": 1000 * percentile(base, 0.99),
        "during_p50_ms": 1000 * percentile(during, 0.5), "during_p99_ms": 1000 * percentile(during, 0.99),
        "samples": (len(base), len(during), len(after_drop)),
        "baseline_rss_mib": report["baseline_rss"] / MiB, "during_rss_mib": report["during_rss"] / MiB,
        "drop_s": report["drop_s"], "slow_frames_sent": report["frames_sent"],
        "client_error": report["client_error"], "tcp_state": report["tcp_state"],
    }
    print(f"\nslow reader: {numbers}")

    # dropped after the send timeout, within the documented bound (+ margin for a busy machine)
    assert SEND_TIMEOUT - 0.1 <= report["drop_s"] <= SEND_TIMEOUT + SWEEP + 3.0, numbers
    # it stopped reading after a few large results: the service stopped reading its frames too
    assert report["frames_sent"] < 50, numbers
    before, after = report["before"], report["after"]
    assert metric_value(after, TERMINATED, reason="slow_consumer") == 1, numbers
    assert metric_value(after, CLOSED, code="1008") - metric_value(before, CLOSED, code="1008") == 1
    # the others lost nothing and were not slowed
    for client in steady:
        assert client.answered == client.sent, client
        assert len(client.latencies.get("after", [])) > 0, client
    assert len(base) >= 40 and len(during) >= 40, numbers
    assert percentile(during, 0.99) <= 4 * percentile(base, 0.99) + 0.050, numbers
    # a bounded send queue: the unread results did not pile up in the service's memory
    assert report["during_rss"] < report["baseline_rss"] + 64 * MiB, numbers


# -- 2. the message rate limit -----------------------------------------------------------------

RATE = 50
BURST = 10


@pytest.fixture(scope="module")
def throttled_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {"CANARYWS_MAX_MESSAGES_PER_SECOND": str(RATE), "CANARYWS_MESSAGE_BURST": str(BURST)}
    with Service(tmp_path_factory.mktemp("throttled"), flags_doc(strict_rollout=100), env=env) as svc:
        yield svc


def test_a_flood_is_slowed_to_the_rate_and_loses_nothing_and_slows_only_itself(throttled_service: Service) -> None:
    service = throttled_service
    flood_n = 150
    # the steady client stays well under the rate: its own bucket never runs dry
    steady = SteadyClient("steady-rate", interval=1 / (RATE / 2.5))
    report: dict[str, Any] = {}

    async def flood(ws: ClientConnection) -> None:
        started = time.perf_counter()
        for i in range(flood_n):
            await ws.send(json.dumps({"type": "batch", "id": f"f-{i}", "records": [f" {i} "]}))
        answers = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(flood_n)]
        report["flood_s"] = time.perf_counter() - started
        assert [(a["type"], a["id"]) for a in answers] == [("result", f"f-{i}") for i in range(flood_n)]
        assert [a["accepted"] for a in answers] == [[{"index": 0, "value": str(i)}] for i in range(flood_n)]

    async def scenario() -> None:
        before = metrics(service)
        phase = ["baseline"]
        stop = asyncio.Event()
        async with service.client("flooder") as (flooder, _), service.client(steady.client_id) as (ws, _):
            task = asyncio.create_task(steady.run(ws, phase, stop))
            try:
                await asyncio.sleep(1.5)
                phase[0] = "during"
                await flood(flooder)
                phase[0] = "after"
            finally:
                stop.set()
                await task
        report["before"], report["after"] = before, metrics(service)

    asyncio.run(scenario())

    base, during = steady.latencies["baseline"], steady.latencies["during"]
    throttled = metric_value(report["after"], THROTTLED) - metric_value(report["before"], THROTTLED)
    numbers = {
        "flood_s": report["flood_s"], "throttled": throttled,
        "steady_baseline_p50_ms": 1000 * percentile(base, 0.5), "steady_during_p50_ms": 1000 * percentile(during, 0.5),
        "steady_during_p99_ms": 1000 * percentile(during, 0.99), "samples": (len(base), len(during)),
    }
    print(f"\nrate limit: {numbers}")
    floor = (flood_n - BURST) / RATE
    assert 0.8 * floor <= report["flood_s"] <= 3 * floor + 2.0, numbers
    assert throttled >= 100, numbers
    assert steady.answered == steady.sent, steady
    assert len(during) >= 20, numbers
    # the steady client is not held back by the flooder's bucket
    assert percentile(during, 0.99) < 20 * percentile(base, 0.5) + 0.100, numbers


# -- 3. connections per client id -----------------------------------------------------------


def test_connections_per_client_id_are_capped(service: Service) -> None:
    async def scenario() -> dict[str, Any]:
        before = metrics(service)
        refused = 0
        async with service.client("capped") as (first, _), service.client("capped") as (second, _):
            third = await refusal(service.ws_url, additional_headers=bearer(service, "capped"))
            refused += 1
            assert third.response.status_code == 429
            body = refusal_body(third)
            assert body["error"] == "too_many_connections" and "2" in body["detail"], body
            # a different client id is not affected
            async with service.client("capped-other") as (other, _):
                assert (await send_batch(other, "o-1", ["x"]))[-1]["type"] == "result"
            # the two open ones still work
            assert (await send_batch(first, "a-1", ["x"]))[-1]["type"] == "result"
            assert (await send_batch(second, "b-1", ["x"]))[-1]["type"] == "result"
            await first.close()
            # once the server has seen the close, a new connection is accepted
            deadline = time.monotonic() + 3.0
            while True:
                try:
                    async with service.client("capped") as (again, _):
                        assert (await send_batch(again, "c-1", ["x"]))[-1]["type"] == "result"
                    break
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429, exc
                    refused += 1
                    assert time.monotonic() < deadline, "still refused 3 s after a connection closed"
                    await asyncio.sleep(0.05)
            assert (await send_batch(second, "b-2", ["x"]))[-1]["type"] == "result"
        return {"before": before, "after": metrics(service), "refused": refused}

    seen = asyncio.run(scenario())
    delta = (metric_value(seen["after"], REFUSED, reason="too_many_connections")
             - metric_value(seen["before"], REFUSED, reason="too_many_connections"))
    assert delta == seen["refused"], seen["refused"]


# -- 4. duplicate batch ids ---------------------------------------------------------------


def test_duplicate_ids_within_the_window_are_refused_per_connection(service: Service) -> None:
    async def answer(ws: ClientConnection, batch_id: str, records: list[Any] | None = None) -> dict[str, Any]:
        frames = await send_batch(ws, batch_id, ["x"] if records is None else records)
        assert len(frames) == 1, frames
        return frames[0]

    async def scenario() -> None:
        async with service.client("dup") as (ws, _), service.client("dup") as (other, _):
            assert (await answer(ws, "a"))["type"] == "result"
            dup = await answer(ws, "a", ["y"])
            assert dup["type"] == "error" and dup["code"] == "duplicate_id" and dup["id"] == "a", dup
            # the connection stays open; the window holds the ids of the last 3 results
            assert (await answer(ws, "b"))["type"] == "result"
            assert (await answer(ws, "c"))["type"] == "result"
            assert (await answer(ws, "a"))["code"] == "duplicate_id"  # window: a b c
            assert (await answer(ws, "d"))["type"] == "result"  # window: b c d
            again = await answer(ws, "a", [" again "])
            # out of the window, so not duplicate_id; the sink (the default) answers it with the
            # outcome committed for "a" the first time, a replay (docs/contract.md, "Versions")
            assert again["type"] == "result" and again["accepted"] == [{"index": 0, "value": "x"}], again
            # window: c d a - b was forgotten before c, d and a
            assert (await answer(ws, "c"))["code"] == "duplicate_id"
            assert (await answer(ws, "b"))["type"] == "result"  # window: d a b
            # an id answered with an error frame is not remembered: it may be reused
            too_many = await answer(ws, "big", ["x"] * 10_001)
            assert (too_many["type"], too_many["code"], too_many["id"]) == ("error", "too_many_records", "big")
            assert (await answer(ws, "big"))["type"] == "result"
            assert (await answer(ws, "big"))["code"] == "duplicate_id"
            # the window is per connection: the other connection of the same client gets results
            # (replays of the committed outcomes)
            for batch_id in ("a", "b", "big"):
                assert (await answer(other, batch_id))["type"] == "result"
            assert (await answer(ws, "e"))["type"] == "result"  # still open

    asyncio.run(scenario())


# -- 5. the Origin allowlist ----------------------------------------------------------------


def test_origin_allowlist(service: Service, open_service: Service) -> None:
    async def accepted(svc: Service, origin: str | None) -> None:
        extra: dict[str, Any] = {} if origin is None else {"origin": Origin(origin)}
        async with svc.client("origin-client", **extra) as (ws, welcome):
            assert welcome["type"] == "welcome"
            assert (await send_batch(ws, "o-1", ["x"]))[-1]["type"] == "result"

    async def scenario() -> None:
        refused = await refusal(service.ws_url, additional_headers=bearer(service, "origin-client"),
                                origin=Origin("https://evil.example"))
        assert refused.response.status_code == 403
        body = refusal_body(refused)
        assert body["error"] == "origin_not_allowed" and "evil.example" in body["detail"], body
        # a lookalike is not the allowed origin
        refused = await refusal(service.ws_url, additional_headers=bearer(service, "origin-client"),
                                origin=Origin("https://app.example.evil"))
        assert (refused.response.status_code, refusal_body(refused)["error"]) == (403, "origin_not_allowed")
        for origin in (ALLOWED, ALLOWED + "/", "HTTPS://App.Example", None):
            await accepted(service, origin)
        # "*": any origin
        for origin in ("https://evil.example", ALLOWED, None):
            await accepted(open_service, origin)

    before = metrics(service)
    asyncio.run(scenario())
    after = metrics(service)
    assert (metric_value(after, REFUSED, reason="origin_not_allowed")
            - metric_value(before, REFUSED, reason="origin_not_allowed")) == 2
    assert metric_value(metrics(open_service), REFUSED) == 0


# -- 6. permessage-deflate ----------------------------------------------------------------


def test_per_message_deflate_is_off_by_default(service: Service, open_service: Service) -> None:
    async def negotiated(svc: Service) -> str | None:
        async with svc.client("deflate-client") as (ws, _):  # the client offers deflate by default
            assert ws.request is not None and ws.response is not None
            assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
            frames = await send_batch(ws, "d-1", [" " + "z" * 2000 + " "])
            assert frames[-1]["accepted"] == [{"index": 0, "value": "z" * 2000}]
            return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(negotiated(service)) is None
    extensions = asyncio.run(negotiated(open_service))
    assert extensions is not None and extensions.startswith("permessage-deflate"), extensions


# -- 7. an open connection ends when its token expires --------------------------------------


def test_an_open_connection_ends_when_its_token_expires(service: Service) -> None:
    ttl = 2
    time.sleep(1.02 - time.time() % 1)  # just past a second boundary: the token lives ttl seconds, not less
    token = TokenAuthority.from_data_dir(service.data_dir).issue("short-lived", ttl_seconds=ttl)
    claims = jwt.decode(token, options={"verify_signature": False})
    expires_at = claims["exp"]
    assert expires_at - claims["iat"] == ttl

    async def scenario() -> tuple[ConnectionClosed, float]:
        async with connect(service.ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                           subprotocols=[PROTOCOL], open_timeout=10) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["type"] == "welcome"
            assert (await send_batch(ws, "t-1", ["x"]))[-1]["type"] == "result"
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), ttl + 5)
            return info.value, time.time()

    before = metrics(service)
    closed, closed_at = asyncio.run(scenario())
    after = metrics(service)
    assert closed.rcvd is not None, closed
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "token expired")
    assert expires_at - 0.05 <= closed_at <= claims["iat"] + ttl + 3, (expires_at, closed_at)
    assert metric_value(after, TERMINATED, reason="token_expired") == 1
    assert metric_value(after, CLOSED, code="1008") - metric_value(before, CLOSED, code="1008") == 1


# -- 8. idle connections get interval summary spans --------------------------------------------


def test_idle_connections_are_sliced_every_summary_interval(service: Service) -> None:
    def slices(spans: list[dict[str, Any]], connection_id: str) -> list[dict[str, Any]]:
        mine = [s for s in spans if s["name"] == "records.connection"
                and s["attributes"].get(A_CONNECTION_ID) == connection_id]
        return sorted(mine, key=lambda s: s["attributes"][A_SEQ])

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with service.client("idle") as (ws, welcome):
            connection_id = welcome["connection_id"]
            opened = time.time_ns()
            assert (await send_batch(ws, "i-1", ["x", ""]))[-1]["type"] == "result"
            spans = await asyncio.to_thread(
                service.wait_for_spans,
                lambda s: sum(x["attributes"][A_END] == END_INTERVAL for x in slices(s, connection_id)) >= 2,
                8.0,
            )
            seen = slices(spans, connection_id)
            # sliced while open and idle: no batch since i-1
            assert len(seen) >= 2 and all(s["attributes"][A_END] == END_INTERVAL for s in seen), seen
            first = seen[0]["attributes"]
            assert first[A_SEQ] == 0 and first["canaryws.connection.batches"] == 1, first
            assert first["canaryws.connection.rejected"] == 1 and A_CLOSE_CODE not in first, first
            assert all(s["attributes"]["canaryws.connection.batches"] == 0 for s in seen[1:]), seen
            assert seen[0]["start_ns"] >= opened - 1_000_000_000, seen[0]
            assert ws.state.name == "OPEN"
            assert (await send_batch(ws, "i-2", ["y"]))[-1]["type"] == "result"  # and still served
        spans = await asyncio.to_thread(
            service.wait_for_spans,
            lambda s: any(x["attributes"][A_END] == END_CLOSED for x in slices(s, connection_id)), 8.0)
        return connection_id, slices(spans, connection_id)

    _, every = asyncio.run(scenario())
    attrs = [s["attributes"] for s in every]
    assert [a[A_SEQ] for a in attrs] == list(range(len(attrs))), attrs  # one span per slice, none lost
    assert [a[A_END] for a in attrs] == [END_INTERVAL] * (len(attrs) - 1) + [END_CLOSED], attrs
    assert attrs[-1][A_CLOSE_CODE] == 1000
    assert sum(a["canaryws.connection.batches"] for a in attrs) == 2, attrs  # the closed slice has the rest
    # the slices tile the connection's life, and an interval slice lasts about the interval (1 s)
    for earlier, later in itertools.pairwise(every):
        assert later["start_ns"] == earlier["end_ns"], (earlier, later)
    for interval in every[:-1]:
        assert 0.9e9 <= interval["end_ns"] - interval["start_ns"] <= 3.5e9, interval
