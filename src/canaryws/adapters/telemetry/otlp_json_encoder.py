"""OTLP/JSON encoding of SDK spans: one ``ExportTraceServiceRequest`` document.

The document has exactly the shape the OpenTelemetry Collector's ``file`` exporter
writes (``{"resourceSpans":[...]}``): camelCase field names, trace/span ids as
lowercase hex, enums as integers, 64-bit integers as decimal strings, fields holding
their default value left out (the OTLP/JSON encoding of the OTLP specification).

It is built directly from the SDK's ``ReadableSpan`` objects rather than through
``encode_spans`` + ``json_format.MessageToDict``: the result is the same (a unit test
checks it against the SDK encoder, ids aside) at a fraction of the cost, which is paid
on the batch processor's thread but under the GIL. :func:`pre_encode` (each sampled span as
it ends) writes the same span's bytes directly (:func:`encode_span_json`, checked byte for
byte against the document's encoding). The file exporter
(:mod:`canaryws.adapters.telemetry.file_exporter`) writes these documents, and
:mod:`canaryws.adapters.telemetry.otlp_json_reader` reads them back.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

__all__ = ["encode_otlp_json", "encode_span_json", "pre_encode"]

_logger = logging.getLogger("canaryws.telemetry")

# OTLP `Span.SpanKind` numbers (SPAN_KIND_UNSPECIFIED = 0 is never produced by the SDK).
_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# `SpanFlags`: the SDK's OTLP encoder always sets HAS_IS_REMOTE, plus IS_REMOTE when
# the parent (or linked) context is remote.
_FLAG_HAS_IS_REMOTE = 0x100
_FLAG_IS_REMOTE = 0x200

_JSON = dict[str, Any]

# Where :func:`pre_encode` keeps a span's encoding: an attribute of the ``ReadableSpan``
# object the SDK hands to the span processors (a plain class; no other code reads it).
_PRE_ENCODED = "_canaryws_otlp_json"


def _any_value(value: object) -> _JSON:
    """Encode one attribute value as an OTLP/JSON ``AnyValue``."""
    # Exact type checks first: the common case, cheaper than an isinstance chain.
    cls = value.__class__
    if cls is str:
        return {"stringValue": value}
    if cls is bool:
        return {"boolValue": value}
    if cls is int:
        return {"intValue": str(value)}
    if cls is float:
        return {"doubleValue": _double(value)}  # type: ignore[arg-type]
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": bool(value)}
    if isinstance(value, str):
        return {"stringValue": str(value)}
    if isinstance(value, int):
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": _double(float(value))}
    if isinstance(value, bytes | bytearray):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        values = [_any_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        kvs = [_key_value(str(k), v) for k, v in value.items()]
        return {"kvlistValue": {"values": kvs} if kvs else {}}
    raise TypeError(f"unsupported attribute value type {cls.__name__}")


def _double(value: float) -> float | str:
    # proto3 JSON spells non-finite doubles as strings; JSON itself has no NaN/Infinity.
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _key_value(key: str, value: object) -> _JSON:
    if key:
        return {"key": key, "value": _any_value(value)}
    return {"value": _any_value(value)}


def _attributes(attributes: Mapping[str, object] | None) -> list[_JSON]:
    if not attributes:
        return []
    out: list[_JSON] = []
    append = out.append
    for key, value in attributes.items():
        # the common kinds inline (= _key_value; a connection summary has about 25 attributes)
        cls = value.__class__
        if key and cls is str:
            append({"key": key, "value": {"stringValue": value}})
        elif key and cls is int:
            append({"key": key, "value": {"intValue": str(value)}})
        elif key and cls is bool:
            append({"key": key, "value": {"boolValue": value}})
        else:
            try:
                append(_key_value(key, value))
            except TypeError as error:  # mirrors the SDK encoder: skip the attribute, keep the span
                _logger.warning("span attribute %r not exported: %s", key, error)
    return out


def _trace_state(context: SpanContext) -> str:
    state = context.trace_state
    if not state:
        return ""
    return ",".join(f"{key}={value}" for key, value in state.items())


def _span_flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE
    return _FLAG_HAS_IS_REMOTE


def _encode_span(span: ReadableSpan) -> _JSON:
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    out: _JSON = {
        "traceId": f"{context.trace_id:032x}",
        "spanId": f"{context.span_id:016x}",
    }
    trace_state = _trace_state(context)
    if trace_state:
        out["traceState"] = trace_state
    parent = span.parent
    if parent is not None and parent.span_id:
        out["parentSpanId"] = f"{parent.span_id:016x}"
    if span.name:
        out["name"] = span.name
    out["kind"] = _KIND.get(span.kind, 0)
    if span.start_time:
        out["startTimeUnixNano"] = str(span.start_time)
    if span.end_time:
        out["endTimeUnixNano"] = str(span.end_time)
    attributes = _attributes(span.attributes)
    if attributes:
        out["attributes"] = attributes
    if span.dropped_attributes:
        out["droppedAttributesCount"] = span.dropped_attributes
    if span.events:
        events: list[_JSON] = []
        for event in span.events:
            encoded: _JSON = {}
            if event.timestamp:
                encoded["timeUnixNano"] = str(event.timestamp)
            if event.name:
                encoded["name"] = event.name
            event_attributes = _attributes(event.attributes)
            if event_attributes:
                encoded["attributes"] = event_attributes
            if event.dropped_attributes:
                encoded["droppedAttributesCount"] = event.dropped_attributes
            events.append(encoded)
        out["events"] = events
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    if span.links:
        links: list[_JSON] = []
        for link in span.links:
            link_context = link.context
            encoded = {
                "traceId": f"{link_context.trace_id:032x}",
                "spanId": f"{link_context.span_id:016x}",
            }
            link_state = _trace_state(link_context)
            if link_state:
                encoded["traceState"] = link_state
            link_attributes = _attributes(link.attributes)
            if link_attributes:
                encoded["attributes"] = link_attributes
            if link.dropped_attributes:
                encoded["droppedAttributesCount"] = link.dropped_attributes
            encoded["flags"] = _span_flags(link_context)
            links.append(encoded)
        out["links"] = links
    if span.dropped_links:
        out["droppedLinksCount"] = span.dropped_links
    status: _JSON = {}
    if span.status.description:
        status["message"] = span.status.description
    if span.status.status_code.value:
        status["code"] = span.status.status_code.value
    out["status"] = status
    out["flags"] = _span_flags(parent)
    return out


def _encode_scope(scope: InstrumentationScope | None) -> _JSON:
    if scope is None:
        return {}
    out: _JSON = {}
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    attributes = _attributes(scope.attributes)
    if attributes:
        out["attributes"] = attributes
    return out


def _encode_resource(resource: Resource) -> _JSON:
    attributes = _attributes(resource.attributes)
    return {"attributes": attributes} if attributes else {}


# -- the same encoding, written as bytes ------------------------------------------------
#
# :func:`encode_span_json` is what the service runs: the bytes ``msgspec.json.encode`` gives
# for :func:`_encode_span`'s document (the readable specification beside it; a hypothesis
# test checks that the two agree byte for byte), written directly. Building the document
# made three dicts per attribute (a connection's two spans carry about 40): ~10 µs per span
# and garbage for the collector, on the event loop, for every connection.

_encode = msgspec.json.encode
_KIND_NUMBER = {id(kind): number for kind, number in _KIND.items()}  # by identity: an Enum hashes in Python
_STATUS_NUMBER = {id(code): code.value for code in StatusCode}
_STRING_PREFIX: dict[str, bytes] = {}
_INT_PREFIX: dict[str, bytes] = {}
_BOOL_PREFIX: dict[str, bytes] = {}
_PREFIXES_MAX = 4096  # attribute names kept per kind; beyond that (never in canaryws) they start again


def _prefix(cache: dict[str, bytes], key: str, kind: bytes) -> bytes:
    prefix = cache.get(key)
    if prefix is None:
        if len(cache) >= _PREFIXES_MAX:
            cache.clear()
        prefix = cache[key] = b'{"key":' + _encode(key) + b',"value":{"' + kind + b'":'
    return prefix


# Whole attributes remembered: most of a connection's two spans repeat from one connection to
# the next (the role, the cohort, the flag evaluations, the zero counts: about 30 of 38), so
# their bytes are looked up instead of built. Per kind of value (True == 1 == 1.0 in a dict),
# then per name: at most _VALUES_PER_NAME values of a name are kept; a name that has more (an
# id) is marked _MANY and its values are built each time, as before. At most _REMEMBERED_MAX
# entries in all (names come from the code and the instrumentations, never from a client):
# beyond that every kind starts again. (The event loop's thread ends nearly every span; another
# thread's race can only miscount the total by a few.)
_STRING_ENCODED: dict[str, dict[Any, bytes]] = {}
_INT_ENCODED: dict[str, dict[Any, bytes]] = {}
_BOOL_ENCODED: dict[str, dict[Any, bytes]] = {}
_FLOAT_ENCODED: dict[str, dict[Any, bytes]] = {}
_NONE: dict[Any, bytes] = {}  # a name not seen yet (never written)
_MANY: dict[Any, bytes] = {}  # a name with too many values to keep (never written)
_VALUES_PER_NAME = 64
_REMEMBERED_MAX = 4096
_remembered = 0


def _remember(cache: dict[str, dict[Any, bytes]], key: str, value: object, encoded: bytes) -> bytes:
    """``encoded`` (the attribute ``key``: ``value``), kept in ``cache`` if there is room."""
    global _remembered
    values = cache.get(key)
    if values is _MANY:
        return encoded
    if values is None:
        if _remembered >= _REMEMBERED_MAX:
            for kind in (_STRING_ENCODED, _INT_ENCODED, _BOOL_ENCODED, _FLOAT_ENCODED):
                kind.clear()
            _remembered = 0
        values = cache[key] = {}
    elif len(values) >= _VALUES_PER_NAME:
        cache[key] = _MANY
        _remembered -= len(values)
        return encoded
    values[value] = encoded
    _remembered += 1
    return encoded


def _attributes_json(attributes: Mapping[str, object]) -> bytes:
    """:func:`_attributes`' list items, comma-separated (empty when there are none)."""
    parts: list[bytes] = []
    append = parts.append
    for key, value in attributes.items():
        cls = value.__class__
        if key and cls is str:
            encoded = _STRING_ENCODED.get(key, _NONE).get(value)
            if encoded is None:
                encoded = _remember(_STRING_ENCODED, key, value, (_STRING_PREFIX.get(key) or _prefix(
                    _STRING_PREFIX, key, b"stringValue")) + _encode(value) + b"}}")
            append(encoded)
        elif key and cls is int:
            encoded = _INT_ENCODED.get(key, _NONE).get(value)
            if encoded is None:
                encoded = _remember(_INT_ENCODED, key, value, (_INT_PREFIX.get(key) or _prefix(
                    _INT_PREFIX, key, b"intValue")) + b'"%d"}}' % value)  # type: ignore[str-format]  # (an int: cls is int)
            append(encoded)
        elif key and cls is bool:
            encoded = _BOOL_ENCODED.get(key, _NONE).get(value)
            if encoded is None:
                encoded = _remember(_BOOL_ENCODED, key, value, (_BOOL_PREFIX.get(key) or _prefix(
                    _BOOL_PREFIX, key, b"boolValue")) + (b"true}}" if value else b"false}}"))
            append(encoded)
        elif key and cls is float:
            encoded = _FLOAT_ENCODED.get(key, _NONE).get(value)
            if encoded is None:
                encoded = _encode(_key_value(key, value))
                if value:  # (0.0 == -0.0, written differently: zeros are not kept)
                    _remember(_FLOAT_ENCODED, key, value, encoded)
            append(encoded)
        else:
            try:
                append(_encode(_key_value(key, value)))
            except TypeError as error:  # as _attributes: skip the attribute, keep the span
                _logger.warning("span attribute %r not exported: %s", key, error)
    return b",".join(parts)


