"""Shadow runs: the other strategy processes a batch too, off the response path.

The endpoint sends its answer first, then hands the batch to :class:`ShadowRunner`. An
event-loop callback per process takes the batches in arrival order, runs the other
strategy, compares the two outcomes (:func:`canaryws.core.compare.compare`) and records
the divergence on the connection's summary, in the metrics and on the batch span. The
answer never waits for it and never depends on it.

The cost is bounded two ways:

- **sampling**: a shadow-eligible batch is compared with probability ``sample_rate``
  (``CANARYWS_SHADOW_SAMPLE_RATE``, default 1.0); the ``records.shadow`` flag's own
  rollout bounds which connections are eligible at all;
- **a bounded queue**: batches waiting for their shadow run may hold at most
  ``max_pending_bytes`` of frame text (``CANARYWS_SHADOW_MAX_PENDING_BYTES``, default
  8 MiB); beyond it a batch is not compared, and ``canaryws_shadow_skipped_total``
  counts it with ``reason="queue_full"``.

A connection summary that ends while its connection still has batches waiting for the
shadow is emitted after them (:meth:`ShadowRunner.after_pending`), so its shadow counts
are complete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.core.compare import compare
from canaryws.core.strategies import STRATEGIES, Outcome
from canaryws.core.summary import ConnectionSummary

log = logging.getLogger("canaryws.shadow")

DEFAULT_SAMPLE_RATE = 1.0
DEFAULT_MAX_PENDING_BYTES = 8 * 1024 * 1024
OTHER_STRATEGY = {"strict": "lenient", "lenient": "strict"}
BURST_SECONDS = 0.0005  # the longest the runner holds the event loop before letting answers out


@dataclass(slots=True)
class _Job:
    records: Sequence[Any]
    outcome: Outcome
    weight: int
    span: Span
    end_ns: int
    summary: ConnectionSummary


class ShadowRunner:
    """One per process; :meth:`start` inside the event loop, :meth:`stop` at shutdown."""

    def __init__(
        self,
        telemetry: RecordsTelemetry,
        *,
        max_length: int,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"shadow sample rate must be within [0, 1], got {sample_rate}")
        self._telemetry = telemetry
        self._max_length = max_length
        self._sample_rate = sample_rate
        self._max_pending_bytes = max_pending_bytes
        self._rng = rng
        self._queue: deque[_Job | Callable[[], None]] = deque()
        self._pending_bytes = 0
        self._pending: dict[int, int] = {}  # id(summary) -> batches waiting
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(), cleared by stop()
        self._scheduled = False  # a drain is queued on the loop

    @property
    def pending_batches(self) -> int:
        return sum(self._pending.values())

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued comparisons (within ``timeout``), then stop; what is left is
        flushed without its shadow run so that no summary is lost. Later submissions are
        refused (``not_started``)."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline and self._loop is not None:
            await asyncio.sleep(0.01)  # the drains run meanwhile
        self._loop = None
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Job):
                self._done(item)
                self._skip(item, "shutdown")
            else:
                item()

    # -- the endpoint's side ---------------------------------------------------

    def submit(
        self,
        summary: ConnectionSummary,
        span: Span,
        records: Sequence[Any],
        outcome: Outcome,
        weight: int,
    ) -> bool:
        """Queue a shadow run for an answered batch; False (span ended, skip counted) if not taken."""
        reason = None
        loop = self._loop
        if self._sample_rate < 1.0 and self._rng() >= self._sample_rate:
            reason = "sampled_out"
        elif loop is None:
            reason = "not_started"
        elif self._pending_bytes + weight > self._max_pending_bytes:
            reason = "queue_full"
        if reason is not None or loop is None:
            reason = reason or "not_started"
            summary.shadow_skipped += 1
            self._telemetry.shadow_skipped(span, outcome.strategy, reason)
            span.end()
            return False
        self._queue.append(_Job(records, outcome, weight, span, time.time_ns(), summary))
        self._pending_bytes += weight
        key = id(summary)
        self._pending[key] = self._pending.get(key, 0) + 1
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return True

    def after_pending(self, summary: ConnectionSummary, action: Callable[[], None]) -> None:
        """Run ``action`` once ``summary``'s queued shadow runs are done (now, if none are)."""
        if self._pending.get(id(summary)):
            self._queue.append(action)
        else:
            action()

    # -- the drain -------------------------------------------------------------

    def _drain(self) -> None:
        """A plain event-loop callback (no task, no future to wake): the queued items, for
        at most ``BURST_SECONDS``, then again on the loop's next round if any are left.
        It runs after the submitting task yields, so answers already sent never wait; one
        callback serves every batch queued in the meantime (docs/benchmarks.md)."""
        self._scheduled = False
        loop = self._loop
        if loop is None:  # stopped: stop() flushed the queue
            return
        queue = self._queue
        clock = time.perf_counter
        until = clock() + BURST_SECONDS
        while queue:
            item = queue.popleft()
            try:
                if isinstance(item, _Job):
                    self._process(item)
                else:
                    item()
            except Exception:
                log.exception("shadow comparison failed")
            if clock() >= until:
                break
        if queue and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)

    def _process(self, job: _Job) -> None:
        try:
            other = OTHER_STRATEGY[job.outcome.strategy]
            started = time.perf_counter()
            shadow = STRATEGIES[other].process(job.records, self._max_length)
            divergence = compare(job.outcome, shadow)
            work = time.perf_counter() - started
        except BaseException:
            self._skip(job, "error")
            raise
        finally:
            self._done(job)
        job.summary.add_shadow(divergence)
        self._telemetry.shadow_done(job.span, job.outcome.strategy, other, divergence, work, job.end_ns)

    def _skip(self, job: _Job, reason: str) -> None:
        job.summary.shadow_skipped += 1
        self._telemetry.shadow_skipped(job.span, job.outcome.strategy, reason)
        job.span.end(end_time=job.end_ns)

    def _done(self, job: _Job) -> None:
        self._pending_bytes -= job.weight
        key = id(job.summary)
        left = self._pending[key] - 1
        if left:
            self._pending[key] = left
        else:
            del self._pending[key]


__all__ = ["DEFAULT_MAX_PENDING_BYTES", "DEFAULT_SAMPLE_RATE", "ShadowRunner"]
