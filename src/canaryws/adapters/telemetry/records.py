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

The batch, record and shadow totals behind the metrics are read from the connection
summaries at collection time (:mod:`canaryws.adapters.telemetry.totals`); the flag
source's metrics are :mod:`canaryws.adapters.telemetry.flags`.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Tracer,
    TracerProvider,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.status import Status, StatusCode
from prometheus_client import CollectorRegistry

from canaryws.adapters.telemetry.connection_spans import ConnectionSpans
from canaryws.adapters.telemetry.sampling import PRESAMPLED_BATCH_ROLE, ConnectionSpansSampler
from canaryws.adapters.telemetry.totals import (
    DURATION_DESCRIPTION,
    DurationHistograms,
    ShadowTotals,
    SummaryTotals,
)
from canaryws.core.cohorts import Cohort, FlagEvaluation
from canaryws.core.compare import Divergence
from canaryws.core.strategies.outcome import Outcome
from canaryws.core.summary import A_LATENCY_BUCKETS, A_ROLE, A_SYNTHETIC, NORMAL_CLOSE_CODES, ConnectionSummary

__all__ = [
    "LABELLED_CLOSE_CODES",
    "NEVER",
    "RecordsTelemetry",
    "close_code_label",
    "span_context",
]

SCOPE = "canaryws.records"
PROVIDER_NAME = "Unleash"
_EMPTY_CONTEXT = otel_context.Context()
NEVER = sys.maxsize  # a batch gap that never ends: no batch spans
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
A_CLAIMED_VERSION = "canaryws.client.claimed_version"  # X-Canaryws-Client-Version, advisory


