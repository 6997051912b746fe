"""Sampling: per-batch spans follow the configured sampler, connection spans are kept.

A connection has one ``connect`` span (handshake, auth, cohort) and one ``connection``
summary span; together they carry what the cohort comparison needs, so they are
recorded and sampled whatever the ratio, unless tracing is turned off altogether
(``always_off``). Batch spans, one per batch, are what the configured sampler thins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from canaryws.core.summary import A_ROLE

__all__ = [
    "CONNECTION_ROLES",
    "PRESAMPLED_BATCH_ROLE",
    "ROLE_ATTRIBUTE",
    "ConnectionSpansSampler",
    "root_ratio",
    "sampler_from_environ",
]

_logger = logging.getLogger("canaryws.telemetry")

ROLE_ATTRIBUTE = A_ROLE
"""Start attribute naming a span's role; set it in ``start_span(attributes=...)``."""

CONNECTION_ROLES = frozenset({"connect", "connection"})
"""Roles that are always sampled (one span each per connection)."""

PRESAMPLED_BATCH_ROLE = "batch:presampled"
"""Start role of a batch span its caller already sampled, with :attr:`ConnectionSpansSampler.batch_ratio`;
the span is recorded with role ``batch``."""

_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
_FIXED_SAMPLERS: Mapping[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "parentbased_always_on": DEFAULT_ON,
    "parentbased_always_off": DEFAULT_OFF,
}


class ConnectionSpansSampler(Sampler):
    """Always sample spans whose start attributes mark them as per-connection spans.

    ``canaryws.span.role`` in ``{"connect", "connection"}`` ⇒ ``RECORD_AND_SAMPLE``
    (whatever the parent's decision); anything else ⇒ ``delegate``. If ``delegate`` is
    the SDK's ``ALWAYS_OFF`` nothing is sampled: an operator who turned tracing off gets
    no spans at all. The cost over the delegate is one dict lookup per span.
    """

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate
        self._tracing_off = delegate is ALWAYS_OFF or (delegate.get_description() == ALWAYS_OFF.get_description())
        self.batch_ratio: float | None = 0.0 if self._tracing_off else root_ratio(delegate)
        """The share of batch spans (root spans) the delegate samples, when known; None otherwise.

        When known, the batch loop draws a batch's sampling decision itself, before any span
        exists (no trace id, no span object, no link for the 99 % of batches a 1 % ratio
        drops), and starts the sampled ones with :data:`PRESAMPLED_BATCH_ROLE`, which this
        sampler records. The share sampled is the same as the delegate's; only the draw
        moved (a batch span is the root of its own trace, so nothing else depends on it).
        """

    @property
    def delegate(self) -> Sampler:
        return self._delegate

    @property
    def tracing_off(self) -> bool:
        """The delegate samples nothing (``always_off``): no spans at all, connection spans included."""
        return self._tracing_off

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if attributes and not self._tracing_off:
            role = attributes.get(ROLE_ATTRIBUTE)
            if role == PRESAMPLED_BATCH_ROLE:
                recorded = dict(attributes)
                recorded[ROLE_ATTRIBUTE] = "batch"
                return SamplingResult(Decision.RECORD_AND_SAMPLE, recorded)
            if role.__class__ is str and role in CONNECTION_ROLES:
                parent = get_current_span(parent_context).get_span_context()
                return SamplingResult(
                    Decision.RECORD_AND_SAMPLE,
                    attributes,
                    parent.trace_state if parent.is_valid else None,
                )
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        roles = "/".join(sorted(CONNECTION_ROLES))
        if self._tracing_off:
            return f"ConnectionSpansSampler{{off: {self._delegate.get_description()}}}"
        return (
            f"ConnectionSpansSampler{{{ROLE_ATTRIBUTE}={roles}: always sampled; "
            f"others: {self._delegate.get_description()}}}"
        )


def root_ratio(sampler: Sampler) -> float | None:
    """The share of root spans (spans without a parent) ``sampler`` samples, for the SDK's
    fixed and ratio samplers (parent-based or not); None for any other sampler."""
    if sampler is ALWAYS_ON or sampler is DEFAULT_ON:
        return 1.0
    if sampler is ALWAYS_OFF or sampler is DEFAULT_OFF:
        return 0.0
    if isinstance(sampler, TraceIdRatioBased):
        return sampler.rate
    if isinstance(sampler, ParentBased):
        # No public accessor of the root: the SDK's private attribute (docs/dependencies.md;
        # tests/unit/test_sampling.py pins it).
        root = getattr(sampler, "_root", None)
        return root_ratio(root) if isinstance(root, Sampler) else None
    return None


def sampler_from_environ(environ: Mapping[str, str]) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` ask for.

    Same names, default (``parentbased_always_on``) and fallbacks as the SDK's own
    ``opentelemetry.sdk.trace.sampling._get_from_env_or_default``, but read from
    ``environ`` instead of ``os.environ``: an unknown name warns and uses the default; a
    ratio that is missing, not a number or outside [0, 1] warns and uses 1.0.
    """
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name in _FIXED_SAMPLERS:
        return _FIXED_SAMPLERS[name]
    if name in _RATIO_SAMPLERS:
        factory = TraceIdRatioBased if name == "traceidratio" else ParentBasedTraceIdRatio
        raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "")
        try:
            return factory(float(raw))
        except ValueError:  # not a number, or outside [0, 1]
            _logger.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a ratio in [0, 1]; using 1.0", raw)
            return factory(1.0)
    _logger.warning("OTEL_TRACES_SAMPLER=%r is not supported; using parentbased_always_on", name)
    return DEFAULT_ON
