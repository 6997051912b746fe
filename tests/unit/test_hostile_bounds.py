"""The small pure parts of issue 21's bounds (the integration tests in
tests/integration/test_hostile_clients.py drive them against a real server)."""

from __future__ import annotations

import logging

import pytest

from canaryws.adapters.http import PRIVATE_STATUS_KEYS, public_status
from canaryws.adapters.server.door import (
    MAX_HEADER_BYTES,
    MAX_SWEEP_PERIOD,
    PROBE_HEADROOM,
    SWEEPS_PER_TIMEOUT,
    effective_max_connections,
    guarded_http_protocol,
)
from canaryws.adapters.telemetry.logs import QuietHandshakes
from canaryws.adapters.telemetry.records import LABELLED_CLOSE_CODES, close_code_label


def test_the_connection_cap_stays_below_the_open_files_limit() -> None:
    assert effective_max_connections(4096, 1_048_576) == 4096
    assert effective_max_connections(4096, 1024) == 1024 - 64 - PROBE_HEADROOM
    assert effective_max_connections(4096, 100) == 1  # never 0 or negative


def test_the_door_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        guarded_http_protocol(header_timeout=0, max_sockets=10)
    with pytest.raises(ValueError):
        guarded_http_protocol(header_timeout=1, max_sockets=0)
    assert MAX_HEADER_BYTES == 64 * 1024


@pytest.mark.parametrize(("code", "label"), [(1000, "1000"), (1006, "1006"), (1015, "1015"), (999, "other"),
                                             (1016, "other"), (3000, "other"), (4999, "other")])
def test_close_codes_a_client_chooses_fold_into_other(code: int, label: str) -> None:
    assert close_code_label(code) == label
    assert len(LABELLED_CLOSE_CODES) == 16


def _record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, args, None)


@pytest.mark.parametrize("record", [
    _record('%s - "WebSocket %s" 403', "127.0.0.1:5000", "/records"),
    _record('%s - "WebSocket %s" %d', "127.0.0.1:5000", "/records", 429),
    _record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/records"),
    _record("connection rejected (%d %s)", 401, "Unauthorized"),
    _record("HTTP response sent (%d %s)", 400, "Bad Request"),
    _record("connection open"),
    _record("connection closed"),
    _record("ASGI callable returned without completing handshake.", level=logging.ERROR),
])
def test_per_handshake_lines_of_uvicorn_and_websockets_are_dropped(record: logging.LogRecord) -> None:
    assert QuietHandshakes().filter(record) is False


@pytest.mark.parametrize("record", [
    _record("Exception in ASGI application\n", level=logging.ERROR),
    _record("Started server process [%d]", 42),
    _record("Invalid HTTP request received."),
])
def test_other_lines_pass(record: logging.LogRecord) -> None:
    assert QuietHandshakes().filter(record) is True


def test_readyz_details_are_removed_at_any_depth() -> None:
    status = {"flags": {"source": "unleash", "url": "http://u/api", "path": "/etc/f.json", "revision": "r",
                        "last_error": "boom"},
              "telemetry": {"exporters": [{"exporter": "otlp", "target": "http://c", "state": "ok"}]}}
    public = public_status(status)
    assert public == {"flags": {"source": "unleash", "revision": "r"},
                      "telemetry": {"exporters": [{"exporter": "otlp", "state": "ok"}]}}
    assert {"path", "url", "bootstrap_path", "last_error", "target"} == PRIVATE_STATUS_KEYS


def test_one_sweep_answers_each_silent_socket_408_between_its_timeout_and_a_quarter_more() -> None:
    """Sockets opened at different times, a request completing in time and a kept-alive second
    request: each incomplete one is answered 408 after its own ``header_timeout`` and at most
    a sweep period (a quarter of it) later; the complete ones never are."""
    import asyncio
    import socket
    import time

    import uvicorn

    timeout = 0.4
    period = min(timeout / SWEEPS_PER_TIMEOUT, MAX_SWEEP_PERIOD)

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def first_bytes(reader: asyncio.StreamReader, opened: float) -> tuple[bytes, float]:
        data = await asyncio.wait_for(reader.read(200), 5)
        return data, time.monotonic() - opened

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, http=guarded_http_protocol(header_timeout=timeout, max_sockets=100),
                                lifespan="off", log_config=None, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        waits, writers = [], []
        for wave in range(3):  # waves a sweep period and a half apart
            for _ in range(4):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTT")  # half a request line
                writers.append(writer)  # (kept: a writer collected closes its socket)
                waits.append(asyncio.create_task(first_bytes(reader, time.monotonic())))
            if wave < 2:
                await asyncio.sleep(period * 1.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # complete: answered, then kept alive
        complete = await asyncio.wait_for(reader.read(200), 5)
        writer.write(b"GET / HTTP/1.1\r\n")  # a second request whose headers never end
        second = asyncio.create_task(first_bytes(reader, time.monotonic()))
        results = [*(await asyncio.gather(*waits)), await second]
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()
        assert complete.startswith(b"HTTP/1.1 200 ")
        for data, after in results:
            assert data.startswith(b"HTTP/1.1 408 "), data
            assert timeout - 0.02 <= after <= timeout + period + 0.25, after

    asyncio.run(main())