class RecordsTelemetry:
    """Instruments of the records endpoint; one per app."""

    def __init__(self, tracer_provider: TracerProvider, meter_provider: MeterProvider,
                 rng: Callable[[], float] = random.random, *,
                 duration_registry: CollectorRegistry | None = None) -> None:
        """``duration_registry``: serve the batch-duration histogram from this Prometheus
        registry, read from the connection summaries (:class:`DurationHistograms`), instead of
        recording each batch in an OTel histogram (5 µs a batch; see docs/benchmarks.md)."""
        self.tracer: Tracer = tracer_provider.get_tracer(SCOPE)
        # the connect and connection spans, without the SDK's per-span work where that changes nothing
        self._connection_spans = ConnectionSpans.of(self.tracer)
        sampler = getattr(tracer_provider, "sampler", None)
        self._batch_ratio = sampler.batch_ratio if isinstance(sampler, ConnectionSpansSampler) else None
        self._random = rng
        meter: Meter = meter_provider.get_meter(SCOPE)
        # A connection's opening and closing counts (opened, active, closed, synthetic) are
        # plain integers, read at collection time: four SDK counter updates (attribute
        # cleaning, hashing, aggregation under a lock) cost 22 µs of each connection's life,
        # these updates well under 1 µs (docs/benchmarks.md, "Handshakes").
        self._active: dict[str, int] = {}  # strategy -> open connections
        self._opened: dict[str, int] = {}  # strategy -> accepted connections
        self._closed: dict[tuple[str, str], int] = {}  # (strategy, close code label) -> closed connections
        self._synthetic_opened: dict[str, int] = {}  # strategy -> accepted synthetic connections
        meter.create_observable_up_down_counter(
            "canaryws.connections.active",
            callbacks=[self._by_strategy(self._active)],
            unit="{connection}",
            description="Open connections by strategy",
        )
        meter.create_observable_counter(
            "canaryws.connections.opened",
            callbacks=[self._by_strategy(self._opened)],
            unit="{connection}",
            description="Accepted connections by strategy",
        )
        meter.create_observable_counter(
            "canaryws.connections.closed",
            callbacks=[self._observe_closed],
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
        meter.create_observable_counter(
            "canaryws.synthetic.connections",
            callbacks=[self._by_strategy(self._synthetic_opened)],
            unit="{connection}",
            description="Accepted synthetic connections (token property synthetic=true: probes), by strategy; "
            "also counted in canaryws.connections.opened",
        )
        self._throttled = meter.create_counter(
            "canaryws.frames.throttled",
            unit="{frame}",
            description="Frames held back by a limit (frames: the rate; bytes, client_bytes: the work budgets), "
            "by strategy",
        )
        # Batches, records and batch durations are counted once, on the connection summaries
        # (which the batch loop fills anyway): at collection (a scrape, an OTLP export) the
        # totals are the retired slices plus the open connections' current ones; the batch
        # loop does no metric work at all (docs/benchmarks.md).
        self._totals = SummaryTotals()
        meter.create_observable_counter(
            "canaryws.batches",
            callbacks=[self._totals.observe_batches],
            unit="{batch}",
            description="Batches answered with a result, by strategy",
        )
        meter.create_observable_counter(
            "canaryws.records",
            callbacks=[self._totals.observe_records],
            unit="{record}",
            description="Records by strategy, outcome and reason",
        )
        self._duration: Histogram | None = None
        if duration_registry is not None:
            duration_registry.register(DurationHistograms(self._totals))
        else:  # metrics also leave by OTLP: the SDK's histogram, recorded per batch
            self._duration = meter.create_histogram(
                "canaryws.batch.duration", unit="s", description=DURATION_DESCRIPTION
            )
        self._errors = meter.create_counter(
            "canaryws.errors", unit="{frame}", description="Error frames sent, by strategy and code"
        )
        self._cohort_changes = meter.create_counter(
            "canaryws.cohort.changes", unit="{change}", description="Open connections that switched cohort"
        )
        # The shadow's counts are kept on the connection summaries too (add_shadow) and read
        # from them at collection, like the batch metrics: a comparison does no metric work.
        # Only the skips (sampled out, error), which have no per-summary reason, add up here.
        self._shadow_skipped_totals: dict[tuple[str, ...], int] = {}
        meter.create_observable_counter(
            "canaryws.shadow.batches",
            callbacks=[self._pair_observer(lambda pair: pair.batches)],
            unit="{batch}",
            description="Batches also processed by the other strategy (shadow), by strategy and shadow strategy",
        )
        meter.create_observable_counter(
            "canaryws.shadow.skipped",
            callbacks=[self._observer(self._shadow_skipped_totals)],
            unit="{batch}",
            description="Shadow-eligible batches not compared, by strategy and reason (sampled_out, error)",
        )
        meter.create_observable_counter(
            "canaryws.shadow.records",
            callbacks=[self._pair_observer(lambda pair: pair.records)],
            unit="{record}",
            description="Records compared by the shadow",
        )
        meter.create_observable_counter(
            "canaryws.shadow.divergent",
            callbacks=[self._observe_divergent],
            unit="{record}",
            description="Records the two strategies treated differently, by strategy, kind and reason",
        )
        meter.create_observable_counter(
            "canaryws.shadow.work",
            callbacks=[self._pair_observer(lambda pair: pair.work)],
            unit="s",
            description="Time spent running the shadow strategy and comparing",
        )
        self._attr_cache: dict[tuple[str, ...], dict[str, str]] = {}

    def _observer(self, totals: Mapping[tuple[str, ...], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable counter's callback reporting ``totals`` (keys: label, value, label, value, ...)."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for key, n in list(totals.items()):  # a copy: batches go on meanwhile
                yield Observation(n, self._attrs(*key))

        return observe

    def _by_strategy(self, counts: Mapping[str, int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable instrument's callback reporting ``counts`` by strategy."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, self._attrs("strategy", strategy)) for strategy, n in list(counts.items())]

        return observe

    def _observe_closed(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, self._attrs("strategy", strategy, "code", code))
                for (strategy, code), n in list(self._closed.items())]

    def _pair_observer(
        self, value: Callable[[ShadowTotals], float]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable counter's callback reporting ``value`` of each shadow pair."""

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value(pair), self._attrs("strategy", strategy, "shadow_strategy", shadow_strategy))
                    for (strategy, shadow_strategy), pair in self._totals.shadow().items()]

        return observe

    def _observe_divergent(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, self._attrs("strategy", strategy, "shadow_strategy", shadow_strategy,
                                       "kind", kind, "reason", reason))
            for (strategy, shadow_strategy), pair in self._totals.shadow().items()
            for (kind, reason), n in pair.divergent.items()
        ]

    def _attrs(self, *pairs: str) -> dict[str, str]:
        cached = self._attr_cache.get(pairs)
        if cached is None:
            cached = dict(zip(pairs[::2], pairs[1::2], strict=True))
            self._attr_cache[pairs] = cached
        return cached

    # -- the summaries behind the batch metrics -----------------------------------

    @property
    def totals(self) -> SummaryTotals:
        """Batches, records and durations: retired slices plus the open ones (see :class:`SummaryTotals`)."""
        return self._totals

    # -- connection lifecycle -------------------------------------------------

    def refused(self, reason: str) -> None:
        self._refused.add(1, self._attrs("reason", reason))

    def terminated(self, reason: str) -> None:
        self._terminated.add(1, self._attrs("reason", reason))

    def throttled(self, strategy: str, limit: str = "frames") -> None:
        """A frame that waited for a limit: ``frames`` (the rate), ``bytes`` (the connection's
        work budget) or ``client_bytes`` (the client id's)."""
        self._throttled.add(1, self._attrs("strategy", strategy, "limit", limit))

    def start_connect(self, connection_id: str, client_id: str,
                      headers: Iterable[tuple[bytes, bytes]] = (), claimed_version: str | None = None,
                      *, synthetic: bool = False) -> Span:
        """The connect span: the handshake, auth and cohort. It continues the W3C trace
        context (``traceparent``) the client sent with its handshake, if any (the ASGI
        instrumentation leaves ``/records`` alone). ``claimed_version`` is the client's own
        ``X-Canaryws-Client-Version`` (advisory: never a flag property, never a metric label);
        ``synthetic``: a probe's connection (``canaryws.synthetic`` = true)."""
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
                   if name in _TRACE_HEADERS}
        attributes: dict[str, Any] = {A_ROLE: "connect", "canaryws.connection.id": connection_id,
                                      "canaryws.client.id": client_id}
        if claimed_version is not None:
            attributes[A_CLAIMED_VERSION] = claimed_version
        if synthetic:
            attributes[A_SYNTHETIC] = True
        context = propagate.extract(carrier) if carrier else _EMPTY_CONTEXT
        spans = self._connection_spans
        if spans is not None:
            parent = get_current_span(context).get_span_context() if carrier else None
            return spans.start("records.connect", attributes, parent=parent)
        return self.tracer.start_span("records.connect", context=context, kind=SpanKind.SERVER, attributes=attributes)

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

    def opened(self, cohort: Cohort, *, synthetic: bool = False) -> None:
        strategy = cohort.strategy
        self._opened[strategy] = self._opened.get(strategy, 0) + 1
        self._active[strategy] = self._active.get(strategy, 0) + 1
        if synthetic:
            self._synthetic_opened[strategy] = self._synthetic_opened.get(strategy, 0) + 1

    def cohort_changed(self, old: Cohort, new: Cohort) -> None:
        if old.strategy != new.strategy:
            self._active[old.strategy] = self._active.get(old.strategy, 0) - 1
            self._active[new.strategy] = self._active.get(new.strategy, 0) + 1
        self._cohort_changes.add(1, self._attrs("from", old.strategy, "to", new.strategy))

    def closed(self, summary: ConnectionSummary, close_code: int) -> None:
        """Connection metrics at disconnect (the summary span is emitted by :meth:`emit_summary`)."""
        strategy = summary.strategy
        self._active[strategy] = self._active.get(strategy, 0) - 1
        key = (strategy, close_code_label(close_code))
        self._closed[key] = self._closed.get(key, 0) + 1

    def emit_summary(self, summary: ConnectionSummary, start_ns: int, end_ns: int, connect: SpanContext | None) -> None:
        """One ``records.connection`` span: a slice of a connection's life under one cohort."""
        links = [Link(connect)] if connect is not None and connect.is_valid else None
        attributes = summary.to_attributes()
        spans = self._connection_spans
        if spans is not None:
            latency = attributes.get(A_LATENCY_BUCKETS)
            if latency is not None:  # a sequence is kept as a tuple, as the SDK keeps it
                attributes[A_LATENCY_BUCKETS] = tuple(latency)
            span = spans.start("records.connection", attributes, links=links or (), start_time=start_ns)
        else:
            span = self.tracer.start_span("records.connection", context=_EMPTY_CONTEXT, kind=SpanKind.SERVER,
                                          links=links, attributes=attributes, start_time=start_ns)
        if summary.close_code is not None and summary.close_code not in NORMAL_CLOSE_CODES:
            span.set_status(Status(StatusCode.ERROR, f"close code {summary.close_code}"))
        span.end(end_time=max(end_ns, start_ns))

    # -- per batch -----------------------------------------------------------

    def batch_gap(self) -> int:
        """How many batches to leave without a span before the next batch span.

        The batch loop counts this down and calls :meth:`start_batch` when it reaches 0,
        so a batch left out costs a decrement, not a call and a random number. The gap is
        a geometric draw with the sampler's share of batch spans (``batch_ratio``), so
        every batch is still sampled independently with that probability: one draw per
        sampled batch instead of one per batch. 0 (a span for every batch, which the
        sampler then decides on) when the share is unknown (see
        :attr:`ConnectionSpansSampler.batch_ratio`); :data:`NEVER` when it is 0.
        """
        ratio = self._batch_ratio
        if ratio is None or ratio >= 1.0:
            return 0
        if ratio <= 0.0:
            return NEVER
        return min(int(math.log(1.0 - self._random()) / math.log1p(-ratio)), NEVER)

    def start_batch(self, connect: SpanContext | None, synthetic: bool = False) -> Span:
        """A root span (new trace) linked to the connection's connect span, for a batch
        :meth:`batch_gap` selected (or, when the share is unknown, for the sampler to decide);
        ``synthetic``: a probe connection's batch (``canaryws.synthetic`` = true)."""
        role = "batch" if self._batch_ratio is None else PRESAMPLED_BATCH_ROLE
        links = (Link(connect),) if connect is not None and connect.is_valid else None
        return self.tracer.start_span(
            "records.batch",
            context=_EMPTY_CONTEXT,
            kind=SpanKind.SERVER,
            links=links,
            attributes={A_ROLE: role, A_SYNTHETIC: True} if synthetic else {A_ROLE: role},
        )

    @property
    def records_each_batch(self) -> bool:
        """True when :meth:`batch_done` must run for every batch, sampled or not: the
        batch duration goes out as an OTel histogram (OTLP metrics)."""
        return self._duration is not None

    def batch_done(
        self,
        span: Span,
        batch_id: str,
        outcome: Outcome,
        elapsed: float,
        connection_id: str,
        *,
        end: bool = True,
    ) -> None:
        """Metrics and span attributes of one answered batch. The batch loop calls it for
        sampled batches only, unless :attr:`records_each_batch`.

        With ``end`` false the span stays open for the shadow comparison (:meth:`shadow_done`).
        """
        strategy = outcome.strategy
        if self._duration is not None:
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
            for (kind, reason), n in outcome.reason_counts().items():
                attrs[f"canaryws.batch.{kind}.{reason}"] = n
            span.set_attributes(attrs)
        if end:
            span.end()

    # -- shadow --------------------------------------------------------------

    def shadow_skipped(self, span: Span, strategy: str, reason: str) -> None:
        key = ("strategy", strategy, "reason", reason)
        skipped = self._shadow_skipped_totals
        skipped[key] = skipped.get(key, 0) + 1
        if span.is_recording():
            span.set_attribute("canaryws.shadow.skipped", reason)

    def shadow_done(self, span: Span, shadow_strategy: str, divergence: Divergence, end_ns: int | None) -> None:
        """Set one shadow comparison on the batch span and end it at ``end_ns`` (when the answer
        went out). The comparison's counts are the summary's (``add_shadow``), which the
        ``canaryws.shadow.*`` metrics read at collection."""
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


LABELLED_CLOSE_CODES = frozenset(range(1000, 1016))
"""The close codes of RFC 6455 that ``canaryws_connections_closed_total`` names; any other (a
client may close with any of 3000-4999) is ``other``, so that clients cannot make series."""


def close_code_label(code: int) -> str:
    return str(code) if code in LABELLED_CLOSE_CODES else "other"


def span_context(span: Span) -> SpanContext | None:
    ctx = span.get_span_context()
    return ctx if ctx.is_valid else None



class CurrentSpan:
    """``trace.use_span(span, end_on_exit=True)`` as a plain class: ``span`` current inside the
    block (log lines carry its ids), ended on the way out, an exception leaving the block
    recorded on it as use_span records one (:func:`record_failure`). use_span's context manager
    is built on a generator: a few µs of every handshake (tests/unit/test_connection_spans.py
    compares the two spans)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        self._token = otel_context.attach(set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, failure: BaseException | None, _tb: object) -> None:
        try:
            if isinstance(failure, Exception):  # as use_span: not a BaseException (CancelledError, GeneratorExit)
                record_failure(self._span, failure)
        finally:
            otel_context.detach(self._token)
            self._span.end()


def record_failure(span: Span, failure: Exception) -> None:
    """What ``trace.use_span`` does with an exception leaving its block: an ``exception``
    event and an ERROR status on a recording span (:class:`CurrentSpan`'s)."""
    if span.is_recording():
        span.record_exception(failure)
        span.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))
