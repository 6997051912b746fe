"""The door: what uvicorn's HTTP protocol lets in, before any request reaches the app.

uvicorn times out nothing until a first request completes (its keep-alive timer starts after
a response) and caps nothing by default, so a socket that sends nothing, half a request line,
or one header every few seconds stays open for ever, and a few hundred of them take every file
descriptor. :func:`guarded_http_protocol` makes uvicorn's httptools protocol (the one it uses
by default) close:

- a connection whose request headers (a plain request or a WebSocket upgrade) are not complete
  ``header_timeout`` seconds after the connection opened, or after the first byte of a later
  request on a kept-alive connection: answered ``408`` and closed (by one periodic sweep, at
  most a quarter of the timeout, and at most a second, after it ran out);
- a request whose headers grow past :data:`MAX_HEADER_BYTES` before they are complete:
  answered ``431`` and closed (nginx's default stops at 8 KiB a line, uvicorn at nothing);
- a new connection while the process already holds ``max_sockets`` (HTTP and WebSocket; the
  composition passes the WebSocket cap plus :data:`PROBE_HEADROOM`, so that probes and admin
  requests still get in when WebSocket clients fill their cap, which the endpoint enforces with
  its own ``503``): answered ``503`` with ``Retry-After`` at once, without reading it.

Each is counted (``canaryws_connections_refused_total{reason="header_timeout"|"header_too_large"|
"over_capacity"}``
through ``on_refused``). :func:`raise_open_files_limit` lifts the soft limit on open files to
the hard one, and :func:`effective_max_connections` keeps the cap below what the process may
open. (uvicorn's own per-handshake log lines are filtered in
``canaryws.adapters.telemetry.logs.QuietHandshakes``.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("canaryws.door")

HEADER_TIMEOUT = "header_timeout"
HEADER_TOO_LARGE = "header_too_large"
OVER_CAPACITY = "over_capacity"
MAX_HEADER_BYTES = 64 * 1024
"""The most a request line and headers may take (a browser's cookies fit many times over)."""
_RESERVED_FILES = 64  # descriptors kept for the listening socket, files, the flags watcher, telemetry
SWEEPS_PER_TIMEOUT = 4
MAX_SWEEP_PERIOD = 1.0
"""Incomplete headers are looked for every ``header_timeout / 4`` seconds, at most every
second: a connection is answered 408 at most that long after its ``header_timeout``."""
PROBE_HEADROOM = 64
"""Sockets beyond the WebSocket cap that the door still lets in: room for /healthz, /readyz,
/metrics and /admin while WebSocket clients fill theirs."""


def _response(status: str, error: str, detail: str, retry_after: int | None = None) -> bytes:
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close"]
    if retry_after is not None:
        head.insert(1, f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_http_protocol(
    *,
    header_timeout: float,
    max_sockets: int,
    on_refused: Callable[[str], None] | None = None,
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the door's limits (see the module docstring); pass
    it as ``uvicorn.Config(http=...)``."""
    if header_timeout <= 0 or max_sockets < 1:
        raise ValueError("header_timeout must be positive and max_sockets at least 1")
    timeout_response = _response("408 Request Timeout", HEADER_TIMEOUT,
                                 f"request headers not complete within {header_timeout:g} s")
    large_response = _response("431 Request Header Fields Too Large", HEADER_TOO_LARGE,
                                f"request headers larger than {MAX_HEADER_BYTES} bytes")
    full_response = _response("503 Service Unavailable", OVER_CAPACITY,
                              f"this process holds its maximum of {max_sockets} connections", retry_after=1)

    def refused(reason: str) -> None:
        if on_refused is not None:
            try:
                on_refused(reason)
            except Exception:  # counting must never break the door
                log.exception("counting a refused connection failed")

    # Connections whose request headers are incomplete, each with its deadline, in the order
    # they were armed: with one timeout for all, that is deadline order. One timer sweeps them
    # every ``period`` while any wait (a timer per connection cost a handshake ~3 µs more).
    waiting: dict[HttpToolsProtocol, float] = {}
    period = min(header_timeout / SWEEPS_PER_TIMEOUT, MAX_SWEEP_PERIOD)
    sweeper: list[tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None] = [None]

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        sweeper[0] = None
        now = loop.time()
        expired = []
        for protocol, deadline in waiting.items():
            if deadline > now:
                break
            expired.append(protocol)
        for protocol in expired:
            protocol._headers_too_slow()  # type: ignore[attr-defined]  # (ours; it disarms)
        if waiting:
            sweeper[0] = (loop, loop.call_later(period, sweep, loop))

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _armed = False  # a request's headers are incomplete (the protocol is in ``waiting``)
        _header_bytes = 0  # received since the current request began, while its headers are incomplete
        _turned_away = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_sockets:
                self._turned_away = True
                self.transport = transport
                transport.write(full_response)
                transport.close()
                refused(OVER_CAPACITY)
                return
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if not self._armed:
                self._armed = True
                loop = self.loop
                waiting[self] = loop.time() + header_timeout
                running = sweeper[0]
                if running is None or running[0] is not loop:
                    sweeper[0] = (loop, loop.call_later(period, sweep, loop))

        def _disarm(self) -> None:
            self._header_bytes = 0
            if self._armed:
                self._armed = False
                del waiting[self]

        def _turn_away(self, response: bytes, reason: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()
                refused(reason)

        def _headers_too_slow(self) -> None:
            self._turn_away(timeout_response, HEADER_TIMEOUT)

        def data_received(self, data: bytes) -> None:
            if self._turned_away or self.transport.is_closing():
                return
            if self._armed:  # a request's headers are incomplete: how much of them is here?
                end = data.find(b"\r\n\r\n")
                if self._header_bytes + (len(data) if end < 0 else end + 4) > MAX_HEADER_BYTES:
                    self._turn_away(large_response, HEADER_TOO_LARGE)
                    return
            super().data_received(data)
            if self._armed:  # still incomplete after this chunk
                self._header_bytes += len(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a later request on a kept-alive connection gets the same time

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._turned_away:
                return
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def effective_max_connections(configured: int, open_files: int) -> int:
    """``configured``, but never so many that the process runs out of file descriptors with
    the probes' headroom (a few are kept for its own files): beyond that, accept() itself
    would fail."""
    return max(1, min(configured, open_files - _RESERVED_FILES - PROBE_HEADROOM))
