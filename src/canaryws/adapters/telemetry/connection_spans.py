"""The two per-connection spans, recorded without the SDK's per-span machinery.

Every connection has a ``records.connect`` and at least one ``records.connection`` span,
both always recorded (:mod:`canaryws.adapters.telemetry.sampling`). Through the SDK's
``Tracer.start_span`` each cost 40-60 µs of the connection's life: the sampler call, a
``BoundedAttributes`` copy that checks every attribute one by one, a lock taken on every
change, the span processors' ``on_start``. Their attributes are canaryws' own (strings,
ints, floats, booleans, one tuple of ints), built fresh for the span, so none of that
checking can change them.

:class:`ConnectionSpans` makes them as :class:`RecordedSpan`: an
``opentelemetry.trace.Span`` (usable with ``trace.use_span``, current for log correlation,
recording exceptions as the SDK does) that is also the SDK's ``ReadableSpan``, handed to
the tracer's span processors (``on_end``) when it ends: the exporters get what the SDK
would have given them, the same ids, flags, trace state, resource, scope, attributes,
events, links, status and times (tests/unit/test_connection_spans.py compares the two).

It is only used where that holds (:meth:`ConnectionSpans.of`): the SDK's tracer, with
:class:`~canaryws.adapters.telemetry.sampling.ConnectionSpansSampler` recording these spans,
and span limits that leave them alone (no attribute length limit, room for 128 attributes
and events). Otherwise the spans go through ``Tracer.start_span`` as before. What differs:
the span processors' ``on_start`` is not called for these spans (no processor canaryws
configures uses it), and the SDK's own span metrics (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``)
do not count them.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, Tracer
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types

from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler

__all__ = ["ConnectionSpans", "RecordedSpan"]

_UNSET = Status(StatusCode.UNSET)
_LIMIT_NEEDED = 128  # attributes and events a connection span may carry without a limit applying
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)


class RecordedSpan(trace_api.Span, ReadableSpan):
    """A recording span that reaches the span processors when it ends (see the module).

    Not thread-safe (the SDK's span takes a lock on every change): one event-loop task
    makes, changes and ends it."""

    def __init__(self, spans: ConnectionSpans, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], links: Sequence[Link], start_time: int) -> None:
        # ReadableSpan's fields, set directly (its __init__ would build an empty Resource first)
        self._name = name
        self._context = self._span_context = context
        self._kind = kind
        self._instrumentation_info = spans.instrumentation_info
        self._instrumentation_scope = spans.scope
        self._parent = parent
        self._start_time = start_time
        self._end_time: int | None = None
        self._attributes = self._recorded = attributes  # the same dict: ReadableSpan's view, and ours
        self._events: list[Event] = []
        self._links = links
        self._resource = spans.resource
        self._status = _UNSET
        self._processor = spans.processor

    def get_span_context(self) -> SpanContext:
        return self._span_context

    # ReadableSpan's, without its isinstance checks against the SDK's bounded containers (ABCs):
    # nothing is ever dropped from a plain dict and list, which is what they answer here too.
    @property
    def dropped_attributes(self) -> int:
        return 0

    @property
    def dropped_events(self) -> int:
        return 0

    @property
    def dropped_links(self) -> int:
        return 0

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events)  # ReadableSpan's copies them one by one through a generator

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self._end_time is None:
            self._recorded.update(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end_time is None:
            self._recorded[key] = value

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, dict(attributes) if attributes else None,
                                      time.time_ns() if timestamp is None else timestamp))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK's: OK is final, UNSET is ignored."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """An ``exception`` event with the SDK's attributes."""
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = time.time_ns() if end_time is None else end_time
        self._processor.on_end(self)


class ConnectionSpans:
    """Starts :class:`RecordedSpan` for one SDK tracer (see the module)."""

    def __init__(self, tracer: Tracer) -> None:
        self.processor: SpanProcessor = tracer.span_processor
        self.resource = tracer.resource
        self.instrumentation_info = tracer.instrumentation_info
        self.scope = tracer._instrumentation_scope  # private; pinned by tests/unit/test_connection_spans.py
        self._tracer = tracer
        self._ids = tracer.id_generator
        self._random_ids = tracer.id_generator.is_trace_id_random()

    @classmethod
    def of(cls, tracer: trace_api.Tracer) -> ConnectionSpans | None:
        """For the SDK's tracer whose sampler records connection spans and whose limits leave
        them unchanged; None otherwise (the spans then go through ``start_span``)."""
        if not isinstance(tracer, Tracer):
            return None
        sampler = tracer.sampler
        if not isinstance(sampler, ConnectionSpansSampler) or sampler.tracing_off:
            return None
        limits = getattr(tracer, "_span_limits", None)
        if limits is None or limits.max_attribute_length is not None or limits.max_span_attribute_length is not None:
            return None
        counts = (limits.max_span_attributes, limits.max_events, limits.max_event_attributes, limits.max_links)
        if any(n is not None and n < _LIMIT_NEEDED for n in counts):
            return None
        if getattr(tracer, "_instrumentation_scope", None) is None:
            return None
        return cls(tracer)

    def start(self, name: str, attributes: dict[str, Any], *, parent: SpanContext | None = None,
              links: Sequence[Link] = (), start_time: int | None = None) -> trace_api.Span:
        """A recording span of kind SERVER, as the sampler would sample it: a new trace, or
        ``parent``'s (and its trace state) when valid. ``attributes`` becomes the span's own.
        A tracer disabled by its configurator gives a non-recording span, as ``start_span`` does."""
        if parent is not None and not parent.is_valid:
            parent = None
        if not self._tracer._is_enabled():  # private; pinned by the tests, like the scope
            return trace_api.NonRecordingSpan(parent or trace_api.INVALID_SPAN_CONTEXT)
        if parent is None:
            context = SpanContext(self._ids.generate_trace_id(), self._ids.generate_span_id(), False,
                                  _SAMPLED_RANDOM if self._random_ids else _SAMPLED)
        else:
            random_id = parent.trace_flags.random_trace_id
            context = SpanContext(parent.trace_id, self._ids.generate_span_id(), False,
                                  _SAMPLED_RANDOM if random_id else _SAMPLED, parent.trace_state)
        return RecordedSpan(self, name, context, parent, SpanKind.SERVER, attributes, links,
                            time.time_ns() if start_time is None else start_time)
