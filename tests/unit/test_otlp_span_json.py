"""``encode_span_json`` (the bytes the service writes for a span) against its readable
specification, ``msgspec.json.encode(_encode_span(span))``: byte for byte, for any span the
SDK, ``RecordedSpan`` or a hand-built ``ReadableSpan`` can hold."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from canaryws.adapters.telemetry import otlp_json_encoder
from canaryws.adapters.telemetry.connection_spans import ConnectionSpans
from canaryws.adapters.telemetry.otlp_json_encoder import _encode_span, encode_span_json, pre_encode
from canaryws.adapters.telemetry.sampling import ConnectionSpansSampler


def reference(span: ReadableSpan) -> bytes:
    return msgspec.json.encode(_encode_span(span))


keys = st.one_of(st.sampled_from(["canaryws.role", "canaryws.summary.batches", "k", "", "é\"\\\n"]),
                 st.text(max_size=12))
scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.binary(max_size=8),
)
values = st.one_of(scalars, st.lists(st.one_of(st.integers(0, 2**40), st.text(max_size=5)), max_size=4).map(tuple),
                   st.dictionaries(st.text(max_size=5), st.integers(0, 99), max_size=3))
attribute_maps = st.dictionaries(keys, values, max_size=8)
ids = st.integers(min_value=1, max_value=2**64 - 1)
trace_states = st.one_of(st.just(TraceState()), st.just(TraceState([("vendor", "v1"), ("other", "x-2")])))
contexts = st.builds(lambda t, s, remote, state: SpanContext(t, s, remote, TraceFlags(1), state),
                     st.integers(min_value=1, max_value=2**128 - 1), ids, st.booleans(), trace_states)
events = st.builds(lambda name, attrs, ts: Event(name, attrs, ts), st.text(max_size=8),
                   st.one_of(st.none(), attribute_maps), st.integers(min_value=0, max_value=2**63))
links = st.builds(lambda context, attrs: Link(context, attrs), contexts, st.one_of(st.none(), attribute_maps))
statuses = st.one_of(st.just(Status(StatusCode.UNSET)), st.just(Status(StatusCode.OK)),
                     st.builds(lambda d: Status(StatusCode.ERROR, d), st.one_of(st.none(), st.text(max_size=10))))


@st.composite
def spans(draw: Any) -> ReadableSpan:
    bounded = draw(st.booleans())
    attributes = draw(attribute_maps)
    return ReadableSpan(
        name=draw(st.text(max_size=12)),
        context=draw(contexts),
        parent=draw(st.one_of(st.none(), contexts)),
        resource=Resource.create({"service.name": "canaryws"}),
        attributes=BoundedAttributes(maxlen=3, attributes=attributes) if bounded else attributes,
        events=draw(st.lists(events, max_size=3)),
        links=draw(st.lists(links, max_size=2)),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(statuses),
        start_time=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2**63))),
        end_time=draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2**63))),
    )


@settings(max_examples=400, deadline=None)
@given(spans())
@example(ReadableSpan(name="", context=SpanContext(1, 2, False)))  # nothing but the ids
def test_the_bytes_are_the_documents_encoding(span: ReadableSpan) -> None:
    try:
        expected = reference(span)
    except (TypeError, ValueError, msgspec.EncodeError) as error:  # e.g. a lone surrogate
        with pytest.raises(type(error)):
            encode_span_json(span)
        return
    assert encode_span_json(span) == expected


def test_an_attribute_of_no_otlp_kind_is_skipped_alike(caplog: pytest.LogCaptureFixture) -> None:
    span = ReadableSpan(name="s", context=SpanContext(1, 2, False),
                        attributes={"ok": 1, "bad": object(), "also": "x"})
    with caplog.at_level(logging.WARNING, logger="canaryws.telemetry"):
        assert encode_span_json(span) == reference(span)
    assert b'"bad"' not in encode_span_json(span)
    assert "'bad' not exported" in caplog.text


def test_the_connection_spans_encode_as_the_reference_and_as_the_sdk_would() -> None:
    """The two spans of every connection (RecordedSpan, with its cheaper dropped_* and events)."""
    provider = TracerProvider(sampler=ConnectionSpansSampler(TraceIdRatioBased(0.01)), shutdown_on_exit=False)
    tracer = provider.get_tracer("canaryws.records")
    spans = ConnectionSpans.of(tracer)
    assert spans is not None
    connect = spans.start("records.connect", {"canaryws.role": "connect", "canaryws.client.id": "c-1"})
    connect.add_event("feature_flag.evaluation", {"feature_flag.key": "records.strict",
                                                  "feature_flag.result.value": True, "feature_flag.version": 3})
    connect.end()
    summary = spans.start("records.connection", {"canaryws.role": "connection", "canaryws.summary.batches": 7,
                                                 "canaryws.latency.buckets": (0, 1, 2)},
                          links=[Link(connect.get_span_context())])
    summary.set_status(Status(StatusCode.ERROR, "close code 1011"))
    summary.end()
    for span in (connect, summary):
        assert isinstance(span, ReadableSpan)
        assert (span.dropped_attributes, span.dropped_events, span.dropped_links) == (0, 0, 0)
        assert encode_span_json(span) == reference(span)
        assert bytes(memoryview(pre_encode(span)._canaryws_otlp_json)) == encode_span_json(span)  # type: ignore[attr-defined]


def test_attribute_name_prefixes_stay_bounded() -> None:
    many = {f"k{i}": i for i in range(otlp_json_encoder._PREFIXES_MAX + 10)}
    span = ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes=many)
    assert encode_span_json(span) == reference(span)
    assert len(otlp_json_encoder._INT_PREFIX) <= otlp_json_encoder._PREFIXES_MAX


def _encoded(attributes: dict[str, Any]) -> bytes:
    span = ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes=attributes)
    assert encode_span_json(span) == reference(span)
    return encode_span_json(span)


def test_remembered_attributes_keep_each_kind_and_spelling_apart() -> None:
    """True == 1 == 1.0 and 0.0 == -0.0 as dict keys: each is still written as itself, in
    either order, first time and remembered."""
    for values in ([True, 1, 1.0, "1"], [1.0, 1, True], [-0.0, 0.0, -0.0], [0.0, -0.0], [float("nan")] * 2):
        for _ in range(2):
            for value in values:
                assert _encoded({"canaryws.kinds": value}) == reference(
                    ReadableSpan(name="s", context=SpanContext(1, 2, False), attributes={"canaryws.kinds": value}))
    assert _encoded({"canaryws.kinds": -0.0}).count(b"-0.0") == 1


def test_remembered_attributes_stay_bounded_and_ids_are_not_kept() -> None:
    """A name with more values than are kept per name (an id) is built each time; all names
    together keep at most _REMEMBERED_MAX values."""
    e = otlp_json_encoder
    for n in range(e._VALUES_PER_NAME + 5):
        assert b'"c-%d"' % n in _encoded({"canaryws.connection.id": f"c-{n}", "canaryws.role": "connect"})
    assert e._STRING_ENCODED["canaryws.connection.id"] is e._MANY and not e._MANY
    role = b'{"key":"canaryws.role","value":{"stringValue":"connect"}}'
    assert e._STRING_ENCODED["canaryws.role"] == {"connect": role}
    for n in range(e._REMEMBERED_MAX // 8 + 10):
        _encoded({f"n{n}-{k}": k for k in range(10)})
        assert e._remembered <= e._REMEMBERED_MAX
    kept = sum(len(values) for kind in (e._STRING_ENCODED, e._INT_ENCODED, e._BOOL_ENCODED, e._FLOAT_ENCODED)
               for values in kind.values())
    assert kept == e._remembered <= e._REMEMBERED_MAX
