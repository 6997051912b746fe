"""Shadow runs: the other strategy processes a batch too, after its answer went out.

The endpoint sends its answer first; the batch joins the loop round's answered batches
(:mod:`canaryws.adapters.records.after_round`), which run :meth:`ShadowRunner.run` once the
round's answers are out: the other strategy, :func:`canaryws.core.compare.compare`, the
divergence counted on the connection's summary (which the ``canaryws.shadow.*`` metrics
read) and set on the batch span. The answer never waits for a comparison and never depends
on it, and nothing a comparison does (an exception included) reaches a connection.

The cost is bounded by **sampling**: a shadow-eligible batch is compared with probability
``sample_rate`` (``CANARYWS_SHADOW_SAMPLE_RATE``, default 1.0); the ``records.shadow``
flag's own rollout bounds which connections are eligible at all. One comparison is at
most one batch's work (``CANARYWS_MAX_RECORDS`` records), like the answer's own.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from opentelemetry.trace import Span

from canaryws.adapters.telemetry.records import RecordsTelemetry
from canaryws.core.compare import compare
from canaryws.core.strategies import OTHER_STRATEGY, STRATEGIES, Outcome
from canaryws.core.summary import ConnectionSummary

log = logging.getLogger("canaryws.shadow")

DEFAULT_SAMPLE_RATE = 1.0


class ShadowRunner:
    """One per process; :meth:`run` once per shadowed batch, after its answer was sent."""

    def __init__(
        self,
        telemetry: RecordsTelemetry,
        *,
        max_length: int,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"shadow sample rate must be within [0, 1], got {sample_rate}")
        self._telemetry = telemetry
        self._max_length = max_length
        self._sample_rate = sample_rate
        self._rng = rng
        self._other = {name: (other, STRATEGIES[other].process) for name, other in OTHER_STRATEGY.items()}

    def run(self, summary: ConnectionSummary, span: Span, records: Sequence[Any], outcome: Outcome,
            answered_ns: int | None = None) -> bool:
        """Compare ``outcome`` (the answer sent) with the other strategy's on ``records``, now.

        Ends the batch span, at the time of the answer (``answered_ns``; now when None).
        Returns False when the batch was not compared: sampled out (``sampled_out``) or the
        comparison failed (``error``, logged); the skip is counted on the summary, in
        ``canaryws_shadow_skipped_total`` and on the span.
        """
        recording = span.is_recording()  # a sampled batch: its span ends at the answer's time
        if recording and answered_ns is None:
            answered_ns = time.time_ns()
        if self._sample_rate < 1.0 and self._rng() >= self._sample_rate:
            self._skip(summary, span, outcome.strategy, "sampled_out", answered_ns)
            return False
        try:
            other, process = self._other[outcome.strategy]
            started = perf_counter()
            divergence = compare(outcome, process(records, self._max_length))
            work = perf_counter() - started
        except Exception:  # a comparison must never reach the connection
            log.exception("shadow comparison failed")
            self._skip(summary, span, outcome.strategy, "error", answered_ns)
            return False
        summary.add_shadow(divergence, work)  # the shadow metrics are read from the summaries
        if recording:  # an unsampled batch's span is a no-op one: nothing to set or end
            self._telemetry.shadow_done(span, other, divergence, answered_ns)
        return True

    def _skip(self, summary: ConnectionSummary, span: Span, strategy: str, reason: str,
              answered_ns: int | None) -> None:
        summary.shadow_skipped += 1
        self._telemetry.shadow_skipped(span, strategy, reason)
        span.end(end_time=answered_ns)


__all__ = ["DEFAULT_SAMPLE_RATE", "ShadowRunner"]
