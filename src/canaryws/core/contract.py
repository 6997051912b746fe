"""Contract v1: the messages clients and the service exchange over ``/records``.

Pure: decoding and encoding of JSON text frames, and the error codes. The per-batch
path is one typed msgspec decode (validation included) and one encode; malformed
frames are classified on a slower path that only errors pay for.

**What a frame can cost.** Only a record's *kind* matters when it is not a string or
null (it is ``not_a_string`` whatever it holds), so such records are never built: a batch
of strings and nulls is decoded in one typed pass (:data:`_string_batch`); a batch with
anything else is decoded with its records as raw JSON slices (syntax checked, nothing
built), its strings decoded in one more pass and every other record replaced by
:data:`NOT_A_STRING`. Without this, a 1 MiB frame of nested arrays cost about 140 ms to
decode and one of 170,000 ``1e300`` numbers 1.3 s; now about 6 ms and 1 ms
(docs/benchmarks.md, "Worst-case frames"). Classifying a malformed frame reads its top
level the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from canaryws.core.cohorts import Cohort
from canaryws.core.strategies.outcome import Outcome

PROTOCOL_V1: Final = "canaryws.records.v1"
SUPPORTED_PROTOCOLS: Final = (PROTOCOL_V1,)

# Error codes of ``{"type":"error"}`` frames; none of them ends the connection.
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
TOO_MANY_RECORDS: Final = "too_many_records"
DUPLICATE_ID: Final = "duplicate_id"
ERROR_CODES: Final = (INVALID_JSON, INVALID_MESSAGE, UNKNOWN_TYPE, TOO_MANY_RECORDS, DUPLICATE_ID)

CLIENT_MESSAGE_TYPES: Final = ("batch",)
MAX_BATCH_ID_LENGTH: Final = 256
DEFAULT_MAX_RECORDS: Final = 10_000

BatchId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BATCH_ID_LENGTH)]


class NotAString:
    """What a record that is neither a string nor null decodes to: its value is never
    needed (contract v1 calls it ``not_a_string``), so it is never built."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_A_STRING"


NOT_A_STRING: Final = NotAString()


class Batch(msgspec.Struct, frozen=True):
    """``{"type":"batch","id":"b-1","records":[...]}``; records are any JSON values,
    decoded as strings, None, or :data:`NOT_A_STRING` for anything else.

    ``type`` is a required field (not a msgspec tag, which would make it optional).
    """

    type: Literal["batch"]
    id: BatchId
    records: list[str | None]


class _RawBatch(msgspec.Struct, frozen=True):
    type: Literal["batch"]
    id: BatchId
    records: list[msgspec.Raw]


class MessageError(Exception):
    """A client frame that gets an error frame (the connection stays open)."""

    def __init__(self, code: str, detail: str, batch_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.batch_id = batch_id


_string_batch = msgspec.json.Decoder(Batch)
_raw_batch = msgspec.json.Decoder(_RawBatch)
_strings = msgspec.json.Decoder(list[str])
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_raw_value = msgspec.json.Decoder(msgspec.Raw)
_encoder = msgspec.json.Encoder()
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)  # too deep


def decode_batch(frame: str | bytes, max_records: int = DEFAULT_MAX_RECORDS) -> Batch:
    """Decode a client text frame into a :class:`Batch` or raise :class:`MessageError`."""
    try:
        batch = _string_batch.decode(frame)
    except msgspec.ValidationError:  # a record that is not a string or null, or a bad message
        batch = _decode_raw(frame, max_records)
    except _DECODE_ERRORS as exc:
        raise _classify(frame, exc) from None
    if len(batch.records) > max_records:
        raise _too_many(len(batch.records), max_records, batch.id)
    return batch


def _decode_raw(frame: str | bytes, max_records: int) -> Batch:
    """The batch with its records as raw slices: strings decoded in one pass, the rest
    :data:`NOT_A_STRING` (never parsed into values)."""
    try:
        raw = _raw_batch.decode(frame)
    except _DECODE_ERRORS as exc:
        raise _classify(frame, exc) from None
    if len(raw.records) > max_records:
        raise _too_many(len(raw.records), max_records, raw.id)
    records: list[Any] = [NOT_A_STRING] * len(raw.records)
    positions: list[int] = []
    strings: list[msgspec.Raw] = []
    for index, record in enumerate(raw.records):
        first = memoryview(record)[:1].tobytes()
        if first == b'"':
            positions.append(index)
            strings.append(record)
        elif first == b"n":
            records[index] = None
    if strings:
        for index, value in zip(positions, _strings.decode(b"[" + b",".join(strings) + b"]"), strict=True):
            records[index] = value
    return Batch(raw.type, raw.id, records)


def _too_many(count: int, max_records: int, batch_id: str) -> MessageError:
    return MessageError(TOO_MANY_RECORDS, f"batch has {count} records; the limit is {max_records}", batch_id)