def _status_json(span: ReadableSpan) -> bytes:
    status = span.status
    message = status.description
    code = _STATUS_NUMBER.get(id(status.status_code))
    if code is None:  # not a StatusCode member: as the document does
        code = status.status_code.value
    if message:
        return b',"status":{"message":' + _encode(message) + (b',"code":%d}' % code if code else b"}")
    return b',"status":{"code":%d}' % code if code else b',"status":{}'


def encode_span_json(span: ReadableSpan) -> bytes:
    """``msgspec.json.encode(_encode_span(span))``, written directly (see above)."""
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    out = [b'{"traceId":"%032x","spanId":"%016x"' % (context.trace_id, context.span_id)]
    append = out.append
    if context.trace_state:
        trace_state = _trace_state(context)
        if trace_state:
            append(b',"traceState":' + _encode(trace_state))
    parent = span.parent
    if parent is not None and parent.span_id:
        append(b',"parentSpanId":"%016x"' % parent.span_id)
    name = span.name
    if name:
        append(b',"name":' + _encode(name))
    kind = _KIND_NUMBER.get(id(span.kind))
    append(b',"kind":%d' % (_KIND.get(span.kind, 0) if kind is None else kind))
    if span.start_time:
        append(b',"startTimeUnixNano":"%d"' % span.start_time)
    if span.end_time:
        append(b',"endTimeUnixNano":"%d"' % span.end_time)
    attributes = span.attributes
    if attributes:
        encoded = _attributes_json(attributes)
        if encoded:
            append(b',"attributes":[' + encoded + b"]")
    dropped = span.dropped_attributes
    if dropped:
        append(b',"droppedAttributesCount":%d' % dropped)
    events = span.events
    if events:
        opening = b',"events":[{'
        for event in events:
            append(opening)
            opening = b",{"
            comma = b""
            if event.timestamp:
                append(b'"timeUnixNano":"%d"' % event.timestamp)
                comma = b","
            if event.name:
                append(comma + b'"name":' + _encode(event.name))
                comma = b","
            event_attributes = event.attributes
            if event_attributes:
                encoded = _attributes_json(event_attributes)
                if encoded:
                    append(comma + b'"attributes":[' + encoded + b"]")
                    comma = b","
            if event.dropped_attributes:
                append(comma + b'"droppedAttributesCount":%d' % event.dropped_attributes)
            append(b"}")
        append(b"]")
    if span.dropped_events:
        append(b',"droppedEventsCount":%d' % span.dropped_events)
    links = span.links
    if links:
        opening = b',"links":[{'
        for link in links:
            append(opening)
            opening = b",{"
            link_context = link.context
            append(b'"traceId":"%032x","spanId":"%016x"' % (link_context.trace_id, link_context.span_id))
            link_state = _trace_state(link_context)
            if link_state:
                append(b',"traceState":' + _encode(link_state))
            link_attributes = link.attributes
            if link_attributes:
                encoded = _attributes_json(link_attributes)
                if encoded:
                    append(b',"attributes":[' + encoded + b"]")
            if link.dropped_attributes:
                append(b',"droppedAttributesCount":%d' % link.dropped_attributes)
            append(b',"flags":%d}' % _span_flags(link_context))
        append(b"]")
    if span.dropped_links:
        append(b',"droppedLinksCount":%d' % span.dropped_links)
    append(_status_json(span))
    append(b',"flags":%d}' % _span_flags(parent))
    return b"".join(out)


