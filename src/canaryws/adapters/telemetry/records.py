"""Spans and metrics of the ``/records`` endpoint (GUIDE §5).

- ``records.connect``: a short span (handshake, auth, cohort) carrying one
  ``feature_flag.evaluation`` event per flag evaluated (OTel semconv names).
- ``records.batch``: a ROOT span per batch, linked to the connect span, so sampling
  is decided per batch rather than once per connection.
- ``records.connection``: a connection summary (:mod:`canaryws.core.summary`) per slice
  of a connection's life under one cohort: emitted at close, at a cohort change and every
  summary interval. Always sampled; the unit of analysis when cohorts are compared.
- shadow comparisons: counted in metrics, and set on the batch span, which then ends
  when the comparison is done but carries the time the answer was sent as its end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.status import Status, StatusCode

from canaryws.core.cohorts import Cohort, FlagEvaluation
from canaryws.core.compare import Divergence
from canaryws.core.strategies.outcome import Outcome
from canaryws.core.summary import A_ROLE, NORMAL_CLOSE_CODES, ConnectionSummary

SCOPE = "canaryws.records"
PROVIDER_NAME = "Unleash"
_EMPTY_CONTEXT = otel_context.Context()


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
        self._terminated = meter.create_counter(
            "canaryws.connections.terminated",
            unit="{connection}",
            description="Connections the service ended itself, by reason (slow_consumer, token_expired, token_revoked)",
        )
        self._throttled = meter.create_counter(
            "canaryws.frames.throttled",
            unit="{frame}",
            description="Frames held back by the per-connection rate limit, by strategy",
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
        self._shadow_batches = meter.create_counter(
            "canaryws.shadow.batches",
            unit="{batch}",
            description="Batches also processed by the other strategy (shadow), by strategy and shadow strategy",
        )
        self._shadow_skipped = meter.create_counter(
            "canaryws.shadow.skipped",
            unit="{batch}",
            description="Shadow-eligible batches not compared, by strategy and reason (sampled_out, queue_full)",
        )
        self._shadow_records = meter.create_counter(
            "canaryws.shadow.records", unit="{record}", description="Records compared by the shadow"
        )
        self._shadow_divergent = meter.create_counter(
            "canaryws.shadow.divergent",
            unit="{record}",
            description="Records the two strategies treated differently, by strategy, kind and reason",
        )
        self._shadow_work = meter.create_counter(
            "canaryws.shadow.work", unit="s", description="Time spent running the shadow strategy and comparing"
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

    def terminated(self, reason: str) -> None:
        self._terminated.add(1, self._attrs("reason", reason))

    def throttled(self, strategy: str) -> None:
        self._throttled.add(1, self._attrs("strategy", strategy))

    def start_connect(self, connection_id: str, client_id: str) -> Span:
        """The connect span is a child of the handshake (ASGI) span, if any."""
        return self.tracer.start_span(
            "records.connect",
            kind=SpanKind.INTERNAL,
            attributes={
                A_ROLE: "connect",
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

    def closed(self, summary: ConnectionSummary, close_code: int) -> None:
        """Connection metrics at disconnect (the summary span is emitted by :meth:`emit_summary`)."""
        self._connections_active.add(-1, self._attrs("strategy", summary.strategy))
        self._closes.add(1, self._attrs("strategy", summary.strategy, "code", str(close_code)))

    def emit_summary(self, summary: ConnectionSummary, start_ns: int, end_ns: int, connect: SpanContext | None) -> None:
        """One ``records.connection`` span: a slice of a connection's life under one cohort."""
        links = [Link(connect)] if connect is not None and connect.is_valid else None
        span = self.tracer.start_span(
            "records.connection",
            context=_EMPTY_CONTEXT,
            kind=SpanKind.SERVER,
            links=links,
            attributes=summary.to_attributes(),
            start_time=start_ns,
        )
        if summary.close_code is not None and summary.close_code not in NORMAL_CLOSE_CODES:
            span.set_status(Status(StatusCode.ERROR, f"close code {summary.close_code}"))
        span.end(end_time=max(end_ns, start_ns))

    # -- per batch -----------------------------------------------------------

    def start_batch(self, connect: SpanContext | None) -> Span:
        """A root span (new trace) linked to the connection's connect span."""
        links = (Link(connect),) if connect is not None and connect.is_valid else None
        return self.tracer.start_span(
            "records.batch",
            context=_EMPTY_CONTEXT,
            kind=SpanKind.SERVER,
            links=links,
            attributes={A_ROLE: "batch"},
        )

    def batch_done(
        self,
        span: Span,
        batch_id: str,
        outcome: Outcome,
        counts: dict[tuple[str, str], int],
        elapsed: float,
        connection_id: str,
        *,
        end: bool = True,
    ) -> None:
        """Metrics and span attributes of one answered batch; ``counts`` is ``outcome.reason_counts()``.

        With ``end`` false the span stays open for the shadow comparison (:meth:`shadow_done`).
        """
        strategy = outcome.strategy
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
        if end:
            span.end()

    # -- shadow --------------------------------------------------------------

    def shadow_skipped(self, span: Span, strategy: str, reason: str) -> None:
        self._shadow_skipped.add(1, self._attrs("strategy", strategy, "reason", reason))
        if span.is_recording():
            span.set_attribute("canaryws.shadow.skipped", reason)

    def shadow_done(
        self,
        span: Span,
        strategy: str,
        shadow_strategy: str,
        divergence: Divergence,
        work_seconds: float,
        end_ns: int,
    ) -> None:
        """Count one shadow comparison and end the batch span at ``end_ns`` (when the answer went out)."""
        pair = self._attrs("strategy", strategy, "shadow_strategy", shadow_strategy)
        self._shadow_batches.add(1, pair)
        self._shadow_records.add(divergence.records, pair)
        self._shadow_work.add(work_seconds, pair)
        for (kind, reason), n in divergence.counts.items():
            self._shadow_divergent.add(
                n, self._attrs("strategy", strategy, "shadow_strategy", shadow_strategy, "kind", kind, "reason", reason)
            )
        if span.is_recording():
            attrs: dict[str, Any] = {
                "canaryws.shadow.strategy": shadow_strategy,
                "canaryws.shadow.records": divergence.records,
                "canaryws.shadow.divergent": divergence.divergent,
            }
            for (kind, reason), n in divergence.counts.items():
                attrs[f"canaryws.shadow.divergence.{kind}.{reason}"] = n
            span.set_attributes(attrs)
        span.end(end_time=end_ns)

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
    "FlagsTelemetry",
    "RecordsTelemetry",
    "span_context",
]
