"""Hostile and broken clients against a real ``canaryws serve`` on loopback (issue 21): each
attack as an attacker would run it, and the bound that holds (docs/contract.md, "Limits").

- a Host and close-code flood leaves ``/metrics`` with the same series and under its size;
- slowloris sockets (silent, half a request line, trickled headers, a kept-alive connection's
  half second request) are answered 408 and closed within ``CANARYWS_HEADER_TIMEOUT`` while a
  real client is served; oversized headers get 431;
- the connection caps (the endpoint's 503, the door's 503 beyond the probes' headroom, the
  open-files limit) and the handshake rates (per process, per source address, their defaults)
  answer as documented, with ``Retry-After``;
- a flood of refused handshakes leaves no ERROR line and a few INFO lines;
- the client's version header cannot choose its cohort; the token's signed properties do;
- ``/readyz`` shows its details only to the admin credential; there is no OpenAPI document;
- a client id sending its most expensive frames at its limits leaves another client's p99
  under the documented bound (``bench/hostile.py --quick``; the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from canaryws.adapters.auth import TokenAuthority
from harness import FLEET_ON_LOOPBACK, PROTOCOL, Service, flags_doc, metric_value, send_batch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
METRICS_SIZE_BOUND = 64 * 1024  # docs/contract.md, "Limits": /metrics of one process


# -- raw HTTP --------------------------------------------------------------------------------


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP response (the body as far as
    Content-Length says, or to EOF)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"no response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def handshake(port: int, token: str | None = None, *, source: str = "127.0.0.1",
              extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, socket.socket]:
    """A WebSocket upgrade of /records from ``source``: status, headers, body and the socket
    (open after a 101; the caller closes it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    lines = ["GET /records HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13",
             f"Sec-WebSocket-Protocol: {PROTOCOL}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    status, headers, body = _read_response(sock)
    return status, headers, body, sock


def closed_within(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the socket, and when (monotonic)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic()


def scrape(service: Service) -> str:
    response = service.get("/metrics")
    assert response.status_code == 200
    return response.text


def series(text: str) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


async def _client_closing_with(service: Service, client_id: str, code: int, headers: dict[str, str]) -> None:
    async with service.client(client_id, additional_headers=headers) as (ws, _):
        await send_batch(ws, "b", ["a", ""])
        await ws.close(code)


# -- bounded telemetry ---------------------------------------------------------------------------


def test_host_and_close_code_floods_add_no_series_and_metrics_stay_under_their_bound(tmp_path: Path) -> None:
    with Service(tmp_path, flags_doc(strict_rollout=50)) as svc:
        # every series an ordinary life makes: batches in both cohorts, normal and application
        # closes, an unknown path, the probes, a refused handshake
        async def warm() -> None:
            for i in range(8):
                await _client_closing_with(svc, f"warm-{i}", 1000 if i % 2 else 3000, {})
        asyncio.run(warm())
        svc.get("/nope")
        svc.get("/readyz")
        assert handshake(svc.port)[0] == 401
        scrape(svc)
        before = scrape(svc)

        def flood(tag: str) -> None:
            with httpx.Client(timeout=10) as http:
                for i in range(200):
                    assert http.get(f"{svc.http_url}/nope-{tag}-{i}", headers={"Host": f"h{i}-{tag}.example"}
                                    ).status_code == 404
                assert http.get(f"{svc.http_url}/nope", headers={"Host": tag * 30_000}).status_code == 404
                # every method on every instrumented path, with and without the credential, a bad body
                for credential in (svc.admin_key(), "wrong-credential-xxxxxx"):
                    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO"):
                        for path in ("/admin/connections", "/admin/revocations", f"/admin/{tag}"):
                            http.request(method, f"{svc.http_url}{path}", content=b'{"token": [1',
                                         headers={"Authorization": f"Bearer {credential}",
                                                  "Content-Type": "application/json"})

            async def closes() -> None:
                for i in range(150):  # every close code a client may send (3000-4999), each a series before
                    await _client_closing_with(
                        svc, f"flood-{tag}-{i}", 3000 + i + (150 if tag == "b" else 0),
                        {"X-Canaryws-Client-Version": f"{tag}-{i}", "User-Agent": f"ua-{tag}-{i}"})
            asyncio.run(closes())

        flood("a")
        after_one = scrape(svc)
        flood("b")
        after_two = scrape(svc)

    # the floods happened and were counted ...
    assert metric_value(after_two, "canaryws_connections_closed_total", code="other") >= 300 + 4
    assert metric_value(after_two, "http_server_duration_milliseconds_count", http_status_code="404") >= 402
    # ... into a bounded set of series: the second flood adds none; the first adds only the HTTP
    # statuses the admin API answers (labelled by status alone) and a cohort's "other" close code
    assert series(after_two) == series(after_one)
    new = series(after_one) - series(before)
    assert all(s.startswith("http_server_duration_milliseconds") or 'code="other"' in s for s in new), new
    statuses = {m[1] for s in new if (m := re.search(r'http_status_code="(\d+)"', s))}
    assert statuses <= {"200", "400", "401", "404", "405", "422"}, statuses
    for text in (after_one, after_two):
        assert ".example" not in text and "aaaa" not in text and "ua-" not in text
        assert not re.search(r'code="[34]\d\d\d"', text)
        assert len(text.encode()) < METRICS_SIZE_BOUND, len(text.encode())


def test_headers_larger_than_64_kib_are_refused_with_431(tmp_path: Path) -> None:
    with Service(tmp_path) as svc:
        for host in ("x" * (1024 * 1024), "y" * (70 * 1024)):
            sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it all went out
                sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            status, headers, body = _read_response(sock)
            sock.close()
            assert (status, json.loads(body)["error"]) == (431, "header_too_large")
            assert headers["connection"] == "close"
        assert svc.get("/healthz").status_code == 200
        assert metric_value(scrape(svc), "canaryws_connections_refused_total", reason="header_too_large") == 2


# -- bounded connections -----------------------------------------------------------------------


def test_slowloris_sockets_are_answered_408_within_the_header_timeout_while_a_real_client_is_served(
        tmp_path: Path) -> None:
    timeout = 2.0
    with Service(tmp_path, env={"CANARYWS_HEADER_TIMEOUT": str(timeout)}) as svc:
        sockets: dict[str, socket.socket] = {}
        opened = time.monotonic()
        for kind in ("silent", "half a request line", "trickled headers", "trickled upgrade", "kept alive"):
            sockets[kind] = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        sockets["half a request line"].sendall(b"GET /healthz HTT")
        keep = sockets["kept alive"]
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(keep)[0] == 200
        second_request = time.monotonic()
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and the blank line never comes

        stop = threading.Event()

        def trickle(sock: socket.socket, first: bytes) -> None:
            with_lines = [first] + [f"X-Slow-{i}: {i}\r\n".encode() for i in range(100)]
            for line in with_lines:
                try:
                    sock.sendall(line)
                except OSError:
                    return
                if stop.wait(0.5):
                    return

        threads = [
            threading.Thread(target=trickle, args=(sockets["trickled headers"], b"GET /healthz HTTP/1.1\r\n")),
            threading.Thread(target=trickle, args=(sockets["trickled upgrade"],
                                                   b"GET /records HTTP/1.1\r\nUpgrade: websocket\r\n"
                                                   b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n")),
        ]
        for thread in threads:
            thread.start()
        try:
            # meanwhile a real client is served, and the probes answer
            async def real() -> list[dict[str, Any]]:
                async with svc.client("real") as (ws, _):
                    return await send_batch(ws, "r-1", [" a ", ""])
            assert asyncio.run(real())[-1]["type"] == "result"
            assert svc.get("/healthz").status_code == 200

            ended = {kind: closed_within(sock, timeout + 5) for kind, sock in sockets.items()}
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            for sock in sockets.values():
                sock.close()
        metrics = scrape(svc)

    for kind, (data, at) in ended.items():
        started = second_request if kind == "kept alive" else opened
        assert data.startswith(b"HTTP/1.1 408 "), (kind, data[:200])
        assert b'"header_timeout"' in data
        assert timeout - 0.1 <= at - started <= timeout + 1.5, (kind, at - started)
    assert metric_value(metrics, "canaryws_connections_refused_total", reason="header_timeout") == 5


def test_connection_caps_answer_503_with_retry_after_and_the_probes_keep_their_headroom(tmp_path: Path) -> None:
    cap, headroom = 20, 64  # PROBE_HEADROOM
    with Service(tmp_path, env={"CANARYWS_MAX_CONNECTIONS": str(cap), "CANARYWS_HEADER_TIMEOUT": "60"}) as svc:
        held = [handshake(svc.port, svc.token(f"cap-{i}")) for i in range(cap)]
        assert [status for status, *_ in held] == [101] * cap
        # the endpoint's cap: 503 over_capacity, Retry-After
        status, headers, body, sock = handshake(svc.port, svc.token("one-too-many"))
        sock.close()
        assert (status, json.loads(body)["error"], headers["retry-after"]) == (503, "over_capacity", "1")
        # the probes and the admin API still get in
        assert svc.get("/healthz").status_code == 200
        assert svc.get("/readyz").status_code == 200
        # sockets that fill the headroom too: the door turns the next one away at once
        idle = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(headroom)]
        time.sleep(0.3)
        turned = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        status, headers, body = _read_response(turned, timeout=5)
        turned.close()
        assert (status, json.loads(body)["error"], headers["retry-after"]) == (503, "over_capacity", "1")
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        assert svc.get("/healthz").status_code == 200
        # one WebSocket leaves: another comes in
        held.pop()[3].close()
        time.sleep(0.3)
        status, *_, sock = handshake(svc.port, svc.token("next"))
        sock.close()
        assert status == 101
        for *_, sock in held:
            sock.close()
        assert metric_value(scrape(svc), "canaryws_connections_refused_total", reason="over_capacity") == 2


class LowFilesService(Service):
    """A service whose process may open only ``files`` files (``ulimit -n``)."""

    files = 300

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.files}:{self.files}", *super().command()]


def test_sockets_beyond_the_open_files_limit_are_turned_away_and_the_service_recovers(tmp_path: Path) -> None:
    """The issue's attack: more silent sockets than the process may open files. The cap is
    lowered to what it may open (with a warning); the door turns the rest away; the header
    timeout reaps the others; nothing fails with "Too many open files"."""
    svc = LowFilesService(tmp_path, env={"CANARYWS_HEADER_TIMEOUT": "2"}).start()
    try:
        sockets = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(400)]
        ended = [closed_within(sock, 8)[0] for sock in sockets]
        for sock in sockets:
            sock.close()
        answers = [data.split(b"\r\n", 1)[0] for data in ended]
        assert set(answers) == {b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 408 Request Timeout"}, set(answers)
        turned_away = answers.count(b"HTTP/1.1 503 Service Unavailable")
        # the WebSocket cap became 300 - 64 reserved - 64 headroom = 172, the door's 236
        assert 400 - 236 <= turned_away <= 400 - 236 + 5, turned_away

        async def real() -> list[dict[str, Any]]:
            async with svc.client("after") as (ws, _):
                return await send_batch(ws, "a-1", ["x"])
        assert asyncio.run(real())[-1]["type"] == "result"
        assert svc.get("/healthz").status_code == 200
        logs = svc.logs()
        assert "CANARYWS_MAX_CONNECTIONS=4096 is above what the process may open (300 files): 172" in logs
        assert "Too many open files" not in logs and '"level": "ERROR"' not in logs
    finally:
        svc.stop()


@contextmanager
def _service(tmp_path: Path, env: dict[str, str], *, defaults: bool = False) -> Iterator[Service]:
    svc = Service(tmp_path, env=env)
    if defaults:  # the documented defaults, not the suite's loopback fleet
        for name in FLEET_ON_LOOPBACK:
            svc.env.pop(name, None)
    with svc:
        yield svc


@pytest.mark.parametrize("scope", ["source", "process"])
def test_handshake_rates_answer_429_with_retry_after(tmp_path: Path, scope: str) -> None:
    rate, burst = 2, 5
    env = ({"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": str(rate), "CANARYWS_SOURCE_HANDSHAKE_BURST": str(burst)}
           if scope == "source" else
           {"CANARYWS_MAX_HANDSHAKES_PER_SECOND": str(rate), "CANARYWS_HANDSHAKE_BURST": str(burst)})
    with _service(tmp_path, env) as svc:
        tokens = TokenAuthority.from_data_dir(svc.data_dir)
        opened = [handshake(svc.port, tokens.issue(f"h-{i}")) for i in range(burst)]
        assert [status for status, *_ in opened] == [101] * burst
        status, headers, body, sock = handshake(svc.port, tokens.issue("h-over"))
        sock.close()
        reason = "too_many_handshakes_from_source" if scope == "source" else "too_many_handshakes"
        assert (status, json.loads(body)["error"]) == (429, reason)
        assert int(headers["retry-after"]) >= 1
        # another source address: its own budget (per source), or the same one (per process)
        status, *_, sock = handshake(svc.port, tokens.issue("h-elsewhere"), source="127.0.0.2")
        sock.close()
        assert status == (101 if scope == "source" else 429)
        time.sleep(1.2 / rate)  # a token comes back (refused handshakes spend none)
        status, *_, sock = handshake(svc.port, tokens.issue("h-later"))
        sock.close()
        assert status == 101
        for *_, sock in opened:
            sock.close()
        refused = metric_value(scrape(svc), "canaryws_connections_refused_total", reason=reason)
        assert refused == (1 if scope == "source" else 2)


def test_default_handshake_rates_let_a_burst_of_40_in_from_one_address(tmp_path: Path) -> None:
    with _service(tmp_path, {}, defaults=True) as svc:
        tokens = [svc.token(f"d-{i}") for i in range(70)]
        started = time.monotonic()
        with ThreadPoolExecutor(35) as pool:
            results = list(pool.map(lambda token: handshake(svc.port, token), tokens))
        elapsed = time.monotonic() - started
        statuses = [status for status, *_ in results]
        for *_, sock in results:
            sock.close()
        accepted = statuses.count(101)
        assert set(statuses) == {101, 429}
        assert 40 <= accepted <= 40 + math.ceil(20 * elapsed) + 1, (accepted, elapsed)
        assert {json.loads(body)["error"] for status, _, body, _ in results if status == 429} == {
            "too_many_handshakes_from_source"}
        # another address is not held back by this one's
        status, *_, sock = handshake(svc.port, svc.token("d-other"), source="127.0.0.3")
        sock.close()
        assert status == 101


def test_a_flood_of_refused_handshakes_logs_no_error_and_a_few_info_lines(tmp_path: Path) -> None:
    env = {"CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "200", "CANARYWS_SOURCE_HANDSHAKE_BURST": "200"}
    with _service(tmp_path, env) as svc:
        log_lines_before = len(svc.logs().splitlines())
        started = time.monotonic()

        def refused_one(i: int) -> int:
            status, _, _, sock = handshake(svc.port, None if i % 2 else "not-a-token")
            sock.close()
            return status

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(refused_one, range(2000)))
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        metrics = scrape(svc)
        new_lines = svc.logs().splitlines()[log_lines_before:]

    assert set(statuses) == {401, 429}
    refused = sum(metric_value(metrics, "canaryws_connections_refused_total", reason=reason)
                  for reason in ("missing_token", "invalid_token", "too_many_handshakes_from_source"))
    assert refused == 2000
    records = [json.loads(line) for line in new_lines if line.startswith("{")]
    assert [r for r in records if r.get("level") in ("ERROR", "CRITICAL")] == []
    assert "Traceback" not in "\n".join(new_lines)
    assert not any("WebSocket /records" in line for line in new_lines)
    summaries = [r for r in records if r.get("message") == "refused connections"]
    assert 1 <= len(summaries) <= math.ceil(elapsed / 10) + 1, (len(summaries), elapsed)
    assert len(new_lines) <= len(summaries) + 10, new_lines[:20]


def test_two_authorization_or_origin_headers_are_refused_with_400(tmp_path: Path) -> None:
    """Which of two headers counts would be a guess (and a proxy might guess otherwise)."""
    with Service(tmp_path) as svc:
        token = svc.token("twice")
        sock = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        lines = ["GET /records HTTP/1.1", f"Host: 127.0.0.1:{svc.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
                 "Sec-WebSocket-Version: 13", f"Authorization: Bearer {token}", "Authorization: Bearer forged"]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, _, body = _read_response(sock)
        sock.close()
        assert (status, json.loads(body)["error"]) == (400, "duplicate_header")
        status, _, body, sock = handshake(svc.port, token, extra={"Origin": "https://a.example"})
        sock.close()
        assert status == 101  # one Origin is fine
        assert metric_value(scrape(svc), "canaryws_connections_refused_total", reason="duplicate_header") == 1


# -- identity ----------------------------------------------------------------------------------


def test_the_client_version_header_cannot_choose_the_cohort_and_signed_properties_do(tmp_path: Path) -> None:
    flags = flags_doc(strict_rollout=100)
    flags["features"][0]["strategies"][0]["constraints"] = [
        {"contextName": "clientVersion", "operator": "SEMVER_GTE", "value": "2.0.0", "inverted": False}]
    with Service(tmp_path, flags) as svc:
        tokens = TokenAuthority.from_data_dir(svc.data_dir)
        cases = {
            "header only": (tokens.issue("v-header"), {"X-Canaryws-Client-Version": "9.9.9"}, "lenient"),
            "signed 2.4.1": (tokens.issue("v-signed", properties={"clientVersion": "2.4.1"}), {}, "strict"),
            "signed 1.0.0, header 9.9.9": (tokens.issue("v-mixed", properties={"clientVersion": "1.0.0"}),
                                           {"X-Canaryws-Client-Version": "9.9.9"}, "lenient"),
            "signed 2.4.1, header 0.1.0": (tokens.issue("v-down", properties={"clientVersion": "2.4.1"}),
                                           {"X-Canaryws-Client-Version": "0.1.0"}, "strict"),
        }
        async def cohort(token: str, headers: dict[str, str]) -> str:
            async with connect(svc.ws_url, additional_headers={"Authorization": f"Bearer {token}", **headers},
                               subprotocols=[PROTOCOL], open_timeout=10) as ws:  # type: ignore[list-item]
                return str(json.loads(await ws.recv())["cohort"]["strategy"])

        for name, (token, headers, strategy) in cases.items():
            assert asyncio.run(cohort(token, headers)) == strategy, name
        spans = svc.wait_for_spans(lambda s: sum(x["name"] == "records.connect" for x in s) >= 4)
    claimed = {s["attributes"]["canaryws.client.id"]: s["attributes"].get("canaryws.client.claimed_version")
               for s in spans if s["name"] == "records.connect"}
    assert claimed == {"v-header": "9.9.9", "v-signed": None, "v-mixed": "9.9.9", "v-down": "0.1.0"}


# -- deployment surface ------------------------------------------------------------------------


def test_readyz_shows_its_details_only_to_the_admin_credential_and_there_is_no_openapi(tmp_path: Path) -> None:
    with Service(tmp_path) as svc:
        public = svc.get("/readyz")
        admin = svc.get("/readyz", admin=True)
        wrong = httpx.get(f"{svc.http_url}/readyz", headers={"Authorization": "Bearer wrong-credential-xxxxx"})
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert svc.get(path).status_code == 404, path
    assert public.status_code == admin.status_code == wrong.status_code == 200
    assert admin.json()["flags"]["path"] == str(svc.flags_path)
    for body in (public.text, wrong.text):
        assert str(tmp_path) not in body and '"path"' not in body
    assert public.json()["flags"]["revision"] == admin.json()["flags"]["revision"]
    for body in (public.json(), wrong.json()):
        assert set(body["flags"]) == set(admin.json()["flags"]) - {"path", "last_error"}


# -- fair CPU ------------------------------------------------------------------------------------

VICTIM_P99_BOUND_MS = 50.0  # docs/contract.md, "Limits"; docs/benchmarks.md, "Worst-case frames"


def test_a_client_id_at_its_limits_leaves_another_clients_p99_under_the_bound(tmp_path: Path) -> None:
    """``bench/hostile.py --quick``: one round of 2 s per phase. Loosely asserted (three times
    the documented bound, on a shared machine); the full run's figures are in
    docs/benchmarks.md. Without the work budgets the same attack costs the victim far more."""
    out = tmp_path / "hostile.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "hostile.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    frames = result["frames"]
    worst_ms = max(max(row["strict"]["ms"], row["lenient"]["ms"]) for row in frames.values())
    assert worst_ms < 3 * 30.0, frames  # docs: the worst frame at the default limits, about 30 ms
    summary = result["victim"]["summary"]
    for shape in ("too_many_zeros", "empty_strings_10k"):
        attacked = summary[f"defaults / {shape}"]
        assert attacked["p99_ms"]["median"] < 3 * VICTIM_P99_BOUND_MS, (shape, attacked)
        # the client's budget (4 MiB/s, and a 4 MiB burst over the ~5 s the attacker runs) binds ...
        assert attacked["attacker_mib_per_second"]["median"] < 4 * 1.5, (shape, attacked)
        # ... and it is what keeps the victim's tail: without it the attacker sends far more
        unbudgeted = summary[f"no budgets / {shape}"]
        assert unbudgeted["attacker_mib_per_second"]["median"] > 2 * attacked["attacker_mib_per_second"]["median"]
    assert summary["no budgets / too_many_zeros"]["p99_ms"]["median"] > summary["defaults / too_many_zeros"][
        "p99_ms"]["median"]
