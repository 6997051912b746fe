"""What follows a loop round's answers: the one queue of the batches answered in the round.

The batch loop answers a batch and queues it here (:meth:`AfterRound.add`); once the event
loop has run the other connections whose frames arrived in the same round, one callback
(:meth:`AfterRound.flush`) takes the round's batches in the order they were answered and,
for each: **counts** it on its connection's summary, **compares** it with the other
strategy when its connection is shadowed (:meth:`canaryws.adapters.shadow.ShadowRunner.run`,
which ends its span), and **ends its span** otherwise, at the time of the answer.

Why after the round, not inline after each answer (docs/benchmarks.md): on a socket, an
answer written while the client sleeps costs the server the client's wake-up inside the
write. Bookkeeping between two answers leaves the client time to fall asleep again, so each
answer paid a wake-up; answers written back to back mostly find it awake. The queue lives
for one loop round (an earlier design that kept comparisons for up to 0.5 ms per process
kept them alive across young-generation garbage collections, which scanned and promoted
them). The endpoint flushes it before it ends a summary slice, so a summary never ends with
answered batches uncounted or comparisons outstanding. Nothing here (an exception included)
reaches a connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from canaryws.adapters.shadow import ShadowRunner
from canaryws.core.strategies import Outcome
from canaryws.core.summary import ConnectionSummary

log = logging.getLogger("canaryws.records")
shadow_log = logging.getLogger("canaryws.shadow")

# (summary, outcome, started, answered, span, records to compare or None, answered_ns):
# started and answered on the perf_counter clock; answered_ns (wall clock) for a recording span.
Answered = tuple[ConnectionSummary, Outcome, float, float, Span, Sequence[Any] | None, int]


class AfterRound:
    """One per endpoint (the event loop's thread only)."""

    def __init__(self, shadow: ShadowRunner) -> None:
        self._shadow = shadow
        self._round: list[Answered] = []

    def add(self, summary: ConnectionSummary, outcome: Outcome, started: float, answered: float,
            span: Span = INVALID_SPAN, compare: Sequence[Any] | None = None, answered_ns: int = 0) -> None:
        """Queue a batch just answered; the first of a round schedules :meth:`flush`.
        ``compare``: the batch's records when its connection is shadowed."""
        queued = self._round
        if not queued:
            asyncio.get_running_loop().call_soon(self.flush)
        queued.append((summary, outcome, started, answered, span, compare, answered_ns))

    def flush(self) -> None:
        """Count, compare and end the spans of the batches queued, now, in their order."""
        queued = self._round
        if not queued:  # the common case at a slice's end
            return
        batches = queued.copy()
        queued.clear()
        run = self._shadow.run
        for summary, outcome, started, answered, span, records, answered_ns in batches:
            try:
                summary.add(outcome, answered - started)
            except Exception:  # one batch's bookkeeping must not lose the others'
                log.exception("batch bookkeeping failed")
            if records is not None:
                try:
                    run(summary, span, records, outcome, answered_ns or None)
                except Exception:  # noqa: BLE001 - logged below; run() contains the comparison's own errors
                    shadow_log.exception("shadow bookkeeping failed")
                    span.end()
            elif span is not INVALID_SPAN:
                span.end(end_time=answered_ns or None)
