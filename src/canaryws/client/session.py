"""The asynchronous client: one logical session over as many WebSocket connections as it
takes (see :func:`canaryws.client.connect`).

How it keeps the contract (docs/contract.md):

- **Pipelining.** Up to ``window`` batches are in flight at once; each answer is matched to
  its batch by id (answers come in the order the batches were sent). A ``result`` is checked
  against the batch it answers: every index exactly once, each list ascending, the strategy
  of the cohort in force. A frame that does not fit is a :class:`ContractViolation` for the
  batch it answers (the oldest in flight when it names none).
- **Reconnection.** After a close the contract calls retryable (1001, 1006, 1011, 1012, 1013)
  or a refused handshake with 429/503 (after ``Retry-After``), the client reconnects with
  exponential back-off and full jitter (:class:`~canaryws.client.backoff.Reconnect`). After
  1008 *token expired* / *token revoked*, and after a 401 at the handshake, it asks
  ``token_provider`` for a fresh token (once; without a provider it stops). It never retries
  after 400, 403, 1003, 1007, 1008 otherwise, 1009. Every batch without an answer is resent
  on the new connection, in its original order and under its original id, before any new
  batch; an answered batch is never resent.
- **Durable answers (contract v2).** The client offers ``canaryws.records.v2`` first, then
  v1. Against a service with a sink, a ``result`` is sent only once the batch is committed
  (``Result.durable``); a batch the sink could not commit gets the error ``unavailable``, and
  the client resends it under the same id after the service's ``retry_after_ms`` (with up to
  50 % jitter), until ``give_up_after`` seconds have passed since its first ``unavailable``
  (then :class:`BatchError`). A resend of a batch the service had committed (a lost answer,
  a reconnection) is answered with the stored outcome, ``Result.replay`` true, whatever the
  client's cohort is now; such a result is not checked against the current cohort, nor
  against the records sent (a batch id reused for other records gets the first one's outcome).
- **Give-up.** ``max_attempts`` failed handshakes in a row or ``give_up_after`` seconds end
  the session with :class:`GaveUp`, raised by every waiting and later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import msgspec
import websockets
from opentelemetry import propagate
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from canaryws.client.backoff import RETRYABLE_CLOSE_CODES, RETRYABLE_STATUSES, TOKEN_CLOSE_REASONS, Reconnect
from canaryws.client.errors import (
    AnswerTimeout,
    BatchError,
    CanarywsError,
    ConnectFailed,
    ConnectionClosed,
    ContractViolation,
    GaveUp,
    HandshakeRefused,
)
from canaryws.core import contract
from canaryws.core.contract import CohortChange, CohortInfo, Error, Result, Welcome

log = logging.getLogger("canaryws.client")

TokenProvider = Callable[[], "str | Awaitable[str]"]
DEFAULT_WINDOW = 32
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # the service's default CANARYWS_MAX_FRAME_BYTES
DEFAULT_MAX_ANSWER_BYTES = 16 << 20

DEFAULT_RECONNECT = Reconnect()

_decoder = msgspec.json.Decoder(contract.ServerMessage)
_encoder = msgspec.json.Encoder()
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class CohortUpdate:
    """The client's cohort changed: a ``cohort`` frame (``reason`` ``flags_changed``), or a
    new connection whose welcome carries another cohort (``reason`` ``reconnected``)."""

    cohort: CohortInfo
    previous: CohortInfo
    reason: Literal["flags_changed", "reconnected"]


@dataclass(slots=True)
class _Pending:
    batch_id: str
    frame: str
    size: int  # records in the batch
    answer: asyncio.Future[Result]
    generation: int = -1  # the connection it was last sent on (-1: not sent yet)
    unavailable_since: float | None = None  # monotonic time of its first `unavailable` answer


class _Lost(Exception):
    """A connection ended: ``code`` and ``reason`` as received (1006 when no close frame came)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Client:
    """A session with the service at ``url`` (``ws://host:port/records``); ``connect`` is this class.

    ``token``: a bearer token (``canaryws token issue``); or ``token_provider``: a callable
    (sync or async) returning one, called at the first connection and again after the
    service closed with *token expired* / *token revoked* or refused a token (401).
    ``window``: batches in flight at once. ``reconnect``: the policy (None: no reconnection,
    every failure is raised as it happens). ``answer_timeout``: seconds to wait for a batch's
    answer (None: no limit). ``max_frame_bytes``: the largest batch frame sent (the service's
    ``CANARYWS_MAX_FRAME_BYTES``); ``max_answer_bytes``: the largest frame accepted.
    ``client_version`` is sent as ``X-Canaryws-Client-Version`` (advisory: it never changes
    the cohort). ``on_cohort``: called with every :class:`CohortUpdate`. A ``traceparent``
    header joins the caller's current span, if any.

    Nothing happens until it is entered (``async with``) or awaited.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        window: int = DEFAULT_WINDOW,
        reconnect: Reconnect | None = DEFAULT_RECONNECT,
        open_timeout: float = 10.0,
        answer_timeout: float | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        client_version: str | None = None,
        additional_headers: Mapping[str, str] | None = None,
        on_cohort: Callable[[CohortUpdate], object] | None = None,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token= and token_provider=")
        if window < 1:
            raise ValueError("window is at least 1")
        self.url = url
        self._token = token
        self._provider = token_provider
        self._reconnect = reconnect
        self._open_timeout = open_timeout
        self._answer_timeout = answer_timeout
        self._max_frame_bytes = max_frame_bytes
        self._max_answer_bytes = max_answer_bytes
        self._client_version = client_version
        self._headers = dict(additional_headers or {})
        self._window = asyncio.Semaphore(window)
        self._pending: dict[str, _Pending] = {}
        self._forgotten: deque[str] = deque(maxlen=4 * window + 64)  # ids whose late answers are ignored
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._connected = False
        self._closing = False
        self._failure: CanarywsError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()  # resends after `unavailable`, waiting
        self._callbacks: list[Callable[[CohortUpdate], object]] = [on_cohort] if on_cohort else []
        self._subscribers: list[asyncio.Queue[CohortUpdate | None]] = []
        self._id_prefix = f"{os.getpid():x}-{next(_ids):x}-"
        self._next_batch = itertools.count(1)
        self.welcome: Welcome | None = None
        self.cohort: CohortInfo | None = None
        self.handshake_seconds: float | None = None
        self.reconnects = 0
        self.violations: deque[ContractViolation] = deque(maxlen=100)  # ones that answered no batch

    # --- the public surface ------------------------------------------------------------

    @property
    def connection_id(self) -> str | None:
        return None if self.welcome is None else self.welcome.connection_id

    @property
    def client_id(self) -> str | None:
        return None if self.welcome is None else self.welcome.client_id

    @property
    def durable(self) -> bool:
        """Whether the service commits each batch before answering it (v2's welcome says so)."""
        return self.welcome is not None and self.welcome.durable is True

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def process(self, records: Iterable[Any], batch_id: str | None = None) -> Result:
        """Send one batch and return its :class:`Result`. Raises :class:`BatchError` when the
        service answers with an ``error`` frame, :class:`AnswerTimeout` after
        ``answer_timeout``, and the session's failure (:class:`GaveUp`,
        :class:`ConnectionClosed`, :class:`HandshakeRefused`) when it ended."""
        self._check_open()
        items = list(records)
        bid = batch_id if batch_id is not None else f"{self._id_prefix}{next(self._next_batch)}"
        frame = _encoder.encode({"type": "batch", "id": bid, "records": items}).decode()
        if len(frame.encode()) > self._max_frame_bytes:
            raise ValueError(f"the batch's frame is {len(frame.encode())} bytes; the service takes at most "
                             f"{self._max_frame_bytes} (max_frame_bytes)")
        async with self._window:
            self._check_open()
            if bid in self._pending:
                raise ValueError(f"batch id {bid!r} is already in flight")
            pending = _Pending(bid, frame, len(items), asyncio.get_running_loop().create_future())
            self._pending[bid] = pending
            try:
                if self._connected:
                    await self._send(pending)
                if self._answer_timeout is None:
                    return await asyncio.shield(pending.answer)
                try:
                    return await asyncio.wait_for(asyncio.shield(pending.answer), self._answer_timeout)
                except TimeoutError:
                    raise AnswerTimeout(bid, self._answer_timeout) from None
            finally:
                if self._pending.get(bid) is pending:  # timed out or cancelled: forget it
                    del self._pending[bid]
                    self._forgotten.append(bid)
                if pending.answer.done() and not pending.answer.cancelled():
                    pending.answer.exception()  # retrieved: no "never retrieved" warning
                else:
                    pending.answer.cancel()

    def on_cohort(self, callback: Callable[[CohortUpdate], object]) -> None:
        """Call ``callback`` (on the event loop) with every :class:`CohortUpdate`."""
        self._callbacks.append(callback)

    async def cohort_changes(self) -> AsyncIterator[CohortUpdate]:
        """Every :class:`CohortUpdate` from now on, until the client closes (a slow reader
        loses the oldest of more than 64 waiting updates)."""
        queue: asyncio.Queue[CohortUpdate | None] = asyncio.Queue(maxsize=64)
        self._subscribers.append(queue)
        try:
            while (update := await queue.get()) is not None:
                yield update
        finally:
            self._subscribers.remove(queue)

    async def close(self) -> None:
        """Close the connection (1000); batches still waiting fail with :class:`ConnectionClosed`."""
        if self._closing:
            return
        self._closing = True
        self._connected = False
        for task in (*self._retries, *([self._supervisor] if self._supervisor is not None else [])):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        self._fail_all(ConnectionClosed(1000, "client closed"))
        for queue in self._subscribers:
            _put_dropping_oldest(queue, None)

    # --- connecting ----------------------------------------------------------------------

    async def open(self) -> Client:
        """The first connection (retried by the policy like any other); then the session runs."""
        ws = await self._connect()
        self._start(ws)
        return self

    def __await__(self) -> Generator[Any, None, Client]:
        return self.open().__await__()

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _start(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._generation += 1
        self._connected = True
        self._supervisor = asyncio.get_running_loop().create_task(self._run(), name="canaryws.client")

    async def _connect(self) -> ClientConnection:
        """One connection with its welcome, retried by the policy; raises the failure that ends it."""
        attempt = 0
        started = time.monotonic()
        fresh_token_tried = False
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                return await self._handshake(await self._current_token())
            except HandshakeRefused as refused:
                last: CanarywsError = refused
                if refused.status == 401 and self._provider is not None and not fresh_token_tried:
                    fresh_token_tried = True
                    self._token = None  # ask the provider again, at once
                    if self._reconnect is not None and attempt < self._reconnect.max_attempts:
                        continue
                if refused.status not in RETRYABLE_STATUSES:
                    raise
                retry_after = refused.retry_after
            except ContractViolation:
                raise
            except ConnectFailed as failed:
                last = failed
            if self._reconnect is None:
                raise last
            delay = self._reconnect.delay(attempt - 1, retry_after)
            limit = self._reconnect.give_up_after
            if attempt >= self._reconnect.max_attempts or (
                limit is not None and time.monotonic() + delay - started > limit
            ):
                raise GaveUp(attempt, last)
            log.info("canaryws: connecting failed (%s); retrying in %.2f s", last, delay)
            await asyncio.sleep(delay)

    async def _current_token(self) -> str:
        if self._token is None:
            assert self._provider is not None
            token = self._provider()
            self._token = await token if inspect.isawaitable(token) else token
        return self._token

    async def _handshake(self, token: str) -> ClientConnection:
        headers = dict(self._headers)
        headers["Authorization"] = f"Bearer {token}"
        if self._client_version is not None:
            headers["X-Canaryws-Client-Version"] = self._client_version
        propagate.inject(headers)  # traceparent (and tracestate) when the caller has a current span
        started = time.perf_counter()
        try:
            ws = await ws_connect(
                self.url,
                additional_headers=headers,
                subprotocols=[websockets.Subprotocol(p) for p in contract.SUPPORTED_PROTOCOLS],
                open_timeout=self._open_timeout,
                max_size=self._max_answer_bytes,
                compression=None,
            )
        except websockets.InvalidStatus as exc:
            raise _refusal(exc.response.status_code, exc.response.headers, exc.response.body) from None
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
            raise ConnectFailed(exc) from exc
        try:
            frame = await asyncio.wait_for(ws.recv(), self._open_timeout)
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            await ws.close()
            raise ConnectFailed(exc) from exc
        text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        try:
            welcome = _decoder.decode(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await ws.close()
            raise ContractViolation(text, f"not a contract message: {exc}") from None
        if not isinstance(welcome, Welcome):
            await ws.close()
            raise ContractViolation(text, f"the first frame is a {type(welcome).__name__.lower()}, not the welcome")
        self.handshake_seconds = time.perf_counter() - started
        previous, self.welcome, self.cohort = self.cohort, welcome, welcome.cohort
        if previous is not None and _treatment(previous) != _treatment(welcome.cohort):
            self._announce(CohortUpdate(welcome.cohort, previous, "reconnected"))
        return ws

    # --- a running session -------------------------------------------------------------

    async def _run(self) -> None:
        """Read the connection; when it ends, reconnect (and resend) or end the session."""
        while True:
            assert self._ws is not None
            lost = await self._read(self._ws)
            self._connected = False
            if self._closing:
                return
            failure = self._after(lost)
            if failure is None:
                try:
                    ws = await self._connect()
                except CanarywsError as exc:
                    failure = exc
            if failure is not None:
                self._end(failure)
                return
            self.reconnects += 1
            self._ws = ws
            self._generation += 1
            await self._resend()

    def _after(self, lost: _Lost) -> CanarywsError | None:
        """None when the session reconnects after this close, else the failure that ends it."""
        closed = ConnectionClosed(lost.code, lost.reason)
        if self._reconnect is None:
            return closed
        if lost.code in RETRYABLE_CLOSE_CODES:
            return None
        if lost.code == 1008 and lost.reason in TOKEN_CLOSE_REASONS and self._provider is not None:
            self._token = None  # a fresh one from the provider
            return None
        return closed

    async def _resend(self) -> None:
        """Every batch without an answer, in order, on the new connection; then new ones flow."""
        while todo := [p for p in self._pending.values() if p.generation != self._generation]:
            for pending in todo:
                if self._pending.get(pending.batch_id) is pending:
                    await self._send(pending)
        self._connected = True

    async def _send(self, pending: _Pending) -> None:
        assert self._ws is not None
        pending.generation = self._generation
        with contextlib.suppress(websockets.ConnectionClosed):  # the reader sees the close; resent later
            await self._ws.send(pending.frame)

    async def _read(self, ws: ClientConnection) -> _Lost:
        while True:
            try:
                frame = await ws.recv()
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                return _Lost(code, exc.rcvd.reason if exc.rcvd is not None else "")
            except Exception as exc:  # noqa: BLE001 - anything else ends this connection, not the session
                log.warning("canaryws: reading failed: %r", exc)
                await ws.close(1011)
                return _Lost(1006, "")
            self._dispatch(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"))

    def _dispatch(self, frame: str) -> None:
        try:
            message = _decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._violation(ContractViolation(frame, f"not a contract message: {exc}"), None)
            return
        if isinstance(message, Result):
            self._on_result(frame, message)
        elif isinstance(message, Error):
            self._on_error(frame, message)
        elif isinstance(message, CohortChange):
            previous, self.cohort = self.cohort, message.cohort
            if previous is not None:
                self._announce(CohortUpdate(message.cohort, previous, message.reason))
        else:
            self._violation(ContractViolation(frame, "a second welcome on one connection"), None)

    def _on_result(self, frame: str, result: Result) -> None:
        pending = self._pending.get(result.id)
        if pending is None:
            if result.id not in self._forgotten:
                self._violation(ContractViolation(frame, f"a result for batch {result.id!r}, which is not in flight"),
                                None)
            return
        problem = check_result(result, pending.size, self.cohort)
        if problem is not None:
            self._settle(pending, ContractViolation(frame, problem))
        else:
            self._settle(pending, result)

    def _on_error(self, frame: str, error: Error) -> None:
        pending = self._pending.get(error.id) if error.id is not None else self._oldest()
        if pending is None:
            if error.id not in self._forgotten:
                self._violation(ContractViolation(frame, "an error frame for no batch in flight"), None)
            return
        if error.code == contract.UNAVAILABLE and self._retry_later(pending, error):
            return
        self._settle(pending, BatchError(error.code, error.detail, error.id))

    def _retry_later(self, pending: _Pending, error: Error) -> bool:
        """Resend ``pending`` after the hint of an ``unavailable`` answer (True), unless the
        policy says to give up (False: the caller gets the error)."""
        now = time.monotonic()
        if pending.unavailable_since is None:
            pending.unavailable_since = now
        policy = self._reconnect
        if policy is None or (policy.give_up_after is not None and now - pending.unavailable_since
                              > policy.give_up_after):
            return False
        hint = error.retry_after_ms / 1000 if isinstance(error.retry_after_ms, int) else 1.0
        task = asyncio.get_running_loop().create_task(self._resend_after(pending, hint * (1 + random.random() / 2)))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
        return True

    async def _resend_after(self, pending: _Pending, delay: float) -> None:
        generation = pending.generation
        await asyncio.sleep(delay)
        # Still waiting, and not resent meanwhile by a reconnection (which resends every batch
        # without an answer): send it again on this connection.
        if self._pending.get(pending.batch_id) is pending and pending.generation == generation and self._connected:
            await self._send(pending)

    def _oldest(self) -> _Pending | None:
        return next((p for p in self._pending.values() if p.generation == self._generation), None)

    def _violation(self, violation: ContractViolation, pending: _Pending | None) -> None:
        target = pending or self._oldest()
        if target is None:
            log.warning("canaryws: %s", violation)
            self.violations.append(violation)
        else:
            self._settle(target, violation)

    def _settle(self, pending: _Pending, outcome: Result | BaseException) -> None:
        del self._pending[pending.batch_id]
        if pending.answer.done():
            return
        if isinstance(outcome, BaseException):
            pending.answer.set_exception(outcome)
        else:
            pending.answer.set_result(outcome)

    def _announce(self, update: CohortUpdate) -> None:
        for callback in list(self._callbacks):
            try:
                callback(update)
            except Exception:  # a caller's callback cannot stop the session
                log.exception("canaryws: a cohort callback failed")
        for queue in self._subscribers:
            _put_dropping_oldest(queue, update)

    def _end(self, failure: CanarywsError) -> None:
        self._failure = failure
        self._connected = False
        log.warning("canaryws: session ended: %s", failure)
        self._fail_all(failure)
        for queue in self._subscribers:
            _put_dropping_oldest(queue, None)

    def _fail_all(self, failure: CanarywsError) -> None:
        for pending in list(self._pending.values()):
            self._settle(pending, failure)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ConnectionClosed(1000, "client closed")


def check_result(result: Result, size: int, cohort: CohortInfo | None) -> str | None:
    """Why ``result`` cannot be the answer to a batch of ``size`` records under ``cohort``
    (None when it can): every index exactly once, each list ascending, the cohort's strategy."""
    lists = (
        [a.index for a in result.accepted],
        [s.index for s in result.skipped],
        [r.index for r in result.rejected],
    )
    for name, indices in zip(("accepted", "skipped", "rejected"), lists, strict=True):
        if any(a >= b for a, b in itertools.pairwise(indices)):
            return f"the {name} indices are not ascending"
    every = sorted(itertools.chain(*lists))
    if result.replay is True:
        # The outcome stored when a batch with this id was first committed, under the cohort of
        # then, and for the records of then (the same ones, unless the caller reused the id).
        return None if every == list(range(len(every))) else "the replayed result names an index twice or skips one"
    if every != list(range(size)):
        return f"the result does not name each of the batch's {size} indices exactly once"
    if cohort is not None and (result.strategy, result.strategy_version) != (cohort.strategy, cohort.strategy_version):
        return (f"answered by {result.strategy} v{result.strategy_version} under the announced cohort "
                f"{cohort.strategy} v{cohort.strategy_version}")
    return None


def _treatment(cohort: CohortInfo) -> tuple[str, int, bool]:
    return cohort.strategy, cohort.strategy_version, cohort.shadow


def _refusal(status: int, headers: Any, body: bytes | bytearray | None) -> HandshakeRefused:
    error, detail = "", ""
    try:
        parsed = json.loads(body or b"")
        if isinstance(parsed, dict):
            error, detail = str(parsed.get("error", "")), str(parsed.get("detail", ""))
    except ValueError:
        detail = (body or b"")[:200].decode("utf-8", "replace")
    retry_after: float | None = None
    value = headers.get("Retry-After")
    if value is not None:
        try:
            retry_after = max(0.0, float(value))
        except ValueError:
            retry_after = None
    return HandshakeRefused(status, error, detail, retry_after)


def _put_dropping_oldest(queue: asyncio.Queue[CohortUpdate | None], item: CohortUpdate | None) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
