"""The ``/records`` WebSocket endpoint: a thin adapter over the core.

One batch reads as a straight line: frame → decode → (pinned cohort) → strategy →
encode → frame → telemetry → [shadow strategy → compare, queued off the response path].
The cohort is decided at connect time and re-decided only when the flags revision
changes (a string comparison per batch, no SDK call).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from canaryws.adapters.auth import TokenAuthority, TokenError
from canaryws.adapters.shadow import ShadowRunner
from canaryws.adapters.telemetry.logs import client_id_var, connection_id_var
from canaryws.adapters.telemetry.records import RecordsTelemetry, span_context
from canaryws.core import contract
from canaryws.core.cohorts import STRICT_FLAG, Cohort, EvaluationContext, FlagSnapshotView, decide_cohort
from canaryws.core.strategies import STRATEGIES, VERSIONS
from canaryws.core.summary import END_CLOSED, END_COHORT_CHANGED, END_INTERVAL, ConnectionSummary

log = logging.getLogger("canaryws.records")

ACCESS_TOKEN_SCOPE_KEY = "canaryws.access_token"
CLIENT_VERSION_HEADER = b"x-canaryws-client-version"
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INTERNAL_ERROR = 1011


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    max_records: int
    max_record_length: int
    summary_interval: float = 60.0  # seconds between summary spans of a long-lived connection


class RecordsEndpoint:
    """Serves one WebSocket connection per ``handle`` call."""

    def __init__(
        self,
        *,
        flags: Callable[[], FlagSnapshotView],
        tokens: TokenAuthority,
        telemetry: RecordsTelemetry,
        limits: EndpointLimits,
        shadow: ShadowRunner,
    ) -> None:
        self._flags = flags
        self._tokens = tokens
        self._telemetry = telemetry
        self._limits = limits
        self._shadow = shadow

    # -- handshake -----------------------------------------------------------

    async def _refuse(self, websocket: WebSocket, status: int, error: str, detail: str) -> None:
        self._telemetry.refused(error)
        headers = {"WWW-Authenticate": f'Bearer realm="canaryws", error="{error}"'} if status == 401 else None
        await websocket.send_denial_response(
            JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
        )

    @staticmethod
    def _bearer(websocket: WebSocket) -> str | None:
        name: bytes
        value: bytes
        for name, value in websocket.scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
                return None
        from_query: object = websocket.scope.get(ACCESS_TOKEN_SCOPE_KEY)
        return from_query if isinstance(from_query, str) and from_query else None

    @staticmethod
    def _properties(websocket: WebSocket) -> dict[str, str]:
        for name, value in websocket.scope["headers"]:
            if name == CLIENT_VERSION_HEADER:
                return {"clientVersion": value.decode("latin-1")[:64]}
        return {}

    async def handle(self, websocket: WebSocket) -> None:
        ok, subprotocol = contract.negotiate_subprotocol(list(websocket.scope.get("subprotocols") or ()))
        if not ok:
            await self._refuse(
                websocket,
                400,
                "unsupported_subprotocol",
                f"supported subprotocols: {', '.join(contract.SUPPORTED_PROTOCOLS)}",
            )
            return
        token = self._bearer(websocket)
        if token is None:
            await self._refuse(websocket, 401, "missing_token", "send Authorization: Bearer <token>")
            return
        try:
            client_id = self._tokens.verify(token)
        except TokenError as exc:
            await self._refuse(websocket, 401, "invalid_token", str(exc))
            return

        connection_id = uuid.uuid4().hex
        connection_id_var.set(connection_id)
        client_id_var.set(client_id)
        context = EvaluationContext(client_id, connection_id, self._properties(websocket))
        connect_span = self._telemetry.start_connect(connection_id, client_id)
        with trace.use_span(connect_span, end_on_exit=True):
            snapshot = self._flags()
            decision = decide_cohort(snapshot, context, VERSIONS)
            self._telemetry.record_evaluations(connect_span, decision.evaluations, client_id)
            self._telemetry.set_cohort(connect_span, decision.cohort)
            await websocket.accept(subprotocol=subprotocol)
            log.info(
                "connection accepted",
                extra={"strategy": decision.cohort.strategy, "flags_revision": decision.cohort.flags_revision},
            )
        cohort = decision.cohort
        conn = _Connection(
            context,
            span_context(connect_span),
            ConnectionSummary.opening(connection_id, client_id, cohort, snapshot.expected_share(STRICT_FLAG)),
            time.time_ns(),
            time.perf_counter(),
        )
        self._telemetry.opened(cohort)
        close_code = 1006
        try:
            await websocket.send_text(
                contract.encode_welcome(connection_id=connection_id, client_id=client_id, cohort=cohort)
            )
            close_code = await self._serve(websocket, cohort, conn)
        except WebSocketDisconnect as gone:  # the peer vanished while we were sending
            close_code = gone.code
        except Exception:
            log.exception("connection failed")
            close_code = CLOSE_INTERNAL_ERROR
            with contextlib.suppress(Exception):  # the socket may already be gone
                await websocket.close(CLOSE_INTERNAL_ERROR)
        finally:
            summary = conn.summary
            summary.close_code = close_code
            self._telemetry.closed(summary, close_code)
            self._end_slice(conn, END_CLOSED)
            log.info(
                "connection closed",
                extra={"close_code": close_code, "batches": summary.batches, "strategy": summary.strategy},
            )

    def _end_slice(self, conn: _Connection, why: str, next_cohort: Cohort | None = None,
                   strict_share: float | None = None) -> None:
        """Emit the connection's current summary (after its pending shadow runs) and start the next."""
        summary = conn.summary
        summary.end = why
        start_ns, end_ns, connect = conn.slice_start_ns, time.time_ns(), conn.connect
        telemetry = self._telemetry
        self._shadow.after_pending(summary, lambda: telemetry.emit_summary(summary, start_ns, end_ns, connect))
        if next_cohort is not None:
            conn.summary = summary.next_slice(next_cohort, strict_share)
            conn.slice_start_ns = end_ns
            conn.slice_started = time.perf_counter()

    # -- batches -------------------------------------------------------------

    async def _serve(self, websocket: WebSocket, cohort: Cohort, conn: _Connection) -> int:
        """The batch loop; returns the close code."""
        receive = websocket.receive
        send = websocket.send
        telemetry = self._telemetry
        shadow_runner = self._shadow
        flags = self._flags
        max_records = self._limits.max_records
        max_length = self._limits.max_record_length
        slice_seconds = self._limits.summary_interval
        strategy = STRATEGIES[cohort.strategy]
        context = conn.context
        connection_id = context.connection_id
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1005)
            text = message.get("text")
            if text is None:
                await websocket.close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
                return CLOSE_UNSUPPORTED_DATA

            started = time.perf_counter()
            snapshot = flags()
            if snapshot.revision != cohort.flags_revision:
                new = decide_cohort(snapshot, context, VERSIONS).cohort
                if not new.same_treatment(cohort):
                    telemetry.cohort_changed(cohort, new)
                    self._end_slice(conn, END_COHORT_CHANGED, new, snapshot.expected_share(STRICT_FLAG))
                    log.info(
                        "cohort changed",
                        extra={
                            "from_strategy": cohort.strategy,
                            "to_strategy": new.strategy,
                            "flags_revision": new.flags_revision,
                        },
                    )
                    await send({"type": "websocket.send", "text": contract.encode_cohort_change(new)})
                    strategy = STRATEGIES[new.strategy]
                cohort = new
            elif started - conn.slice_started >= slice_seconds:
                self._end_slice(conn, END_INTERVAL, cohort, conn.summary.strict_share)
            summary = conn.summary

            span = telemetry.start_batch(conn.connect)
            try:
                batch = contract.decode_batch(text, max_records)
            except contract.MessageError as err:
                summary.add_error(err.code)
                telemetry.batch_error(span, err.code, err.detail, cohort.strategy, connection_id)
                await send({"type": "websocket.send", "text": contract.encode_error(err)})
                continue
            try:
                outcome = strategy.process(batch.records, max_length)
                await send({"type": "websocket.send", "text": contract.encode_result(batch.id, outcome)})
            except BaseException:
                span.end()
                raise
            elapsed = time.perf_counter() - started
            counts = outcome.reason_counts()  # once per batch, for the summary, the metrics and the span
            summary.add(outcome, counts, elapsed)
            telemetry.batch_done(span, batch.id, outcome, counts, elapsed, connection_id, end=not cohort.shadow)
            if cohort.shadow:
                shadow_runner.submit(summary, span, batch.records, outcome, len(text))


@dataclass(slots=True)
class _Connection:
    """The endpoint's state for one open connection."""

    context: EvaluationContext
    connect: trace.SpanContext | None
    summary: ConnectionSummary  # the current slice
    slice_start_ns: int
    slice_started: float  # time.perf_counter() at the slice's start