class EncodedSpan(ReadableSpan):
    """What the trace file's export queue holds of a span :func:`pre_encode` encoded: its
    encoding, resource, scope, name, ids and times, without its attributes, events and links.

    A span waits in the queue until its batch is exported (up to 512 spans, or the schedule
    delay). Queued whole, a connection's two spans and what they hold (attribute dicts,
    events, links, their contexts, about 15 objects) were carried through the garbage
    collector's generations meanwhile; this is one object and the span's context. Only the
    file exporter's processor queues it, and that exporter reads nothing else of it."""

    def __init__(self, span: ReadableSpan, encoded: msgspec.Raw) -> None:
        # ReadableSpan's fields, set directly (its __init__ would build an empty Resource)
        self._name = span.name
        self._context = span.context
        self._kind = span.kind
        self._parent = span.parent
        self._start_time = span.start_time
        self._end_time = span.end_time
        self._resource = span.resource
        self._instrumentation_scope = span.instrumentation_scope
        self._instrumentation_info = None
        self._attributes = None
        self._events = ()
        self._links = ()
        self._status = span.status
        setattr(self, _PRE_ENCODED, encoded)


def pre_encode(span: ReadableSpan) -> ReadableSpan:
    """Encode ``span`` now, on the thread that ends it: the :class:`EncodedSpan` to queue in
    its place, whose encoding :func:`encode_otlp_json` then only places; ``span`` itself
    when it cannot be encoded.

    Why: the batch span processor's thread otherwise encodes a whole export (up to 512
    spans, about 10 µs each) in one go under the GIL, and the event loop waits for the GIL
    for up to a switch interval (5 ms) at a time until it is done: the answers of that
    moment take 5 ms longer, which is the service's p99.9 (docs/benchmarks.md, "The tail").
    Encoded on the thread ending the spans (the processor groups them,
    :data:`canaryws.adapters.telemetry.export_health.ENCODE_GROUP` at a time), the same work
    comes in slices of well under a millisecond. A span this cannot encode is left to the
    exporter, which counts it as dropped and says why: ending a span never raises.
    """
    try:
        return EncodedSpan(span, msgspec.Raw(encode_span_json(span)))
    except (TypeError, ValueError, msgspec.EncodeError):
        return span


