"""A ``/records`` connection's life, and the sweep that ends connections from outside the loop.

:meth:`RecordsEndpoint.handle` takes one WebSocket from the upgrade request to the close:
the gate (handshake rates, connection cap), the admission (:func:`admission.admit`), the
per-client cap, then accept, the welcome frame, the batch loop (:mod:`.loop`) and the
close, with the connection's summary slices emitted as it goes. :meth:`RecordsEndpoint.run`
sweeps the open connections every second: a client that stopped reading, an expired or
revoked token, a summary interval that ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from canaryws.adapters.asgi.frame_writer import text_writer
from canaryws.adapters.asgi.held_writes import hold_writes
from canaryws.adapters.asgi.scope import ABORT_SCOPE_KEY, ACCESS_TOKEN_SCOPE_KEY, CHANNEL_SCOPE_KEY
from canaryws.adapters.auth import AcceptedTokens, Identity, TokenAuthority
from canaryws.adapters.records.admission import Admitted, Refusal, admit, normalized_origins
from canaryws.adapters.records.after_round import AfterRound
from canaryws.adapters.records.connection import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_REASONS,
    CLOSE_SERVICE_RESTART,
    SLOW_CONSUMER,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    Connection,
)
from canaryws.adapters.records.flags_view import FlagsInForce, now_iso
from canaryws.adapters.records.gate import HandshakeGate
from canaryws.adapters.records.loop import BatchLoop
from canaryws.adapters.shadow import ShadowRunner
from canaryws.adapters.sink.committer import Committer
from canaryws.adapters.telemetry.logs import client_id_var, connection_id_var
from canaryws.adapters.telemetry.records import CurrentSpan, RecordsTelemetry, span_context
from canaryws.core import contract
from canaryws.core.cohorts import (
    DEFAULT_STRATEGY,
    Cohort,
    EvaluationContext,
    FlagSnapshotView,
    decide_cohort,
    expected_strict_share,
)
from canaryws.core.limits import TokenBucket
from canaryws.core.strategies import STRATEGIES, VERSIONS
from canaryws.core.summary import END_CLOSED, END_INTERVAL, ConnectionSummary, is_synthetic

log = logging.getLogger("canaryws.records")


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


def no_revocations(_identity: Identity) -> str | None:
    return None


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
        committer: Committer | None = None,
    ) -> None:
        """``default_strategy``: the strategy of every client while ``records.strict`` is
        absent from the flags document (``CANARYWS_DEFAULT_STRATEGY``); ``app_name`` and
        ``environment``: the ``appName`` and ``environment`` of every evaluation context
        (the values the service's Unleash SDK client registers); ``committer``: the sink's
        group commit (None: ``CANARYWS_SINK=none``, batches are answered without persisting)."""
        self._durable = committer is not None
        self._flags = flags
        self._app_name = app_name
        self._environment = environment
        self._default_strategy = default_strategy
        self._tokens = AcceptedTokens(tokens)  # a reconnect's token: its expiry checked, not its signature
        self._telemetry = telemetry
        self._limits = limits
        self._allowed_origins = normalized_origins(allowed_origins)
        self._revoked = revoked
        self._open: dict[str, Connection] = {}
        self._per_client: dict[str, int] = {}
        self._client_bytes: dict[str, TokenBucket] = {}  # the per-client work budgets, while it is connected
        self._gate = HandshakeGate(
            max_per_second=limits.max_handshakes_per_second, burst=limits.handshake_burst,
            max_source_per_second=limits.max_source_handshakes_per_second, source_burst=limits.source_handshake_burst,
            max_connections=limits.max_connections, count=telemetry.refused,
        )
        self._after_round = AfterRound(shadow)
        self._loop = BatchLoop(
            flags=flags, telemetry=telemetry, after_round=self._after_round, default_strategy=default_strategy,
            max_records=limits.max_records, max_record_length=limits.max_record_length,
            max_messages_per_second=limits.max_messages_per_second, message_burst=limits.message_burst,
            max_bytes_per_second=limits.max_bytes_per_second, bytes_burst=limits.bytes_burst,
            duplicate_id_window=limits.duplicate_id_window, end_slice=self._end_slice,
            strict_share=self._strict_share, commit=committer.submit if committer is not None else None,
            enqueue=committer.enqueue if committer is not None else None,
        )

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def open_summaries(self) -> list[ConnectionSummary]:
        """The current summary slice of every open connection (the batch metrics read them)."""
        return [conn.summary for conn in list(self._open.values())]

    def connections_by_strategy(self) -> dict[str, int]:
        """Open connections per strategy of their current cohort (read-only, for the admin API)."""
        counts = dict.fromkeys(STRATEGIES, 0)
        for conn in self._open.values():
            counts[conn.cohort.strategy] = counts.get(conn.cohort.strategy, 0) + 1
        return counts

    def refused(self, reason: str) -> None:
        """Count and log a refused handshake or connection (the door's too):
        :meth:`HandshakeGate.refused`."""
        self._gate.refused(reason)

    # -- a connection's life ------------------------------------------------------

    async def handle(self, websocket: WebSocket) -> None:
        scope = websocket.scope
        client = scope.get("client")
        decision: Admitted | Refusal | None = self._gate.check(str(client[0]) if client else "unknown",
                                                               len(self._open))
        if decision is None:
            query_token: object = scope.get(ACCESS_TOKEN_SCOPE_KEY)
            decision = admit(
                scope["headers"], scope.get("subprotocols") or (),
                query_token=query_token if isinstance(query_token, str) else None,
                verify=self._tokens.verify, revoked=self._revoked, allowed_origins=self._allowed_origins,
            )
            if isinstance(decision, Admitted):
                decision = self._over_client_cap(decision.identity) or decision
        if isinstance(decision, Refusal):
            self._gate.refused(decision.error)
            await websocket.send_denial_response(
                JSONResponse(decision.body(), status_code=decision.status, headers=decision.headers() or None)
            )
            return
        client_id = decision.identity.client_id
        held = self._per_client.get(client_id, 0)
        self._per_client[client_id] = held + 1  # counted before the first await: no race past the cap
        limits = self._limits
        if not held and limits.max_client_bytes_per_second > 0:
            self._client_bytes[client_id] = TokenBucket(limits.max_client_bytes_per_second,
                                                        limits.client_bytes_burst, time.perf_counter())
        try:
            await self._accepted(websocket, decision)
        finally:
            left = self._per_client[client_id] - 1
            if left:
                self._per_client[client_id] = left
            else:
                del self._per_client[client_id]
                self._client_bytes.pop(client_id, None)

    def _over_client_cap(self, identity: Identity) -> Refusal | None:
        cap = self._limits.max_connections_per_client
        held = self._per_client.get(identity.client_id, 0)
        if cap and held >= cap:
            return Refusal(429, "too_many_connections",
                           f"client {identity.client_id!r} already holds {held} connections; the limit is {cap}")
        return None

    async def _accepted(self, websocket: WebSocket, admitted: Admitted) -> None:
        identity = admitted.identity
        client_id = identity.client_id
        connection_id = os.urandom(16).hex()  # 128 random bits, as uuid4().hex gave (without its object)
        connection_id_var.set(connection_id)
        client_id_var.set(client_id)
        context = EvaluationContext(client_id, connection_id, dict(identity.properties), self._app_name,
                                    self._environment)
        synthetic = is_synthetic(identity.properties)  # a probe's: served alike, left out of the comparison
        connect_span = self._telemetry.start_connect(connection_id, client_id, websocket.scope["headers"],
                                                     admitted.claimed_version, synthetic=synthetic)
        channel = websocket.scope.get(CHANNEL_SCOPE_KEY)
        held = hold_writes(channel[1] if channel else None)  # the 101 and the welcome: one write
        try:
            with CurrentSpan(connect_span):  # = trace.use_span(connect_span, end_on_exit=True)
                snapshot = self._flags.current
                decision = decide_cohort(snapshot, context, VERSIONS, self._default_strategy, now_iso)
                self._telemetry.record_evaluations(connect_span, decision.evaluations, client_id)
                self._telemetry.set_cohort(connect_span, decision.cohort)
                await websocket.accept(subprotocol=admitted.subprotocol)
                if log.isEnabledFor(logging.INFO):
                    peer = websocket.scope.get("client")
                    log.info(
                        "connection accepted",
                        extra={"strategy": decision.cohort.strategy,
                               "flags_revision": decision.cohort.flags_revision,
                               "client_address": str(peer[0]) if peer else None},
                    )
            cohort = decision.cohort
            now = time.perf_counter()
            conn = Connection(
                context=context,
                identity=identity,
                cohort=cohort,
                connect=span_context(connect_span),
                summary=ConnectionSummary.opening(connection_id, client_id, cohort, self._strict_share(snapshot),
                                                  synthetic=synthetic),
                slice_start_ns=time.time_ns(),
                slice_started=now,
                task=asyncio.current_task(),
                abort=websocket.scope.get(ABORT_SCOPE_KEY),
                protocol=admitted.subprotocol,
            )
            self._open[connection_id] = conn
            self._telemetry.opened(cohort, synthetic=synthetic)
        except BaseException:
            held.release()
            raise
        close_code = 1006
        try:
            try:
                welcome = contract.encode_welcome_bytes(connection_id=connection_id, client_id=client_id,
                                                        cohort=cohort, durable=self._durable,
                                                        protocol=admitted.subprotocol or contract.PROTOCOL_V1)
                write = text_writer(channel[1]) if channel else None  # the answers' writer too
                if write is None or not write(welcome):
                    await websocket.send_text(welcome.decode())
            finally:
                held.release()
            close_code = await self._loop.serve(websocket, conn, self._client_bytes.get(client_id), write)
        except WebSocketDisconnect as gone:  # the peer vanished (or was dropped) while we were sending
            close_code = conn.ended[0] if conn.ended else (await self._queued_close(websocket) or gone.code)
        except OSError:  # the same on the server's channel (uvicorn's ClientDisconnected)
            # (or the server closed the connection for a protocol error of the client's, read while
            # the batch waited on the sink: the queued disconnect says which)
            close_code = conn.ended[0] if conn.ended else (await self._queued_close(websocket) or 1006)
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
            if log.isEnabledFor(logging.INFO):
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

    def _end(self, conn: Connection, why: str) -> None:
        conn.ended = (CLOSE_POLICY_VIOLATION, why)
        self._telemetry.terminated(why)
        log.warning("ending connection", extra={"reason": why, "connection": conn.context.connection_id})
        if why == SLOW_CONSUMER and conn.abort is not None:
            # Nothing gets through a full buffer, not even a close frame: drop the TCP
            # connection. The blocked send then fails and the loop ends with ``conn.ended``.
            conn.abort()
        elif conn.task is not None:
            conn.task.cancel()

    async def _close_ended(self, websocket: WebSocket, conn: Connection) -> int:
        """Close a connection the sweep ended: a close frame if it gets out within a second,
        else drop the TCP connection. Returns the close code recorded."""
        assert conn.ended is not None
        code, why = conn.ended
        try:
            async with asyncio.timeout(1.0):
                await websocket.close(code, CLOSE_REASONS[why])
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            if conn.abort is not None:
                conn.abort()
        return code

    def _end_slice(self, conn: Connection, why: str, next_cohort: Cohort | None = None,
                   strict_share: float | None = None) -> None:
        """Emit the connection's current summary and start the next."""
        self._after_round.flush()  # a summary never ends with answered batches uncounted or uncompared
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
