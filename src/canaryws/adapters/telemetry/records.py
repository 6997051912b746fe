"""Spans and metrics of the ``/records`` endpoint (GUIDE §5).

- ``records.connect``: a short span (handshake, auth, cohort) carrying one
  ``feature_flag.evaluation`` event per flag evaluated (OTel semconv names).
- ``records.batch``: a ROOT span per batch, linked to the connect span, so sampling
  is decided per batch rather than once per connection.
- ``records.connection``: at disconnect, a span covering the connection's lifetime
  with the per-connection summary (batches, records per outcome, close code, cohort
  history): the unit of analysis when cohorts are compared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.status import Status, StatusCode

from canaryws.core.cohorts import Cohort, FlagEvaluation
from canaryws.core.strategies.outcome import Outcome

SCOPE = "canaryws.records"
ROLE = "canaryws.span.role"
PROVIDER_NAME = "Unleash"
_EMPTY_CONTEXT = otel_context.Context()


@dataclass(slots=True)
class CohortPeriod:
    cohort: Cohort
    since_batch: int
    at: float


@dataclass(slots=True)
class ConnectionStats:
    """Running per-connection counts, summarised on the ``records.connection`` span."""

    connection_id: str
    client_id: str
    started_at_ns: int
    batches: int = 0
    records: int = 0
    accepted: int = 0
    skipped: int = 0
    rejected: int = 0
    errors: int = 0
    reasons: dict[tuple[str, str], int] = field(default_factory=dict)  # ("rejected", "empty") -> n
    error_codes: dict[str, int] = field(default_factory=dict)
    history: list[CohortPeriod] = field(default_factory=list)

    def add(self, outcome: Outcome, counts: dict[tuple[str, str], int]) -> None:
        """Count one answered batch; ``counts`` is ``outcome.reason_counts()``, computed once per batch."""
        self.batches += 1
        self.records += outcome.size
        self.accepted += len(outcome.accepted)
        self.skipped += len(outcome.skipped)
        self.rejected += len(outcome.rejected)
        reasons = self.reasons
        for key, n in counts.items():
            reasons[key] = reasons.get(key, 0) + n

    def add_error(self, code: str) -> None:
        self.errors += 1
        self.error_codes[code] = self.error_codes.get(code, 0) + 1


class RecordsTelemetry:
    """Instruments of the records endpoint; one per app."""

    def __init__(self, tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
        self.tracer: Tracer = tracer_provider.get_tracer(SCOPE)
        meter: Meter = meter_provider.get_meter(SCOPE)
        self._connections_active = meter.create_up_down_counter(
            "canaryws.connections.active", unit="{connection}", description="Open connections by strategy"
        )
        self._connections = meter.create_counter(
            "canaryws.connections.opened", unit="{connection}", description="Accepted connections by strategy"
        )
        self._closes = meter.create_counter(
            "canaryws.connections.closed",
            unit="{connection}",
            description="Closed connections by strategy and close code",
        )
        self._refused = meter.create_counter(
            "canaryws.connections.refused",
            unit="{connection}",
            description="Handshakes refused before accept, by reason",
        )
        self._batches = meter.create_counter(
            "canaryws.batches", unit="{batch}", description="Batches answered with a result, by strategy"
        )
        self._records = meter.create_counter(
            "canaryws.records", unit="{record}", description="Records by strategy, outcome and reason"
        )
        self._duration = meter.create_histogram(
            "canaryws.batch.duration", unit="s", description="Time from frame received to result sent"
        )
        self._errors = meter.create_counter(
            "canaryws.errors", unit="{frame}", description="Error frames sent, by strategy and code"
        )
        self._cohort_changes = meter.create_counter(
            "canaryws.cohort.changes", unit="{change}", description="Open connections that switched cohort"
        )
        self._attr_cache: dict[tuple[str, ...], dict[str, str]] = {}

    def _attrs(self, *pairs: str) -> dict[str, str]:
        cached = self._attr_cache.get(pairs)
        if cached is None:
            cached = dict(zip(pairs[::2], pairs[1::2], strict=True))
            self._attr_cache[pairs] = cached
        return cached

    # -- connection lifecycle -------------------------------------------------

    def refused(self, reason: str) -> None:
        self._refused.add(1, self._attrs("reason", reason))

    def start_connect(self, connection_id: str, client_id: str) -> Span:
        """The connect span is a child of the handshake (ASGI) span, if any."""
        return self.tracer.start_span(
            "records.connect",
            kind=SpanKind.INTERNAL,
            attributes={
                ROLE: "connect",
                "canaryws.connection.id": connection_id,
                "canaryws.client.id": client_id,
            },
        )

    @staticmethod
    def record_evaluations(span: Span, evaluations: Iterable[FlagEvaluation], context_id: str) -> None:
        if not span.is_recording():
            return
        for ev in evaluations:
            span.add_event(
                "feature_flag.evaluation",
                {
                    "feature_flag.key": ev.key,
                    "feature_flag.result.variant": ev.variant,
                    "feature_flag.result.value": ev.enabled,
                    "feature_flag.result.reason": ev.reason,
                    "feature_flag.provider.name": PROVIDER_NAME,
                    "feature_flag.context.id": context_id,
                    "feature_flag.version": ev.version,
                },
            )

    @staticmethod
    def set_cohort(span: Span, cohort: Cohort) -> None:
        if span.is_recording():
            span.set_attributes(
                {
                    "canaryws.strategy": cohort.strategy,
                    "canaryws.strategy.version": cohort.strategy_version,
                    "canaryws.shadow": cohort.shadow,
                    "canaryws.flags.revision": cohort.flags_revision,
                }
            )

    def opened(self, cohort: Cohort) -> None:
        attrs = self._attrs("strategy", cohort.strategy)
        self._connections.add(1, attrs)
        self._connections_active.add(1, attrs)

    def cohort_changed(self, old: Cohort, new: Cohort) -> None:
        if old.strategy != new.strategy:
            self._connections_active.add(-1, self._attrs("strategy", old.strategy))
            self._connections_active.add(1, self._attrs("strategy", new.strategy))
        self._cohort_changes.add(1, self._attrs("from", old.strategy, "to", new.strategy))

    def closed(self, stats: ConnectionStats, cohort: Cohort, close_code: int, connect: SpanContext | None) -> None:
        """Metrics and the per-connection summary span, at disconnect."""
        self._connections_active.add(-1, self._attrs("strategy", cohort.strategy))
        self._closes.add(1, self._attrs("strategy", cohort.strategy, "code", str(close_code)))
        links = [Link(connect)] if connect is not None and connect.is_valid else None
        first = stats.history[0].cohort if stats.history else cohort
        attributes: dict[str, Any] = {
            ROLE: "connection",
            "canaryws.connection.id": stats.connection_id,
            "canaryws.client.id": stats.client_id,
            "canaryws.strategy": cohort.strategy,
            "canaryws.strategy.version": cohort.strategy_version,
            "canaryws.strategy.initial": first.strategy,
            "canaryws.shadow": cohort.shadow,
            "canaryws.flags.revision": cohort.flags_revision,
            "canaryws.connection.close_code": close_code,
            "canaryws.connection.batches": stats.batches,
            "canaryws.connection.records": stats.records,
            "canaryws.connection.accepted": stats.accepted,
            "canaryws.connection.skipped": stats.skipped,
            "canaryws.connection.rejected": stats.rejected,
            "canaryws.connection.errors": stats.errors,
            "canaryws.connection.cohort_changes": max(0, len(stats.history) - 1),
            "canaryws.connection.cohort_history": json.dumps(
                [
                    {
                        "strategy": p.cohort.strategy,
                        "strategy_version": p.cohort.strategy_version,
                        "shadow": p.cohort.shadow,
                        "flags_revision": p.cohort.flags_revision,
                        "since_batch": p.since_batch,
                        "at": round(p.at, 3),
                    }
                    for p in stats.history
                ],
                separators=(",", ":"),
            ),
        }
        for (kind, reason), n in stats.reasons.items():
            attributes[f"canaryws.connection.{kind}.{reason}"] = n
        for code, n in stats.error_codes.items():
            attributes[f"canaryws.connection.errors.{code}"] = n
        span = self.tracer.start_span(
            "records.connection",
            context=_EMPTY_CONTEXT,
            kind=SpanKind.SERVER,
            links=links,
            attributes=attributes,
            start_time=stats.started_at_ns,
        )
        if close_code not in (1000, 1001):
            span.set_status(Status(StatusCode.ERROR, f"close code {close_code}"))
        span.end()

    # -- per batch -----------------------------------------------------------

    def start_batch(self, connect: SpanContext | None) -> Span:
        """A root span (new trace) linked to the connection's connect span."""
        links = (Link(connect),) if connect is not None and connect.is_valid else None
        return self.tracer.start_span(
            "records.batch",
            context=_EMPTY_CONTEXT,
            kind=SpanKind.SERVER,
            links=links,
            attributes={ROLE: "batch"},
        )

    def batch_done(
        self,
        span: Span,
        batch_id: str,
        outcome: Outcome,
        counts: dict[tuple[str, str], int],
        started: float,
        connection_id: str,
    ) -> None:
        """Metrics and span attributes of one answered batch; ``counts`` is ``outcome.reason_counts()``."""
        strategy = outcome.strategy
        elapsed = time.perf_counter() - started
        self._batches.add(1, self._attrs("strategy", strategy))
        if outcome.accepted:
            self._records.add(len(outcome.accepted), self._attrs("strategy", strategy, "outcome", "accepted"))
        for (kind, reason), n in counts.items():
            self._records.add(n, self._attrs("strategy", strategy, "outcome", kind, "reason", reason))
        self._duration.record(elapsed, self._attrs("strategy", strategy))
        if span.is_recording():
            attrs: dict[str, Any] = {
                "canaryws.connection.id": connection_id,
                "canaryws.batch.id": batch_id,
                "canaryws.strategy": strategy,
                "canaryws.strategy.version": outcome.strategy_version,
                "canaryws.batch.records": outcome.size,
                "canaryws.batch.accepted": len(outcome.accepted),
                "canaryws.batch.skipped": len(outcome.skipped),
                "canaryws.batch.rejected": len(outcome.rejected),
            }
            for (kind, reason), n in counts.items():
                attrs[f"canaryws.batch.{kind}.{reason}"] = n
            span.set_attributes(attrs)
        span.end()

    def batch_error(self, span: Span, code: str, detail: str, strategy: str, connection_id: str) -> None:
        self._errors.add(1, self._attrs("strategy", strategy, "code", code))
        if span.is_recording():
            span.set_attributes(
                {
                    "canaryws.connection.id": connection_id,
                    "canaryws.strategy": strategy,
                    "canaryws.error.code": code,
                }
            )
            span.set_status(Status(StatusCode.ERROR, f"{code}: {detail[:200]}"))
        span.end()