def encode_otlp_json(spans: Sequence[ReadableSpan]) -> _JSON:
    """Build the OTLP/JSON ``ExportTraceServiceRequest`` document for ``spans``.

    A span :func:`pre_encode` encoded goes in as its ``msgspec.Raw`` JSON, the same bytes.

    Spans are grouped by resource, then by instrumentation scope, in first-seen order,
    exactly as the SDK's OTLP encoder groups them.
    """
    # Grouped by object identity: spans of one provider share their Resource and scope
    # objects, and hashing a Resource serialises all of its attributes.
    resources: dict[int, Resource] = {}
    scopes: dict[int, InstrumentationScope | None] = {}
    grouped: dict[int, dict[int, list[_JSON | msgspec.Raw]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        by_scope = grouped.get(id(resource))
        if by_scope is None:
            by_scope = grouped[id(resource)] = {}
            resources[id(resource)] = resource
        encoded = by_scope.get(id(scope))
        if encoded is None:
            encoded = by_scope[id(scope)] = []
            scopes[id(scope)] = scope
        encoded.append(getattr(span, _PRE_ENCODED, None) or _encode_span(span))
    resource_spans: list[_JSON] = []
    for resource_key, by_scope in grouped.items():
        resource = resources[resource_key]
        scope_spans: list[_JSON] = []
        for scope_key, encoded_spans in by_scope.items():
            scope = scopes[scope_key]
            entry: _JSON = {"scope": _encode_scope(scope), "spans": encoded_spans}
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        resource_entry: _JSON = {
            "resource": _encode_resource(resource),
            "scopeSpans": scope_spans,
        }
        if resource.schema_url:
            resource_entry["schemaUrl"] = resource.schema_url
        resource_spans.append(resource_entry)
    return {"resourceSpans": resource_spans}

