"""The batch loop: one connection's frames, one at a time, each answered.

One batch reads as a straight line: frame → (rate and work budgets) → (pinned cohort) →
decode → strategy → encode → answer → the round's after-work (count, compare, end the
span: :mod:`canaryws.adapters.records.after_round`). The cohort is decided at connect time
and re-decided only when the flags revision changes (an identity test of the flag source's
snapshot per batch, no call). The rare paths are named methods: :meth:`BatchLoop._reload`
(a new flags revision), :meth:`BatchLoop._answer_error` (an error frame) and
:meth:`BatchLoop._guarded_send` (a send the sweep watches for a client that stopped
reading); the hot path keeps its work inline (docs/benchmarks.md: a call per frame costs
more than most of what it would wrap).

With a sink, a batch's answer waits for its commit: the loop hands the batch on and reads the
next frame, and a task of the connection's own (:class:`_Answers`) sends the answers in order
as the commits finish, up to :data:`AHEAD` batches waiting per connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from opentelemetry.trace import INVALID_SPAN, Span
from starlette.types import Receive, Send
from starlette.websockets import WebSocket

from canaryws.adapters.asgi.frame_writer import text_writer
from canaryws.adapters.asgi.scope import CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY
from canaryws.adapters.records.after_round import AfterRound
from canaryws.adapters.records.connection import CLOSE_TRY_AGAIN_LATER, CLOSE_UNSUPPORTED_DATA, Connection
from canaryws.adapters.records.flags_view import FlagsInForce, now_iso
from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.core import contract
from canaryws.core.cohorts import Cohort, FlagSnapshotView, decide_cohort
from canaryws.core.limits import RecentIds, TokenBucket
from canaryws.core.sink import Committed, Handoff, SinkUnavailable
from canaryws.core.strategies import STRATEGIES, VERSIONS
from canaryws.core.strategies.outcome import Outcome
from canaryws.core.summary import END_COHORT_CHANGED

log = logging.getLogger("canaryws.records")


AHEAD: Final = 8
"""Batches of one connection handed to the sink and not yet answered, at most (docs/sink.md,
"Back-pressure"). The batch loop goes on reading and processing while they commit, and
:class:`_Answers` answers them in order; with 1 the answer is sent before the next frame is
read (the loop without a sink always works that way: its answer is ready at once)."""

Item = tuple[str, "asyncio.Future[Committed | SinkUnavailable]", Outcome, float, Span, "Sequence[Any] | None"]


class _Answers:
    """One connection's batches waiting on the sink, answered in order by a task of their
    own (started at the first, parked while none wait): the reader hands a batch on and reads
    the next frame; it waits only while ``limit`` batches wait (back-pressure) and before it
    sends a frame of its own (an error, a cohort change), so that the answers stay in order."""

    def __init__(self, limit: int, answer: Callable[[Item], Awaitable[bool]]) -> None:
        self.items: collections.deque[Item] = collections.deque()
        self.limit = limit
        self._answer = answer
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Future[None] | None = None  # the task waits on it while nothing waits
        self._moved: asyncio.Future[None] | None = None  # the reader waits on it for room or for none left
        self.failed: BaseException | None = None
        self.stopped = False  # an answer closed the connection (v1: 1013)

    def owes(self) -> bool:
        """Batches wait for their answers."""
        return bool(self.items)

    def add(self, item: Item) -> None:
        self.items.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif self._work is not None and not self._work.done():
            self._work.set_result(None)

    async def room(self) -> None:
        """Until fewer than ``limit`` wait (or the answers stopped)."""
        while len(self.items) >= self.limit and self.failed is None and not self.stopped:
            await self._wait_move()
        self._raise()

    async def drained(self) -> None:
        """Until every waiting batch is answered (or the answers stopped)."""
        while self.items and self.failed is None and not self.stopped:
            await self._wait_move()
        self._raise()

    async def _wait_move(self) -> None:
        self._moved = asyncio.get_running_loop().create_future()
        await self._moved

    def _raise(self) -> None:
        if self.failed is not None:
            raise self.failed

    def _moved_on(self) -> None:
        if self._moved is not None and not self._moved.done():
            self._moved.set_result(None)

    async def _run(self) -> None:
        items = self.items
        try:
            while True:
                if not items:
                    self._work = asyncio.get_running_loop().create_future()
                    await self._work
                    continue
                item = items[0]
                if not item[1].done():
                    await asyncio.shield(item[1])
                if not await self._answer(item):
                    self.stopped = True
                    items.clear()
                    self._moved_on()
                    return
                items.popleft()
                self._moved_on()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the reader raises it
            self.failed = exc
            self._moved_on()

    def close(self) -> None:
        """The connection ended: what still waits gets no answer (committed, a resend is a
        replay); its spans end here."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for item in self.items:
            item[4].end()
        self.items.clear()