def duplicate_id(batch_id: str, window: int) -> MessageError:
    """The error for a batch whose id repeats one of the connection's last ``window`` answered ids."""
    return MessageError(
        DUPLICATE_ID,
        f"batch id {batch_id[:64]!r} was already answered on this connection (ids must be unique among "
        f"the last {window} batches); the batch was not processed",
        batch_id,
    )


def _classify(frame: str | bytes, exc: Exception) -> MessageError:
    """Turn a failed typed decode into the most helpful error frame (reading the top level
    only: the values under it stay raw slices, whatever they hold)."""
    if not isinstance(exc, msgspec.ValidationError):
        return MessageError(INVALID_JSON, f"frame is not valid JSON: {exc}")
    try:
        top = _top_level.decode(frame)
    except msgspec.ValidationError:
        try:
            kind = _kind_of(frame)
        except _DECODE_ERRORS as inner:
            return MessageError(INVALID_JSON, f"frame is not usable JSON: {inner}")
        return MessageError(INVALID_MESSAGE, f"a message is a JSON object, got {kind}")
    except _DECODE_ERRORS as inner:
        # Syntactically JSON but not representable (e.g. nesting too deep).
        return MessageError(INVALID_JSON, f"frame is not usable JSON: {inner}")
    value = {key: _small(raw) for key, raw in top.items() if key in ("id", "type")}
    raw_id = value.get("id")
    batch_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_BATCH_ID_LENGTH else None
    if "type" not in value:
        return MessageError(INVALID_MESSAGE, "message has no `type`", batch_id)
    msg_type = value["type"]
    if not isinstance(msg_type, str):
        return MessageError(INVALID_MESSAGE, f"`type` is a string, got {_json_type(msg_type)}", batch_id)
    if msg_type not in CLIENT_MESSAGE_TYPES:
        return MessageError(
            UNKNOWN_TYPE,
            f"unknown message type {msg_type[:64]!r}; known: {', '.join(CLIENT_MESSAGE_TYPES)}",
            batch_id,
        )
    return MessageError(INVALID_MESSAGE, str(exc)[:200], batch_id)  # msgspec may quote a value (duplicate keys)


def _small(raw: msgspec.Raw) -> Any:
    """A top-level field's value when it is a string or null, else its kind (its value is
    not needed to name the problem, and is never built)."""
    first = memoryview(raw)[:1].tobytes()
    if first in (b'"', b"n"):
        return _any_decoder.decode(raw)
    return _KIND_OF_FIRST.get(first, _NUMBER)


class _Kind:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_NUMBER = _Kind("number")
_KIND_OF_FIRST = {b"[": _Kind("array"), b"{": _Kind("object"), b"t": _Kind("boolean"), b"f": _Kind("boolean")}


def _kind_of(frame: str | bytes) -> str:
    """The kind of a frame that is valid JSON but not an object (raises when it is not valid)."""
    text = frame.encode() if isinstance(frame, str) else frame
    first = text.lstrip(b" \t\r\n")[:1]
    if first in (b'"', b"n"):
        return _json_type(_any_decoder.decode(text))  # small: a string or null
    _raw_value.decode(text)  # valid JSON as a whole (raises otherwise), nothing built
    return _KIND_OF_FIRST.get(first, _NUMBER).name


def _json_type(value: Any) -> str:
    if isinstance(value, _Kind):
        return value.name
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def encode_welcome(*, connection_id: str, client_id: str, cohort: Cohort, protocol: str = PROTOCOL_V1) -> str:
    return _encoder.encode(
        {
            "type": "welcome",
            "protocol": protocol,
            "connection_id": connection_id,
            "client_id": client_id,
            "cohort": cohort.as_wire(),
        }
    ).decode()


def encode_result(batch_id: str, outcome: Outcome) -> str:
    return _encoder.encode(
        {
            "type": "result",
            "id": batch_id,
            "strategy": outcome.strategy,
            "strategy_version": outcome.strategy_version,
            "accepted": [{"index": i, "value": v} for i, v in outcome.accepted],
            "skipped": [{"index": i, "reason": r} for i, r in outcome.skipped],
            "rejected": [{"index": i, "code": c} for i, c in outcome.rejected],
        }
    ).decode()


def encode_cohort_change(cohort: Cohort, reason: str = "flags_changed") -> str:
    return _encoder.encode({"type": "cohort", "cohort": cohort.as_wire(), "reason": reason}).decode()


def encode_error(error: MessageError) -> str:
    return _encoder.encode({"type": "error", "id": error.batch_id, "code": error.code, "detail": error.detail}).decode()


def negotiate_subprotocol(offered: list[str]) -> tuple[bool, str | None]:
    """``(acceptable, chosen)``: no offer means v1 with no subprotocol header;
    offers without a supported version are refused."""
    if not offered:
        return True, None
    for proto in offered:
        if proto in SUPPORTED_PROTOCOLS:
            return True, proto
    return False, None
