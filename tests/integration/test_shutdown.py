"""Graceful shutdown of a real ``canaryws serve`` process: SIGTERM stops accepting, answers
what was read, closes every connection with 1012, flushes telemetry and exits within
``CANARYWS_SHUTDOWN_TIMEOUT`` / ``--shutdown-timeout`` (watchdog included)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from canaryws.core.summary import A_CLOSE_CODE, A_CONNECTION_ID, A_END, A_ROLE, END_CLOSED, ROLE
from harness import PROTOCOL, Service, flags_doc, run_cli, send_signal, wait_exit

pytestmark = pytest.mark.integration

# 10,000 one-character records: a 40 KB batch whose result is about 270 KB (every record is
# accepted with its index), so a client that does not read soon blocks the server's send.
AMPLIFIED = ["a"] * 10_000


def batch(batch_id: str, records: list[Any]) -> str:
    return json.dumps({"type": "batch", "id": batch_id, "records": records})


def shutdown_logs(service: Service, message: str) -> list[dict[str, Any]]:
    return [r for r in service.log_records() if r.get("logger") == "canaryws.shutdown" and r["message"] == message]


def closed_summaries(service: Service) -> dict[str, dict[str, Any]]:
    """The closing ``records.connection`` summary of each connection, by connection id."""
    return {
        s["attributes"][A_CONNECTION_ID]: s["attributes"]
        for s in service.spans()
        if s["attributes"].get(A_ROLE) == ROLE and s["attributes"].get(A_END) == END_CLOSED
    }


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def close_code_of(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame until the server closes the connection, and the close code it sent."""
    frames = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames, ws.close_code


def small_receive_buffer_socket(port: int) -> socket.socket:
    """A connected TCP socket whose receive buffer stays small (no autotuning): a client
    that stops reading fills it, and the server's writes, quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def raw_stuck_client(service: Service, client_id: str) -> socket.socket:
    """A client that completes the WebSocket handshake, sends batches whose results cannot
    all fit in the socket buffers, and then never reads again: it will not see, let alone
    answer, a close frame. The server's send to it stays blocked."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    sock.settimeout(10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((
        f"GET /records HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {PROTOCOL}\r\nAuthorization: Bearer {service.token(client_id)}\r\n\r\n"
    ).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"no upgrade response: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.settimeout(1)
    for n in range(50):  # ~13 MB of results; the sends stop when the server stops reading
        payload = batch(f"s-{n}", AMPLIFIED).encode()
        try:  # a masked text frame; the all-zero key leaves the payload as it is
            sock.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, len(payload)) + bytes(4) + payload)
        except TimeoutError:
            break
    return sock