class BatchLoop:
    """The loop every connection of one endpoint runs (:meth:`serve`), with what it shares:
    the flags in force, the telemetry, the limits and the round's after-work.
    ``end_slice(conn, why, next_cohort, strict_share)`` ends a connection's summary slice
    (the endpoint's); ``strict_share(snapshot)`` is what a new slice records."""

    def __init__(
        self,
        *,
        flags: FlagsInForce,
        telemetry: RecordsTelemetry,
        after_round: AfterRound,
        default_strategy: str,
        max_records: int,
        max_record_length: int,
        max_messages_per_second: float,
        message_burst: int,
        max_bytes_per_second: float,
        bytes_burst: int,
        duplicate_id_window: int,
        end_slice: Callable[[Connection, str, Cohort | None, float | None], None],
        strict_share: Callable[[FlagSnapshotView], float | None],
        commit: Callable[[Handoff], Awaitable[Committed]] | None = None,
        enqueue: Callable[[Handoff], asyncio.Future[Committed | SinkUnavailable]] | None = None,
        ahead: int = AHEAD,
    ) -> None:
        """``commit``: the sink's (:meth:`canaryws.adapters.sink.committer.Committer.submit`),
        None without a sink (``CANARYWS_SINK=none``)."""
        self._commit = commit
        self._enqueue = enqueue if ahead > 1 else None
        self._ahead = ahead
        self._flags = flags
        self._telemetry = telemetry
        self._after = after_round
        self._default_strategy = default_strategy
        self._max_records = max_records
        self._max_length = max_record_length
        self._rate = max_messages_per_second
        self._burst = float(message_burst)
        self._byte_rate = max_bytes_per_second
        self._byte_burst = float(bytes_burst)
        self._window = duplicate_id_window
        self._end_slice = end_slice
        self._strict_share = strict_share

    async def serve(self, websocket: WebSocket, conn: Connection, client_bytes: TokenBucket | None,
                    writer: Callable[[bytes], bool] | None = None) -> int:
        """Serve ``conn`` until it ends; the close code. ``client_bytes``: its client id's
        work budget (shared by the client's connections), None when off; ``writer``: the
        connection's :func:`~canaryws.adapters.asgi.frame_writer.text_writer`, if the endpoint
        made it already.

        Between a batch and its answer it does the work and little else
        (docs/benchmarks.md): a clock read, the rate and the connection's work budget (the
        arithmetic of :class:`canaryws.core.limits.TokenBucket` on locals; a call per frame
        cost more than the arithmetic, and tests/unit/test_endpoint_rate.py checks the waits
        against the class), an identity test of the flags snapshot, the duplicate-id check
        and a countdown to the next sampled batch span. No slice ends here on a timer: the
        sweep ends the interval slices of busy and idle connections alike, so the loop reads
        ``conn.summary`` afresh after each await. After the answer: a second clock read, and
        the batch joins the round's after-work. Span attributes are built for sampled
        batches only.
        """
        receive: Receive
        send: Send
        receive, send = websocket.scope.get(CHANNEL_SCOPE_KEY) or (websocket.receive, websocket.send)
        telemetry = self._telemetry
        after = self._after.add
        flags = self._flags
        seen: object = None  # the flags snapshot the loop last compared its cohort's revision with
        max_records = self._max_records
        max_length = self._max_length
        rate = self._rate  # the message rate: TokenBucket's arithmetic on locals
        limited = rate > 0
        burst = tokens = self._burst
        stamp = conn.slice_started
        byte_rate = self._byte_rate  # the connection's work budget, likewise
        byte_burst = byte_tokens = self._byte_burst
        byte_stamp = stamp
        window = self._window
        recent: RecentIds | None = None  # created at the first batch: idle connections stay small
        cohort = conn.cohort
        strategy = STRATEGIES[cohort.strategy].process
        shadow = cohort.shadow
        connection_id = conn.context.connection_id
        synthetic = conn.summary.synthetic  # a probe's connection: its batch spans say so
        clock = time.perf_counter
        wall_ns = time.time_ns
        decode_batch = contract.decode_batch
        commit = self._commit
        v2 = conn.protocol == contract.PROTOCOL_V2
        encode_result: Callable[[str, Outcome], bytes] = contract.encode_result_bytes
        if v2:
            encode_v2 = contract.encode_result_bytes
            durable = commit is not None

            def encode_result(batch_id: str, outcome: Outcome) -> bytes:
                return encode_v2(batch_id, outcome, durable, False)
        write = writer or text_writer(send)  # the answer's frame straight to the transport while nothing is in its way
        client_id = conn.context.client_id
        each_batch = telemetry.records_each_batch
        gap = telemetry.batch_gap()  # batches until the next batch span
        enqueue = self._enqueue
        ahead = self._ahead
        answers: _Answers | None = None  # the batches waiting on the sink (created at the first)

        async def answer(item: Item) -> bool:
            """A batch's answer once its commit is done; False when it closed the connection."""
            batch_id, waiter, outcome, started, span, records = item
            committed = waiter.result()
            if isinstance(committed, SinkUnavailable):
                if recent is not None:
                    recent.forget(batch_id)  # not answered with a result: the id may come again
                return await self._unavailable(conn, batch_id, committed, span, send, started, websocket, v2)
            if committed.replay:
                await self._replay(conn, batch_id, committed.outcome, span, send, started, v2)
                return True
            payload = encode_result(batch_id, outcome)
            if write is None or not write(payload):
                conn.sending_since = started
                await send({"type": "websocket.send", "text": payload.decode()})
                conn.sending_since = 0.0
            ended = clock()
            if span is INVALID_SPAN and not each_batch:
                after(conn.summary, outcome, started, ended, span, records)
            else:
                telemetry.batch_done(span, batch_id, outcome, ended - started, connection_id, end=False)
                after(conn.summary, outcome, started, ended, span, records, wall_ns() if span.is_recording() else 0)
            return True

        try:
            while True:
                message = await receive()
                if answers is not None and (answers.stopped or answers.failed is not None):
                    await answers.drained()  # raises what failed
                    return CLOSE_TRY_AGAIN_LATER  # an answer closed the connection (v1: the sink was unavailable)
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
                        if answers is not None and answers.items:  # the cohort frame after the answers before it
                            await answers.drained()
                        cohort = await self._reload(conn, snapshot, send, started)
                        strategy = STRATEGIES[cohort.strategy].process
                        shadow = cohort.shadow

                if gap:
                    gap -= 1
                    span: Span = INVALID_SPAN
                else:
                    span = telemetry.start_batch(conn.connect, synthetic)
                    gap = telemetry.batch_gap()
                try:
                    batch = decode_batch(text, max_records)
                    if window:
                        if recent is None:
                            recent = RecentIds(window)
                        if not recent.remember(batch.id):
                            raise contract.duplicate_id(batch.id, window)
                except contract.MessageError as err:
                    if answers is not None and answers.items:  # the error after the answers before it
                        await answers.drained()
                    await self._answer_error(conn, err, span, send, started)
                    continue
                try:
                    outcome = strategy(batch.records, max_length)
                    if enqueue is not None:  # handed on; answered in order by `answers`, reading goes on
                        try:
                            waiter = enqueue(Handoff(client_id, batch.id, connection_id, cohort.flags_revision,
                                                     synthetic, outcome))
                        except SinkUnavailable as down:  # down already: answered now, after those before it
                            if answers is not None and answers.items:
                                await answers.drained()
                            if recent is not None:
                                recent.forget(batch.id)
                            if not await self._unavailable(conn, batch.id, down, span, send, started, websocket, v2):
                                return CLOSE_TRY_AGAIN_LATER
                            continue
                        if answers is None:
                            answers = _Answers(ahead, answer)
                            websocket.scope[OWES_ANSWERS_SCOPE_KEY] = answers.owes  # the drain waits for them
                        answers.add((batch.id, waiter, outcome, started, span, batch.records if shadow else None))
                        if len(answers.items) >= ahead:
                            await answers.room()
                        continue
                    if commit is not None:  # the answer waits for the commit: nothing is read meanwhile
                        try:
                            committed = await commit(Handoff(client_id, batch.id, connection_id, cohort.flags_revision,
                                                             synthetic, outcome))
                        except SinkUnavailable as down:
                            if recent is not None:
                                recent.forget(batch.id)  # not answered with a result: the id may come again
                            if not await self._unavailable(conn, batch.id, down, span, send, started, websocket, v2):
                                return CLOSE_TRY_AGAIN_LATER
                            continue
                        if committed.replay:
                            await self._replay(conn, batch.id, committed.outcome, span, send, started, v2)
                            continue
                    # the result's frame written at once when the protocol lets it (text_writer), else
                    # the guarded send of the rare paths, inline
                    payload = encode_result(batch.id, outcome)
                    if write is None or not write(payload):
                        conn.sending_since = started
                        await send({"type": "websocket.send", "text": payload.decode()})
                        conn.sending_since = 0.0
                except BaseException:
                    span.end()
                    raise
                ended = clock()
                if span is INVALID_SPAN and not each_batch:
                    after(conn.summary, outcome, started, ended, span, batch.records if shadow else None)
                else:  # a sampled batch (or a histogram per batch): its attributes now, its end after the round
                    telemetry.batch_done(span, batch.id, outcome, ended - started, connection_id, end=False)
                    after(conn.summary, outcome, started, ended, span, batch.records if shadow else None,
                          wall_ns() if span.is_recording() else 0)
        finally:
            if answers is not None:
                answers.close()  # the connection ended: what still waits gets no answer (a resend is a replay)

    async def _reload(self, conn: Connection, snapshot: FlagSnapshotView, send: Send, started: float) -> Cohort:
        """A new flags revision: the connection's cohort decided again; the new one."""
        old = conn.cohort
        new = decide_cohort(snapshot, conn.context, VERSIONS, self._default_strategy, now_iso).cohort
        # The connection's cohort changes before the next await: a slice the sweep ends while
        # the cohort frame is sent must start the next one under it.
        conn.cohort = new
        if not new.same_treatment(old):
            self._telemetry.cohort_changed(old, new)
            self._end_slice(conn, END_COHORT_CHANGED, new, self._strict_share(snapshot))
            log.info(
                "cohort changed",
                extra={"from_strategy": old.strategy, "to_strategy": new.strategy,
                       "flags_revision": new.flags_revision},
            )
            await self._guarded_send(conn, send, contract.encode_cohort_change(new), started)
        return new

    async def _unavailable(self, conn: Connection, batch_id: str, down: SinkUnavailable, span: Span, send: Send,
                           started: float, websocket: WebSocket, v2: bool) -> bool:
        """A batch the sink could not commit: v2 gets the ``unavailable`` error frame (and the
        connection goes on: True); a v1 connection is closed with 1013 (False)."""
        self._telemetry.batch_error(span, contract.UNAVAILABLE, down.detail, conn.cohort.strategy,
                                    conn.context.connection_id)
        if v2:
            detail = f"the sink could not commit this batch ({down.detail}); nothing of it was written: resend it"
            text = contract.encode_unavailable(batch_id, detail, down.retry_after)
            await self._guarded_send(conn, send, text, started)
            return True
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "sink unavailable: reconnect later and resend")
        return False

    async def _replay(self, conn: Connection, batch_id: str, outcome: Outcome, span: Span, send: Send,
                      started: float, v2: bool) -> None:
        """A batch committed before (another connection, before a restart): the stored answer,
        not processed again, so not counted on the connection's summary."""
        if span.is_recording():
            span.set_attribute("canaryws.batch.id", batch_id[:64])
            span.set_attribute("canaryws.replay", True)
        span.end()
        text = contract.encode_result(batch_id, outcome, *((True, True) if v2 else ()))
        await self._guarded_send(conn, send, text, started)

    async def _answer_error(self, conn: Connection, err: contract.MessageError, span: Span, send: Send,
                            started: float) -> None:
        """A frame that is not a usable batch: counted, its span ended, an error frame sent."""
        conn.summary.add_error(err.code)
        self._telemetry.batch_error(span, err.code, err.detail, conn.cohort.strategy, conn.context.connection_id)
        await self._guarded_send(conn, send, contract.encode_error(err), started)

    @staticmethod
    async def _guarded_send(conn: Connection, send: Send, text: str, since: float) -> None:
        """Send ``text``, marked as pending since ``since`` while it waits: the sweep ends a
        connection whose send waits longer than ``CANARYWS_SEND_TIMEOUT``."""
        conn.sending_since = since
        await send({"type": "websocket.send", "text": text})
        conn.sending_since = 0.0