class FlagsTelemetry:
    """Metrics of the flag source: reload results, revision and age of the flags."""

    def __init__(self, meter_provider: MeterProvider, status: Callable[[], Mapping[str, Any]]) -> None:
        """``status`` returns the flag source's status; it is read at scrape time only."""
        meter = meter_provider.get_meter("canaryws.flags")
        self._status = status
        self._reloads = meter.create_counter(
            "canaryws.flags.reloads", unit="{reload}", description="Flag document reloads by source and result"
        )
        meter.create_observable_gauge(
            "canaryws.flags.age",
            callbacks=[self._observe_age],
            unit="s",
            description="Seconds since the flags in force were loaded",
        )
        meter.create_observable_gauge(
            "canaryws.flags.info",
            callbacks=[self._observe_info],
            unit="1",
            description="1 for the flags revision in force (labels: source, revision, state)",
        )

    def reloaded(self, source: str, result: str) -> None:
        self._reloads.add(1, {"source": source, "result": result})

    def _observe_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        yield Observation(float(st.get("age_seconds", 0.0)), {"source": str(st.get("source"))})

    def _observe_info(self, _options: CallbackOptions) -> Iterable[Observation]:
        st = self._status()
        yield Observation(
            1,
            {"source": str(st.get("source")), "revision": str(st.get("revision")), "state": str(st.get("state"))},
        )


def span_context(span: Span) -> SpanContext | None:
    ctx = span.get_span_context()
    return ctx if ctx.is_valid else None


__all__ = [
    "CohortPeriod",
    "ConnectionStats",
    "FlagsTelemetry",
    "RecordsTelemetry",
    "span_context",
]