@contextlib.contextmanager
def silent_otlp_endpoint() -> Iterator[str]:
    """An OTLP/HTTP traces URL on a loopback port that takes connections (the kernel's
    backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"


def test_sigterm_answers_what_was_read_closes_with_1012_and_flushes_the_summaries(tmp_path: Path) -> None:
    bound = 8.0
    service = Service(tmp_path, flags_doc(), env={"CANARYWS_SHUTDOWN_TIMEOUT": "30"},
                      extra_args=["--shutdown-timeout", str(bound)])  # the option wins over the variable

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            idle = [await stack.enter_async_context(service.client(f"idle-{i}")) for i in range(3)]
            # A client that stopped reading: the server is blocked sending it a result, and
            # has read the next batch already, when the signal comes.
            slow, slow_welcome = await stack.enter_async_context(
                service.client("slow", sock=small_receive_buffer_socket(service.port), max_queue=1))
            for n in range(40):
                await slow.send(batch(f"slow-{n}", AMPLIFIED))
            await asyncio.sleep(1.0)  # the server answers until its send blocks
            # And a client whose batch has just gone out.
            last, last_welcome = await stack.enter_async_context(service.client("last"))
            await last.send(batch("last-1", [" x "]))
            signalled = send_signal(service)

            # It stops accepting at once, while it is still draining the slow client.
            deadline = time.monotonic() + 3
            while not refuses_connections(service.port):
                assert time.monotonic() < deadline, "the service still accepts connections after SIGTERM"
                await asyncio.sleep(0.05)
            assert service.proc is not None and service.proc.poll() is None, "exited before draining"

            # The slow client reads now: every result the server owes it, in order, then 1012.
            slow_frames, code = await close_code_of(slow)
            assert code == 1012
            assert slow_frames, "no result reached the slow client"
            assert [f["id"] for f in slow_frames] == [f"slow-{n}" for n in range(len(slow_frames))]
            assert all(f["type"] == "result" and len(f["accepted"]) == len(AMPLIFIED) for f in slow_frames)
            assert len(slow_frames) < 40, "the server read every batch: the slow client never blocked it"

            frames, code = await close_code_of(last)
            assert [f["id"] for f in frames] == ["last-1"] and frames[0]["accepted"] == [{"index": 0, "value": "x"}]
            assert code == 1012
            for ws, _ in idle:
                assert await close_code_of(ws) == ([], 1012)

            status = wait_exit(service, bound)
            elapsed = time.monotonic() - signalled
            assert status == 0, f"exit status {status}:\n{service.logs()[-3000:]}"
            assert elapsed < bound

            # Telemetry was flushed: each connection's closing summary, with 1012, is in the file.
            summaries = closed_summaries(service)
            welcomes = [w for _, w in idle] + [slow_welcome, last_welcome]
            for welcome in welcomes:
                assert summaries[welcome["connection_id"]][A_CLOSE_CODE] == 1012
            # What the server counted as answered is exactly what reached the slow client: the
            # result it was sending at the signal, and the batch it had read, were not dropped.
            assert summaries[slow_welcome["connection_id"]]["canaryws.connection.batches"] == len(slow_frames)
            assert summaries[last_welcome["connection_id"]]["canaryws.connection.batches"] == 1

    with service:
        asyncio.run(scenario())
    started = shutdown_logs(service, "shutdown started")
    assert [(r["signal"], r["shutdown_timeout"]) for r in started] == [("SIGTERM", bound)]
    (complete,) = shutdown_logs(service, "shutdown complete")
    assert complete["connections_drained"] is True and complete["seconds"] < bound
    assert not [r for r in service.log_records() if r["level"] == "ERROR"], "errors logged during the shutdown"


def test_a_stuck_client_and_an_unanswering_otlp_endpoint_cannot_hold_the_process_past_the_bound(
        tmp_path: Path) -> None:
    bound = 5.0
    with silent_otlp_endpoint() as otlp:
        service = Service(tmp_path, flags_doc(), env={
            "CANARYWS_SHUTDOWN_TIMEOUT": str(bound),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp,
        })

        async def scenario() -> None:
            async with service.client("well-behaved") as (ws, _):
                stuck = await asyncio.to_thread(raw_stuck_client, service, "stuck")
                try:
                    await asyncio.sleep(0.5)  # the server answers the stuck client until its send blocks
                    signalled = send_signal(service)
                    # The stuck client does not hold up the others' close (the drain waits for it 1.75 s).
                    assert await close_code_of(ws) == ([], 1012)
                    assert time.monotonic() - signalled < 1.5
                    status = await asyncio.to_thread(wait_exit, service, bound + 10)
                    elapsed = time.monotonic() - signalled
                finally:
                    stuck.close()
            assert status == 0, f"exit status {status} after {elapsed:.1f} s:\n{service.logs()[-3000:]}"
            assert elapsed < bound + 1.0, f"exited {elapsed:.1f} s after SIGTERM; the bound is {bound} s"

        with service:
            asyncio.run(scenario())

    # Both were really stuck, and each was cut off within its share of the bound.
    started = shutdown_logs(service, "shutdown started")
    assert [(r["signal"], r["shutdown_timeout"]) for r in started] == [("SIGTERM", bound)]  # from the variable
    (drain,) = [r for r in service.log_records() if r["message"].startswith("connections not closed at the end")]
    assert drain["busy_connections"] == 1
    assert [r for r in service.log_records() if r["message"].startswith("Cancel 1 running task(s)")]
    assert [r for r in service.log_records() if r["message"].startswith("telemetry shutdown did not finish")]
    (complete,) = shutdown_logs(service, "shutdown complete")
    assert complete["connections_drained"] is False and complete["seconds"] < bound


class StuckShutdownService(Service):
    """``canaryws serve`` whose app shutdown blocks the event loop for good (a stuck task):
    only the watchdog can end it."""

    SCRIPT = ("import asyncio, sys, time\n"
              "from canaryws.adapters.records.endpoint import RecordsEndpoint\n"
              "async def run(self):\n"  # the connection sweeper: stopped first by the app's shutdown
              "    try:\n"
              "        await asyncio.sleep(3600)\n"
              "    finally:\n"
              "        time.sleep(3600)\n"
              "RecordsEndpoint.run = run\n"
              "from canaryws.cli import main\n"
              "main(sys.argv[1:], prog_name='canaryws')\n")

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.SCRIPT, *super().command()[3:]]


def test_the_watchdog_ends_a_process_whose_shutdown_is_stuck_at_the_bound(tmp_path: Path) -> None:
    bound = 2.0
    service = StuckShutdownService(tmp_path, flags_doc(), extra_args=["--shutdown-timeout", str(bound)])
    with service:
        assert service.command()[3] == "serve"
        signalled = send_signal(service)
        status = wait_exit(service, bound + 10)
        elapsed = time.monotonic() - signalled
    assert status == 1, f"exit status {status}:\n{service.logs()[-3000:]}"
    assert bound - 0.1 <= elapsed < bound + 1.0, f"exited {elapsed:.1f} s after SIGTERM; the bound is {bound} s"
    assert shutdown_logs(service, "shutdown started")
    (forced,) = shutdown_logs(service, "shutdown did not finish within the shutdown timeout; forcing exit")
    assert (forced["level"], forced["shutdown_timeout"], forced["exit_status"]) == ("ERROR", bound, 1)
    assert not shutdown_logs(service, "shutdown complete")


def test_sigint_and_the_default_bound(tmp_path: Path) -> None:
    service = Service(tmp_path, flags_doc())
    service.env.pop("CANARYWS_SHUTDOWN_TIMEOUT", None)
    with service:
        send_signal(service, signal.SIGINT)
        status = wait_exit(service, 10)
    assert status == 0, service.logs()[-3000:]
    (started,) = shutdown_logs(service, "shutdown started")
    assert (started["signal"], started["shutdown_timeout"]) == ("SIGINT", 10.0)
    # The split: the app's shutdown gets a third (at most 5 s), the connections what the
    # app and the reserve before the watchdog leave.
    assert (started["app_seconds"], started["connections_seconds"]) == (3.333, 5.667)
    (complete,) = shutdown_logs(service, "shutdown complete")
    assert complete["connections_drained"] is True


def test_the_bound_must_be_a_positive_number_of_seconds(tmp_path: Path) -> None:
    args = ["serve", "--port", "1", "--data-dir", str(tmp_path / "d")]
    done = run_cli(*args, "--shutdown-timeout", "0")
    assert done.returncode == 2 and "--shutdown-timeout" in done.stderr, done.stderr
    done = run_cli(*args, env={"CANARYWS_SHUTDOWN_TIMEOUT": "-1"})
    assert done.returncode == 1, done.stderr
    assert "CANARYWS_SHUTDOWN_TIMEOUT" in done.stderr and "positive" in done.stderr, done.stderr
