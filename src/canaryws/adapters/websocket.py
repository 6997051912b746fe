"""The ``/records`` WebSocket endpoint: a thin adapter over the core.

One batch reads as a straight line: frame → decode → (pinned cohort) → strategy →
encode → frame → telemetry → [shadow strategy → compare, after the answer went out].
The cohort is decided at connect time and re-decided only when the flags revision
changes (an identity test of the flag source's snapshot per batch, no call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from canaryws.adapters.auth import Identity, TokenAuthority, TokenError
from canaryws.adapters.shadow import ShadowRunner
from canaryws.adapters.telemetry.logs import client_id_var, connection_id_var
from canaryws.adapters.telemetry.records import RecordsTelemetry, span_context
from canaryws.core import contract
from canaryws.core.cohorts import (
    DEFAULT_STRATEGY,
    Cohort,
    EvaluationContext,
    FlagSnapshotView,
    decide_cohort,
    expected_strict_share,
)
from canaryws.core.limits import RecentIds, TokenBucket
from canaryws.core.strategies import STRATEGIES, VERSIONS, Outcome
from canaryws.core.summary import END_CLOSED, END_COHORT_CHANGED, END_INTERVAL, ConnectionSummary

log = logging.getLogger("canaryws.records")

ACCESS_TOKEN_SCOPE_KEY = "canaryws.access_token"
ABORT_SCOPE_KEY = "canaryws.abort"
CHANNEL_SCOPE_KEY = "canaryws.channel"
CLIENT_VERSION_HEADER = b"x-canaryws-client-version"
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012

# Why the service ended a connection itself (the ``reason`` label of
# ``canaryws_connections_terminated_total``; the close frame carries a readable reason).
SLOW_CONSUMER = "slow_consumer"
TOKEN_EXPIRED = "token_expired"
TOKEN_REVOKED = "token_revoked"
_CLOSE_REASONS = {
    SLOW_CONSUMER: "slow consumer: the client stopped reading results",
    TOKEN_EXPIRED: "token expired",
    TOKEN_REVOKED: "token revoked",
}


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    max_records: int
    max_record_length: int
    summary_interval: float = 60.0  # seconds between summary spans of a long-lived connection
    max_messages_per_second: float = 500.0  # per connection; 0 turns the rate limit off
    message_burst: int = 1000
    max_connections_per_client: int = 16  # per process; 0 turns the cap off
    # The work budget, in characters of text frames (one per byte for ASCII): per connection,
    # and per client id over all its connections in this process; 0 turns a budget off.
    max_bytes_per_second: float = 1024 * 1024
    bytes_burst: int = 2 * 1024 * 1024
    max_client_bytes_per_second: float = 4 * 1024 * 1024
    client_bytes_burst: int = 4 * 1024 * 1024
    send_timeout: float = 10.0  # a result blocked this long (the peer stopped reading) ends the connection
    duplicate_id_window: int = 1024  # answered batch ids remembered per connection; 0 turns the check off
    max_connections: int = 4096  # open WebSocket connections per process (503 beyond)
    # New handshakes per second (0: no limit), per process and per source address.
    max_handshakes_per_second: float = 200.0
    handshake_burst: int = 400
    max_source_handshakes_per_second: float = 20.0
    source_handshake_burst: int = 40
    sweep_interval: float = 1.0  # how often open connections are checked (slow reader, token, idle slice)


REFUSAL_LOG_INTERVAL = 10.0  # seconds between two "refused connections" log lines
MAX_TRACKED_SOURCES = 10_000  # source addresses whose handshake rate is tracked (least recently seen forgotten)


def now_iso() -> str:
    """Now, as the Unleash SDKs write the context's ``currentTime`` (``datetime.isoformat``
    in UTC, e.g. ``2026-12-06T17:04:20.123456+00:00``)."""
    return datetime.now(UTC).isoformat()


class FlagsInForce(Protocol):
    """The flag source as the endpoint reads it (canaryws.app.FlagSource)."""

    @property
    def current(self) -> FlagSnapshotView:
        """The snapshot in force."""
        ...

    @property
    def snapshot(self) -> FlagSnapshotView | None:
        """The same snapshot as a plain attribute: a new object whenever a reload is applied,
        so that the batch loop notices a reload with one identity test."""
        ...


def no_revocations(_identity: Identity) -> str | None:
    return None


class ExposeAbort:
    """Outermost ASGI wrapper of the app: hands the endpoint the server's own channel.

    - **Abort.** A peer that stops reading fills its socket buffer; then not even a close
      frame gets through, and closing the transport gracefully would wait for that buffer
      forever. ASGI has no message for "abort", so this exposes ``transport.abort`` of the
      server protocol whose bound ``send`` the server hands to the application (uvicorn's
      WebSocket protocols). Under a server without one, the endpoint falls back to a close
      frame.
    - **The batch loop's channel.** The ``receive``/``send`` this wrapper gets, before the
      middleware stack wraps them once per message (Starlette's exception and state
      wrappers, OpenTelemetry's ASGI middleware, which does work on every ``send`` even
      with its per-message spans excluded). The handshake still goes through the whole
      stack; the batch loop reads and writes frames on this channel (docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            abort = getattr(transport, "abort", None)
            if callable(abort):
                scope[ABORT_SCOPE_KEY] = abort
            scope[CHANNEL_SCOPE_KEY] = (receive, send)
        await self.app(scope, receive, send)


class RecordsRoute:
    """Serves ``/records`` WebSocket connections itself and passes everything else to ``app``.

    A connection's task resumes through every ASGI layer that awaits the endpoint, on
    every frame it waits for (about 30 ns a layer on this stack; docs/benchmarks.md). A
    route inside FastAPI sits under about ten of them (the app, its error and exception
    middleware, the OpenTelemetry middleware, the router, the route's session wrappers)
    that do nothing for this endpoint after the handshake. Placed outside FastAPI, the
    endpoint's handshake and batch loop run under the service's own thin wrappers only.
    """

    def __init__(self, app: ASGIApp, handle: Callable[[WebSocket], Awaitable[None]], path: str = "/records") -> None:
        self.app = app
        self.handle = handle
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if path == self.path:
                await self.handle(WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)


class RecordsEndpoint:
    """Serves one WebSocket connection per ``handle`` call; :meth:`run` watches the open ones."""

    def __init__(
        self,
        *,
        flags: FlagsInForce,
        tokens: TokenAuthority,
        telemetry: RecordsTelemetry,
        limits: EndpointLimits,
        shadow: ShadowRunner,
        allowed_origins: frozenset[str] | None = None,
        revoked: Callable[[Identity], str | None] = no_revocations,
        default_strategy: str = DEFAULT_STRATEGY,
        app_name: str = "canaryws",
        environment: str = "development",
    ) -> None:
        """``default_strategy``: the strategy of every client while ``records.strict`` is
        absent from the flags document (``CANARYWS_DEFAULT_STRATEGY``); ``app_name`` and
        ``environment``: the ``appName`` and ``environment`` of every evaluation context
        (the values the service's Unleash SDK client registers)."""
        self._flags = flags
        self._app_name = app_name
        self._environment = environment
        self._default_strategy = default_strategy
        self._tokens = tokens
        self._telemetry = telemetry
        self._limits = limits
        self._shadow = shadow
        self._allowed_origins = (
            None if allowed_origins is None else frozenset(o.lower().rstrip("/") for o in allowed_origins)
        )
        self._revoked = revoked
        self._open: dict[str, _Connection] = {}
        self._per_client: dict[str, int] = {}
        self._client_bytes: dict[str, TokenBucket] = {}  # the per-client work budgets, while it is connected
        self._handshakes = (TokenBucket(limits.max_handshakes_per_second, limits.handshake_burst, time.perf_counter())
                            if limits.max_handshakes_per_second > 0 else None)
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()  # bounded: MAX_TRACKED_SOURCES
        self._refusals: dict[str, int] = {}
        self._refusals_logged = time.monotonic() - REFUSAL_LOG_INTERVAL
        # Batches answered in this loop round, counted on their summaries once the round's
        # answers are out (see _serve): (summary, outcome, started, answered) on the perf_counter clock.
        self._answered: list[tuple[ConnectionSummary, Outcome, float, float]] = []
        telemetry.totals.track(lambda: [conn.summary for conn in list(self._open.values())])

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def connections_by_strategy(self) -> dict[str, int]:
        """Open connections per strategy of their current cohort (read-only, for the admin API)."""
        counts = dict.fromkeys(STRATEGIES, 0)
        for conn in self._open.values():
            counts[conn.cohort.strategy] = counts.get(conn.cohort.strategy, 0) + 1
        return counts

    # -- handshake -----------------------------------------------------------

    def refused(self, reason: str) -> None:
        """Count a refused handshake or connection (also the door's, :mod:`canaryws.adapters.door`)
        and log the refusals, by reason, at most once per :data:`REFUSAL_LOG_INTERVAL` seconds
        at INFO: a flood of refused clients must not flood the log."""
        self._telemetry.refused(reason)
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._refusals_logged >= REFUSAL_LOG_INTERVAL:
            log.info("refused connections", extra={"refused": dict(self._refusals),
                                                     "seconds": round(now - self._refusals_logged, 1)})
            self._refusals.clear()
            self._refusals_logged = now

    async def _refuse(self, websocket: WebSocket, status: int, error: str, detail: str,
                      retry_after: float | None = None) -> None:
        self.refused(error)
        headers = {"WWW-Authenticate": f'Bearer realm="canaryws", error="{error}"'} if status == 401 else {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        await websocket.send_denial_response(
            JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers or None)
        )

    def _handshake_wait(self, websocket: WebSocket) -> tuple[str, float] | None:
        """``(reason, seconds)`` when this handshake is over a rate, else None: its source
        address's first (a flooding address is refused without spending the process's budget),
        then the process's. A refused handshake spends nothing (TokenBucket.admit)."""
        now = time.perf_counter()
        limits = self._limits
        if limits.max_source_handshakes_per_second > 0:
            client = websocket.scope.get("client")
            source = str(client[0]) if client else "unknown"
            bucket = self._sources.get(source)
            if bucket is None:
                if len(self._sources) >= MAX_TRACKED_SOURCES:
                    self._sources.popitem(last=False)  # the least recently seen
                bucket = self._sources[source] = TokenBucket(limits.max_source_handshakes_per_second,
                                                             limits.source_handshake_burst, now)
            else:
                self._sources.move_to_end(source)
            wait = bucket.admit(now)
            if wait > 0.0:
                return "too_many_handshakes_from_source", wait
        if self._handshakes is not None:
            wait = self._handshakes.admit(now)
            if wait > 0.0:
                return "too_many_handshakes", wait
        return None

    @staticmethod
    def _header(websocket: WebSocket, wanted: bytes) -> str | None:
        name: bytes
        value: bytes
        for name, value in websocket.scope["headers"]:
            if name == wanted:
                return value.decode("latin-1")
        return None

    def _bearer(self, websocket: WebSocket) -> str | None:
        authorization = self._header(websocket, b"authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
        from_query: object = websocket.scope.get(ACCESS_TOKEN_SCOPE_KEY)
        return from_query if isinstance(from_query, str) and from_query else None

    def _claimed_version(self, websocket: WebSocket) -> str | None:
        """The ``X-Canaryws-Client-Version`` header (first 64 characters): advisory, shown on
        the connect span only. Flag constraints see the token's signed properties alone
        (:attr:`Identity.properties`): a client must not opt itself into or out of a cohort."""
        version = self._header(websocket, CLIENT_VERSION_HEADER)
        return None if version is None else version[:64]

    def _origin_refused(self, websocket: WebSocket) -> str | None:
        """The refused Origin, or None. Clients that send no Origin (not browsers) pass."""
        if self._allowed_origins is None:
            return None
        origin = self._header(websocket, b"origin")
        if origin is None or origin.lower().rstrip("/") in self._allowed_origins:
            return None
        return origin

    async def handle(self, websocket: WebSocket) -> None:
        over = self._handshake_wait(websocket)  # first: a refused flood costs as little as possible
        if over is not None:
            reason, wait = over
            await self._refuse(websocket, 429, reason, f"too many new connections; retry in {wait:.1f} s",
                               retry_after=wait)
            return
        if len(self._open) >= self._limits.max_connections:
            await self._refuse(websocket, 503, "over_capacity",
                               f"this process holds its maximum of {self._limits.max_connections} connections",
                               retry_after=1.0)
            return
        ok, subprotocol = contract.negotiate_subprotocol(list(websocket.scope.get("subprotocols") or ()))
        if not ok:
            await self._refuse(
                websocket,
                400,
                "unsupported_subprotocol",
                f"supported subprotocols: {', '.join(contract.SUPPORTED_PROTOCOLS)}",
            )
            return
        origin = self._origin_refused(websocket)
        if origin is not None:
            await self._refuse(websocket, 403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed")
            return
        token = self._bearer(websocket)
        if token is None:
            await self._refuse(websocket, 401, "missing_token", "send Authorization: Bearer <token>")
            return
        try:
            identity = self._tokens.verify(token)
        except TokenError as exc:
            await self._refuse(websocket, 401, "invalid_token", str(exc))
            return
        if self._revoked(identity) is not None:
            await self._refuse(websocket, 401, "invalid_token", "token revoked")
            return
        client_id = identity.client_id
        cap = self._limits.max_connections_per_client
        held = self._per_client.get(client_id, 0)
        if cap and held >= cap:
            await self._refuse(
                websocket,
                429,
                "too_many_connections",
                f"client {client_id!r} already holds {held} connections; the limit is {cap}",
            )
            return
        self._per_client[client_id] = held + 1  # counted before the first await: no race past the cap
        if not held and self._limits.max_client_bytes_per_second > 0:
            self._client_bytes[client_id] = TokenBucket(self._limits.max_client_bytes_per_second,
                                                        self._limits.client_bytes_burst, time.perf_counter())
        try:
            await self._accepted(websocket, subprotocol, identity)
        finally:
            left = self._per_client[client_id] - 1
            if left:
                self._per_client[client_id] = left
            else:
                del self._per_client[client_id]
                self._client_bytes.pop(client_id, None)

    async def _accepted(self, websocket: WebSocket, subprotocol: str | None, identity: Identity) -> None:
        client_id = identity.client_id
        connection_id = uuid.uuid4().hex
        connection_id_var.set(connection_id)
        client_id_var.set(client_id)
        context = EvaluationContext(client_id, connection_id, dict(identity.properties), self._app_name,
                                    self._environment)
        connect_span = self._telemetry.start_connect(connection_id, client_id, websocket.scope["headers"],
                                                     self._claimed_version(websocket))
        with trace.use_span(connect_span, end_on_exit=True):
            snapshot = self._flags.current
            decision = decide_cohort(snapshot, context, VERSIONS, self._default_strategy, now_iso())
            self._telemetry.record_evaluations(connect_span, decision.evaluations, client_id)
            self._telemetry.set_cohort(connect_span, decision.cohort)
            await websocket.accept(subprotocol=subprotocol)
            peer = websocket.scope.get("client")
            log.info(
                "connection accepted",
                extra={"strategy": decision.cohort.strategy, "flags_revision": decision.cohort.flags_revision,
                       "client_address": str(peer[0]) if peer else None},
            )
        cohort = decision.cohort
        now = time.perf_counter()
        conn = _Connection(
            context=context,
            identity=identity,
            cohort=cohort,
            connect=span_context(connect_span),
            summary=ConnectionSummary.opening(connection_id, client_id, cohort, self._strict_share(snapshot)),
            slice_start_ns=time.time_ns(),
            slice_started=now,
            task=asyncio.current_task(),
            abort=websocket.scope.get(ABORT_SCOPE_KEY),
        )
        self._open[connection_id] = conn
        self._telemetry.opened(cohort)
        close_code = 1006
        try:
            await websocket.send_text(
                contract.encode_welcome(connection_id=connection_id, client_id=client_id, cohort=cohort)
            )
            close_code = await self._serve(websocket, conn)
        except WebSocketDisconnect as gone:  # the peer vanished (or was dropped) while we were sending
            close_code = conn.ended[0] if conn.ended else gone.code
        except OSError:  # the same on the server's channel (uvicorn's ClientDisconnected)
            close_code = conn.ended[0] if conn.ended else 1006
        except asyncio.CancelledError:
            if conn.ended is None:  # not ours: the server is stopping, and it sent 1012
                close_code = CLOSE_SERVICE_RESTART
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            close_code = await self._close_ended(websocket, conn)
        except Exception:
            protocol_close = await self._queued_close(websocket)
            if protocol_close is not None:
                close_code = protocol_close
            else:
                log.exception("connection failed")
                close_code = CLOSE_INTERNAL_ERROR
                with contextlib.suppress(Exception):  # the socket may already be gone
                    await websocket.close(CLOSE_INTERNAL_ERROR)
        finally:
            summary = conn.summary
            summary.close_code = close_code
            self._telemetry.closed(summary, close_code)
            self._end_slice(conn, END_CLOSED)  # and out of the open set
            log.info(
                "connection closed",
                extra={"close_code": close_code, "batches": summary.batches, "strategy": summary.strategy},
            )

    @staticmethod
    async def _queued_close(websocket: WebSocket) -> int | None:
        """After a send failed: the close code when the server had already closed the
        connection for a protocol error the client made (e.g. 1007 for invalid UTF-8 read
        in the same chunk as the batch being answered; uvicorn then refuses the send with a
        RuntimeError, not a disconnect). None when no disconnect is waiting: our failure."""
        try:
            async with asyncio.timeout(0.05):
                message = await websocket.receive()
        except Exception:  # noqa: BLE001 - nothing usable queued
            return None
        if message["type"] != "websocket.disconnect":
            return None
        return int(message.get("code") or 1005)

    # -- ending connections from outside the batch loop -------------------------

    async def run(self) -> None:
        """Every ``sweep_interval``: end connections whose peer stopped reading, whose token
        expired or was revoked, and emit the interval summary of idle connections."""
        period = self._limits.sweep_interval
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep(time.perf_counter(), time.time())
            except Exception:  # a sweep must never stop the next one
                log.exception("connection sweep failed")

    def sweep(self, now: float, wall: float) -> None:
        limits = self._limits
        share: float | None = None
        for conn in list(self._open.values()):
            if conn.ended is not None:
                continue
            if conn.sending_since and now - conn.sending_since > limits.send_timeout:
                self._end(conn, SLOW_CONSUMER)
            elif wall >= conn.identity.expires_at:
                self._end(conn, TOKEN_EXPIRED)
            elif self._revoked(conn.identity) is not None:
                self._end(conn, TOKEN_REVOKED)
            elif now - conn.slice_started >= limits.summary_interval:  # busy or idle: the loop reads
                # conn.summary afresh after each await, so a slice may end while it waits
                if share is None:
                    share = self._strict_share(self._flags.current)
                self._end_slice(conn, END_INTERVAL, conn.cohort, share)

    def _strict_share(self, snapshot: FlagSnapshotView) -> float | None:
        """The expected strict share recorded on summaries (the default's when the flag is absent)."""
        return expected_strict_share(snapshot, self._default_strategy)

    def _end(self, conn: _Connection, why: str) -> None:
        conn.ended = (CLOSE_POLICY_VIOLATION, why)
        self._telemetry.terminated(why)
        log.warning("ending connection", extra={"reason": why, "connection": conn.context.connection_id})
        if why == SLOW_CONSUMER and conn.abort is not None:
            # Nothing gets through a full buffer, not even a close frame: drop the TCP
            # connection. The blocked send then fails and the loop ends with ``conn.ended``.
            conn.abort()
        elif conn.task is not None:
            conn.task.cancel()

    async def _close_ended(self, websocket: WebSocket, conn: _Connection) -> int:
        """Close a connection the sweep ended: a close frame if it gets out within a second,
        else drop the TCP connection. Returns the close code recorded."""
        assert conn.ended is not None
        code, why = conn.ended
        try:
            async with asyncio.timeout(1.0):
                await websocket.close(code, _CLOSE_REASONS[why])
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            if conn.abort is not None:
                conn.abort()
        return code

    def _end_slice(self, conn: _Connection, why: str, next_cohort: Cohort | None = None,
                   strict_share: float | None = None) -> None:
        """Emit the connection's current summary and start the next."""
        self._count_answered()  # a summary never ends with answered batches uncounted,
        self._shadow.flush()  # or with comparisons outstanding
        summary = conn.summary
        summary.end = why
        end_ns = time.time_ns()
        telemetry = self._telemetry
        telemetry.emit_summary(summary, conn.slice_start_ns, end_ns, conn.connect)
        totals = telemetry.totals
        with totals.lock:  # the slice moves to the batch metrics' retired totals in one step
            totals.retire(summary)
            if why == END_CLOSED:
                del self._open[conn.context.connection_id]
            elif next_cohort is not None:
                conn.summary = summary.next_slice(next_cohort, strict_share)
        if next_cohort is not None:
            conn.slice_start_ns = end_ns
            conn.slice_started = time.perf_counter()

    # -- batches -------------------------------------------------------------

    def _count_answered(self) -> None:
        """Count the batches answered in this loop round on their summaries, in the order
        they were answered (an event-loop callback that :meth:`_serve` schedules once per
        round; :meth:`_end_slice` calls it too)."""
        answered = self._answered
        if not answered:  # the common case at a slice's end
            return
        batches = answered.copy()
        answered.clear()
        for summary, outcome, started, answered_at in batches:
            try:
                summary.add(outcome, answered_at - started)
            except Exception:  # one batch's bookkeeping must not lose the others'
                log.exception("batch bookkeeping failed")

    async def _serve(self, websocket: WebSocket, conn: _Connection) -> int:
        """The batch loop; returns the close code.

        Between a batch and its answer it does the work and little else
        (docs/benchmarks.md): a clock read, the rate bucket (on locals), an identity test
        of the flags snapshot, the duplicate-id check and a countdown to the next sampled
        batch span. No slice ends here on a timer: the sweep ends the interval slices of
        busy and idle connections alike, so the loop reads ``conn.summary`` afresh after
        each await.
        After the answer: a second clock read, and the batch joins the round's answered
        batches, which :meth:`_count_answered` counts on the summaries once the loop has
        run the other connections scheduled in the same round. Their answers go out back
        to back, not one per bookkeeping step (on a socket, a gap between two answers lets
        the client fall asleep, and the next answer's write pays for waking it). Span
        attributes are built for sampled batches only.
        """
        receive, send = websocket.scope.get(CHANNEL_SCOPE_KEY) or (websocket.receive, websocket.send)
        telemetry = self._telemetry
        shadow_submit = self._shadow.submit
        answered = self._answered
        count_answered = self._count_answered
        call_soon = asyncio.get_running_loop().call_soon
        flags = self._flags
        seen: object = None  # the flags snapshot the loop last compared its cohort's revision with
        default_strategy = self._default_strategy
        limits = self._limits
        max_records = limits.max_records
        max_length = limits.max_record_length
        # The rate limit: core.limits.TokenBucket's arithmetic on locals (a method call per
        # frame cost more than the arithmetic; docs/benchmarks.md).
        rate = limits.max_messages_per_second
        limited = rate > 0
        burst = tokens = float(limits.message_burst)
        stamp = conn.slice_started
        # The work budgets: the connection's bytes on locals, like the rate; the client's
        # (shared by its connections) as a core.limits.TokenBucket.
        byte_rate = limits.max_bytes_per_second
        byte_burst = byte_tokens = float(limits.bytes_burst)
        byte_stamp = stamp
        client_bytes = self._client_bytes.get(conn.identity.client_id)
        window = limits.duplicate_id_window
        recent: RecentIds | None = None  # created at the first batch: idle connections stay small
        cohort = conn.cohort
        strategy = STRATEGIES[cohort.strategy].process
        shadow = cohort.shadow
        context = conn.context
        connection_id = context.connection_id
        clock = time.perf_counter
        decode_batch = contract.decode_batch
        encode_result = contract.encode_result
        each_batch = telemetry.records_each_batch
        gap = telemetry.batch_gap()  # batches until the next batch span
        while True:
            message = await receive()
            text = message.get("text")
            if text is None:
                if message["type"] == "websocket.disconnect":
                    return int(message.get("code") or 1005)
                await websocket.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
                return CLOSE_UNSUPPORTED_DATA
            started = clock()
            if limited:  # = TokenBucket.take: refill (up to the burst), take one, wait off a debt
                tokens += (started - stamp) * rate
                if tokens > burst:
                    tokens = burst
                stamp = started
                tokens -= 1.0
                if tokens < 0.0:
                    telemetry.throttled(cohort.strategy, "frames")
                    await asyncio.sleep(-tokens / rate)
                    started = clock()
            if byte_rate > 0.0:  # = TokenBucket.take(now, len(text)), and the client's
                size = len(text)
                byte_tokens += (started - byte_stamp) * byte_rate
                if byte_tokens > byte_burst:
                    byte_tokens = byte_burst
                byte_stamp = started
                byte_tokens -= size
                wait = -byte_tokens / byte_rate if byte_tokens < 0.0 else 0.0
                shared = client_bytes.take(started, size) if client_bytes is not None else 0.0
                if wait > 0.0 or shared > 0.0:
                    telemetry.throttled(cohort.strategy, "bytes" if wait >= shared else "client_bytes")
                    await asyncio.sleep(wait if wait >= shared else shared)
                    started = clock()
            elif client_bytes is not None and (shared := client_bytes.take(started, len(text))) > 0.0:
                telemetry.throttled(cohort.strategy, "client_bytes")
                await asyncio.sleep(shared)
                started = clock()
            if flags.snapshot is not seen:  # a reload was applied: one identity test per batch, no call
                seen = snapshot = flags.current
                if snapshot.revision != cohort.flags_revision:
                    old, new = cohort, decide_cohort(snapshot, context, VERSIONS, default_strategy, now_iso()).cohort
                    # The connection's cohort changes before the next await: a slice the sweep
                    # ends while the cohort frame is sent must start the next one under it.
                    cohort = conn.cohort = new
                    strategy = STRATEGIES[new.strategy].process
                    shadow = new.shadow
                    if not new.same_treatment(old):
                        telemetry.cohort_changed(old, new)
                        self._end_slice(conn, END_COHORT_CHANGED, new, self._strict_share(snapshot))
                        log.info(
                            "cohort changed",
                            extra={
                                "from_strategy": old.strategy,
                                "to_strategy": new.strategy,
                                "flags_revision": new.flags_revision,
                            },
                        )
                        conn.sending_since = started
                        await send({"type": "websocket.send", "text": contract.encode_cohort_change(new)})
                        conn.sending_since = 0.0

            if gap:
                gap -= 1
                span: Span = INVALID_SPAN
            else:
                span = telemetry.start_batch(conn.connect)
                gap = telemetry.batch_gap()
            try:
                batch = decode_batch(text, max_records)
                if window:
                    if recent is None:
                        recent = RecentIds(window)
                    if not recent.remember(batch.id):
                        raise contract.duplicate_id(batch.id, window)
            except contract.MessageError as err:
                conn.summary.add_error(err.code)
                telemetry.batch_error(span, err.code, err.detail, cohort.strategy, connection_id)
                conn.sending_since = started
                await send({"type": "websocket.send", "text": contract.encode_error(err)})
                conn.sending_since = 0.0
                continue
            try:
                outcome = strategy(batch.records, max_length)
                conn.sending_since = started
                await send({"type": "websocket.send", "text": encode_result(batch.id, outcome)})
                conn.sending_since = 0.0
            except BaseException:
                span.end()
                raise
            ended = clock()
            if not answered:
                call_soon(count_answered)
            answered.append((conn.summary, outcome, started, ended))  # (the sweep may end a slice during a send)
            if span is not INVALID_SPAN or each_batch:
                telemetry.batch_done(span, batch.id, outcome, ended - started, connection_id, end=not shadow)
            if shadow:  # compared once this round's answers are out; ends the span
                shadow_submit(conn.summary, span, batch.records, outcome)


@dataclass(slots=True, kw_only=True)
class _Connection:
    """The endpoint's state for one open connection."""

    context: EvaluationContext
    identity: Identity
    cohort: Cohort
    connect: trace.SpanContext | None
    summary: ConnectionSummary  # the current slice
    slice_start_ns: int
    slice_started: float  # time.perf_counter() at the slice's start
    task: asyncio.Task[None] | None
    abort: Callable[[], None] | None  # drops the TCP connection (see ExposeAbort)
    sending_since: float = 0.0  # perf_counter() when the pending send started; 0.0 when none is pending
    ended: tuple[int, str] | None = field(default=None)  # (close code, reason) once the sweep ended it
