"""Group commit: the handoffs of every connection, committed in one transaction per group.

A connection's batch loop hands its batches on (:meth:`Committer.enqueue`) and goes on reading;
its answers go out in order as their groups commit, and once 8 of its batches wait nothing more
is read from that connection (back-pressure: unread frames stay in the client's and the kernel's
buffers, memory stays bounded by the open connections; docs/sink.md).

``concurrency`` workers (:meth:`Committer.run`; the sink's own,
:attr:`~canaryws.core.sink.Sink.concurrency`) each take what has queued up (at most
``max_group`` handoffs), commit it in one transaction, answer it, and take the next group at
once: PostgreSQL's four work on the pool's four connections; SQLite's two on its one thread,
one group committing while the next is queued behind it, so the writer never waits for the
event loop between groups. Groups form by themselves:
everything that arrives in one event-loop round, and everything that arrives while the
commits are in flight, joins the next one, so a group is never held back on a timer and
grows only under load. A worker continues from the commit's answer to the next group in
the same step: every hop through the event loop costs a whole round of it under load
(docs/benchmarks.md, "The persist step").

**Failures.** A commit that fails, or does not finish within ``timeout``, answers every
handoff of its group with :class:`~canaryws.core.sink.SinkUnavailable` (the transaction is
rolled back: nothing of the group was written, or, when the timeout hit after the database
committed, all of it was, and a resend is then a replay). The committer is then
*unavailable*: submissions fail at once (no waiting on a sink that is down), and a ping
every ``RETRY_SECONDS`` brings it back as soon as the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from canaryws.core.sink import Committed, Handoff, Sink, SinkUnavailable

log = logging.getLogger("canaryws.sink")

STARTING: Final = "starting"
OK: Final = "ok"
UNAVAILABLE: Final = "unavailable"
RETRY_SECONDS: Final = 1.0  # between pings while the sink is unavailable; also the clients' retry hint
PURGE_EVERY_SECONDS: Final = 300.0  # idempotency keys older than the retention are deleted this often
MAX_GROUP: Final = 1024  # handoffs per transaction at most

Waiter = asyncio.Future["Committed | SinkUnavailable"]


class Committer:
    """One per process: the sink, the queue of handoffs and the sink's state."""

    def __init__(self, sink: Sink, *, timeout: float, retention: float, concurrency: int | None = None,
                 max_group: int = MAX_GROUP, observe: Callable[[str, float], None] | None = None,
                 counted: Callable[[str, int], None] | None = None) -> None:
        """``observe(outcome, seconds)`` is told of each commit ("ok" or "failed");
        ``counted(outcome, n)`` of batches answered ("committed", "replayed", "unavailable")."""
        self.sink = sink
        self._timeout = timeout
        self._retention = retention
        self._max_group = max_group
        self._concurrency = concurrency or sink.concurrency
        self._queue: list[tuple[Handoff, Waiter]] = []
        self._parked: list[asyncio.Future[None]] = []  # workers waiting for a handoff
        self._in_flight = 0
        self._state = STARTING
        self._since = time.time()
        self._detail = "the sink is not open yet"
        self._observe = observe or (lambda _outcome, _s: None)
        self._counted = counted or (lambda _outcome, _n: None)
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False  # connected and migrated once: afterwards a ping is enough

    # -- the batch loop's side ----------------------------------------------------

    def enqueue(self, handoff: Handoff) -> Waiter:
        """Queue ``handoff`` for the next group; the future of its answer (a
        :class:`Committed`, or the :class:`SinkUnavailable` of its group). Raises
        :class:`SinkUnavailable` at once while the sink is unavailable."""
        if self._state != OK:
            self._counted("unavailable", 1)
            raise SinkUnavailable(self._detail, RETRY_SECONDS)
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self._queue.append((handoff, waiter))
        parked = self._parked
        while parked:  # wake one idle worker: it runs in the loop's next round, with the round's group
            worker = parked.pop()
            if not worker.done():
                worker.set_result(None)
                break
        return waiter

    async def submit(self, handoff: Handoff) -> Committed:
        """The committed answer for ``handoff`` once its group is committed; raises
        :class:`SinkUnavailable` at once while the sink is unavailable, or when its group
        could not be committed."""
        answer = await self.enqueue(handoff)
        if isinstance(answer, SinkUnavailable):
            raise answer
        return answer

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def pending(self) -> int:
        """Handoffs queued or in a commit under way."""
        return len(self._queue) + self._in_flight

    def status(self) -> dict[str, Any]:
        """The ``sink`` part of ``/readyz``."""
        status: dict[str, Any] = {"sink": self.sink.name, "state": self._state,
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since)),
                                  "pending": self.pending}
        if self._state != OK:
            status["last_error"] = self._detail  # raw error text: /readyz shows it to the admin credential only
        return status

    def _up(self) -> None:
        if self._state != OK:
            if self._state == UNAVAILABLE:
                log.warning("sink available again", extra={"sink": self.sink.name,
                                                           "unavailable_seconds": round(time.time() - self._since, 3)})
            self._state, self._since, self._detail = OK, time.time(), ""

    def _down(self, detail: str) -> None:
        if self._state != UNAVAILABLE:
            log.error("sink unavailable", extra={"sink": self.sink.name, "detail": detail})
            self._state, self._since = UNAVAILABLE, time.time()
        self._detail = detail

    # -- the committer's task ------------------------------------------------------

    async def start(self, wait: float) -> None:
        """Open the sink (connect, migrate up), trying for at most ``wait`` seconds; the sink
        stays unavailable, and :meth:`run` keeps trying, when it could not. Raises what
        opening raises other than :class:`SinkUnavailable` (a schema newer than this release)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.05)):
                    await self.sink.open()
            except (SinkUnavailable, TimeoutError) as exc:
                self._down(_detail(exc, "the sink did not open in time"))
                if time.monotonic() + RETRY_SECONDS / 4 >= deadline:
                    return
                await asyncio.sleep(RETRY_SECONDS / 4)
            else:
                self._opened = True
                self._up()
                return

    async def run(self) -> None:
        """Start the workers, the pings of an unavailable sink and the purge of old keys; they
        go on when this is cancelled, until :meth:`close` (which lets the commits under way
        finish first)."""
        self._spawn(self._watch())
        self._spawn(self._purge())
        for _ in range(self._concurrency):
            self._spawn(self._work())
        await asyncio.get_running_loop().create_future()  # until cancelled

    async def _work(self) -> None:
        """One worker: take a group, commit it, answer it; park while nothing is queued."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                parked: asyncio.Future[None] = loop.create_future()
                self._parked.append(parked)
                await parked
                continue
            group = queue[:self._max_group]
            del queue[:self._max_group]
            self._in_flight += len(group)
            try:
                await self._commit(group)
            except asyncio.CancelledError:  # stopping (close): nobody waits for ever
                stopping = SinkUnavailable("the service is stopping", RETRY_SECONDS)
                for _, waiter in group:
                    if not waiter.done():
                        waiter.set_result(stopping)
                raise
            finally:
                self._in_flight -= len(group)

    async def _commit(self, group: list[tuple[Handoff, Waiter]]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                answers = await self.sink.commit([handoff for handoff, _ in group])
        except (SinkUnavailable, TimeoutError, OSError) as exc:
            failure = exc if isinstance(exc, SinkUnavailable) else SinkUnavailable(
                _detail(exc, f"the sink did not commit within {self._timeout:g} s"), RETRY_SECONDS)
            self._fail(group, failure, started)
            return
        except Exception as exc:  # a bug or an unexpected driver error: the same answer, logged
            log.exception("sink commit failed")
            self._fail(group, SinkUnavailable(f"sink error: {type(exc).__name__}", RETRY_SECONDS), started)
            return
        self._observe("ok", time.perf_counter() - started)
        replays = 0
        for (_, waiter), answer in zip(group, answers, strict=True):
            replays += answer.replay
            if not waiter.done():  # its connection may be gone (cancelled)
                waiter.set_result(answer)
        self._counted("committed", len(group) - replays)
        if replays:
            self._counted("replayed", replays)
        self._up()

    def _fail(self, group: list[tuple[Handoff, Waiter]], failure: SinkUnavailable, started: float) -> None:
        self._observe("failed", time.perf_counter() - started)
        self._counted("unavailable", len(group))
        self._down(failure.detail)
        for _, waiter in group:
            if not waiter.done():
                waiter.set_result(failure)

    async def _watch(self) -> None:
        """While the sink is unavailable (or never opened), try it every ``RETRY_SECONDS``."""
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            if self._state == OK:
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    if self._opened:
                        await self.sink.ping()
                    else:
                        await self.sink.open()
                        self._opened = True
            except (SinkUnavailable, TimeoutError, OSError) as exc:
                self._down(_detail(exc, "the sink did not answer in time"))
            except Exception:  # a schema too new: it shows in the log, and the sink stays down
                log.exception("sink still unavailable")
            else:
                self._up()

    async def _purge(self) -> None:
        while True:
            if self._state == OK:
                try:
                    async with asyncio.timeout(max(self._timeout, 60.0)):
                        purged = await self.sink.purge(self._retention)
                    if purged:
                        log.info("idempotency keys purged", extra={"purged": purged, "sink": self.sink.name})
                except Exception as exc:  # noqa: BLE001 - the next purge tries again
                    log.warning("idempotency key purge failed", extra={"detail": _detail(exc, "timed out")})
            await asyncio.sleep(PURGE_EVERY_SECONDS)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, timeout: float) -> None:
        """Let the commits under way finish (within ``timeout``), answer what is still queued
        with :class:`SinkUnavailable`, stop the tasks and close the sink."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        queued, self._queue[:] = list(self._queue), []
        for _, waiter in queued:
            if not waiter.done():
                waiter.set_result(SinkUnavailable("the service is stopping", RETRY_SECONDS))
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await self.sink.close()


def _detail(exc: BaseException, when_empty: str) -> str:
    if isinstance(exc, SinkUnavailable):
        return exc.detail
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else when_empty
