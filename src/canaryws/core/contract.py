"""Contracts v1 and v2: the messages clients and the service exchange over ``/records``.

v2 (``canaryws.records.v2``) is v1 plus what a durable persist step needs to say: a
``result`` says whether its batch is committed (``durable``) and whether it is the stored
answer of an earlier send of the same batch (``replay``); the ``welcome`` says whether
results are durable; the error ``unavailable`` (with ``retry_after_ms``) answers a batch
the sink could not commit. A v1 client gets the v1 frames, byte for byte as before; when
the sink is unavailable its connection is closed with 1013 instead (docs/contract.md).

Pure: decoding and encoding of JSON text frames, and the error codes. The per-batch
path is one typed msgspec decode (validation included) and one encode; malformed
frames are classified on a slower path that only errors pay for.

**What a frame can cost.** Only a record's *kind* matters when it is not a string or
null (it is ``not_a_string`` whatever it holds), so such records are never built. A batch
is decoded in one typed pass (:data:`_any_record_batch`) whose records are a string, null,
an int64, a boolean, or an array or object whose contents msgspec skips (an empty
array-like struct, an empty dataclass: syntax checked, nothing built); every record that is
not a string or null is then replaced by :data:`NOT_A_STRING`. Any other number (a
fraction, an exponent, a bigger integer) fails that pass at once, before it is parsed:
parsing one can cost msgspec up to 50 µs (``1e300``; 4,000 digits), 0.5 s for a frame of
them. Such a batch is decoded by the reference path, :func:`decode_batch_by_slices`: its
records as raw JSON slices, its strings decoded in one more pass. The two give the same
batch or the same error code (tests/unit/test_core_speed_equivalence.py); the one pass costs
about a quarter of the slices' on today's benchmark batch (an integer among 30 strings).
Without this, a 1 MiB frame of nested arrays cost about 140 ms to decode and one of 170,000
``1e300`` numbers 1.3 s; now a few ms (docs/benchmarks.md, "Worst-case frames").
Classifying a malformed frame reads its top level the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import starmap
from typing import Annotated, Any, Final, Literal

import msgspec

from canaryws.core.cohorts import Cohort
from canaryws.core.strategies.outcome import Outcome

PROTOCOL_V1: Final = "canaryws.records.v1"
PROTOCOL_V2: Final = "canaryws.records.v2"
SUPPORTED_PROTOCOLS: Final = (PROTOCOL_V2, PROTOCOL_V1)

# Error codes of ``{"type":"error"}`` frames; none of them ends the connection.
INVALID_JSON: Final = "invalid_json"
INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
TOO_MANY_RECORDS: Final = "too_many_records"
DUPLICATE_ID: Final = "duplicate_id"
UNAVAILABLE: Final = "unavailable"
ERROR_CODES: Final = (INVALID_JSON, INVALID_MESSAGE, UNKNOWN_TYPE, TOO_MANY_RECORDS, DUPLICATE_ID, UNAVAILABLE)
ERROR_MEANINGS: Final[dict[str, str]] = {
    INVALID_JSON: "the frame is not JSON (includes NaN/Infinity literals, lone surrogate escapes, invalid UTF-8, "
    "nesting deeper than the decoder allows)",
    INVALID_MESSAGE: "JSON, but not a valid message: not an object, no `type`, `id` not a 1-256 character string, "
    "`records` not an array",
    UNKNOWN_TYPE: "`type` is a string other than `batch`",
    TOO_MANY_RECORDS: "more records than the limit (default 10,000; CANARYWS_MAX_RECORDS)",
    DUPLICATE_ID: "the batch `id` repeats the id of one of the last batches answered with a `result` on this "
    "connection (default 1,024; CANARYWS_DUPLICATE_ID_WINDOW, 0 turns the check off); the batch is not processed, "
    "and ids of batches that got an `error` may be reused",
    UNAVAILABLE: "v2 only: the sink could not commit the batch (down or slow); nothing of it was written. Resend it "
    "under the same id after `retry_after_ms` (a v1 connection is closed with 1013 instead)",
}
"""What each error code means (docs/contract.md, "Frames"; docs/asyncapi.yaml is generated from it)."""


# --- What ends a connection attempt or a connection: the refusals before the upgrade and the close
# codes after it (docs/contract.md, "Endpoint and handshake", "The door", "Closing", "Bad input").
# Data, so that docs/asyncapi.yaml and the tests read one table.


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """An HTTP answer instead of the upgrade, with a JSON body ``{"error": ..., "detail": ...}``."""

    status: int
    error: str
    meaning: str
    retryable: bool  # may the client try again, unchanged (after Retry-After when sent)?
    retry_after: bool = False  # does the answer carry Retry-After?


@dataclass(frozen=True, slots=True)
class CloseCode:
    """A WebSocket close code the service sends, or that a client of the service sees."""

    code: int
    name: str
    meaning: str
    retryable: bool  # should the client reconnect (and resend the batches that got no answer)?


HANDSHAKE_REFUSALS: Final = (
    HandshakeRefusal(400, "unsupported_subprotocol", "the client offered subprotocols, none of them supported "
                     f"(supported: {PROTOCOL_V2}, {PROTOCOL_V1})", retryable=False),
    HandshakeRefusal(400, "duplicate_header", "more than one Authorization or more than one Origin header",
                     retryable=False),
    HandshakeRefusal(401, "missing_token", "no `Authorization: Bearer` header and no `access_token` parameter",
                     retryable=False),
    HandshakeRefusal(401, "invalid_token", "bad signature, altered claims, wrong issuer or audience, expired, or "
                     "revoked (`detail`: expired / not valid / token revoked); get a new token", retryable=False),
    HandshakeRefusal(403, "origin_not_allowed", "an origin allowlist is configured (CANARYWS_ALLOWED_ORIGINS) and "
                     "the Origin header is not on it", retryable=False),
    HandshakeRefusal(408, "header_timeout", "the request line and headers were not complete within "
                     "CANARYWS_HEADER_TIMEOUT seconds (default 10); the connection is closed", retryable=True),
    HandshakeRefusal(429, "too_many_connections", "the client id already holds "
                     "CANARYWS_MAX_CONNECTIONS_PER_CLIENT open connections on this process (default 16)",
                     retryable=True),
    HandshakeRefusal(429, "too_many_handshakes_from_source", "this source address opened more than "
                     "CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND new handshakes per second (default 20, bursts of 40)",
                     retryable=True, retry_after=True),
    HandshakeRefusal(429, "too_many_handshakes", "the process took more than CANARYWS_MAX_HANDSHAKES_PER_SECOND new "
                     "handshakes per second (default 200, bursts of 400)", retryable=True, retry_after=True),
    HandshakeRefusal(431, "header_too_large", "the request line and headers took more than 64 KiB; the connection "
                     "is closed", retryable=False),
    HandshakeRefusal(503, "over_capacity", "the process holds CANARYWS_MAX_CONNECTIONS open WebSocket connections "
                     "(default 4,096), or its socket cap", retryable=True, retry_after=True),
)
"""Every refusal of a handshake, by status and ``error`` (a 401 also carries
``WWW-Authenticate: Bearer realm="canaryws", error="..."``)."""

CLOSE_CODES: Final = (
    CloseCode(1000, "normal_closure", "a normal close (either side)", retryable=False),
    CloseCode(1001, "going_away", "a normal close (either side): an endpoint is going away", retryable=True),
    CloseCode(1002, "protocol_error", "the client broke the WebSocket protocol (RFC 6455 section 7.4.1): frames "
              "read with the violation are dropped unanswered", retryable=False),
    CloseCode(1003, "unsupported_data", "the client sent a binary frame", retryable=False),
    CloseCode(1006, "abnormal_closure", "never sent: what a client sees when the TCP connection ends without a close "
              "frame (a network failure, or the service dropped a client that stopped reading, recording 1008)",
              retryable=True),
    CloseCode(1007, "invalid_payload", "a text frame (or a close reason) that is not valid UTF-8", retryable=False),
    CloseCode(1008, "policy_violation", "the service ended the connection: its token expired or was revoked (reason "
              "`token expired` / `token revoked`), or the client stopped reading", retryable=False),
    CloseCode(1009, "message_too_big", "a message larger than the limit (default 1 MiB; CANARYWS_MAX_FRAME_BYTES)",
              retryable=False),
    CloseCode(1011, "internal_error", "an unexpected server error on this connection (logged)", retryable=True),
    CloseCode(1012, "service_restart", "the service is shutting down: it answered every batch it had read, then "
              "closed; resend every batch without an answer on a new connection", retryable=True),
    CloseCode(1013, "try_again_later", "v1 only: the sink could not commit a batch (down or slow); nothing of it was "
              "written and it got no answer. Reconnect after a back-off and resend every batch without an answer "
              "(a v2 connection gets `unavailable` error frames instead and stays open)", retryable=True),
)
"""Every close code of contracts v1 and v2, and whether the client should reconnect."""

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


# --- What the service sends (server -> client). These types are the contract's one source:
# the encoders below build them, the client SDK (canaryws.client) decodes them, and
# docs/asyncapi.yaml is generated from them (canaryws.core.asyncapi).

StrategyName = Literal["lenient", "strict"]
ReasonCode = Literal["missing", "not_a_string", "empty", "blank", "control_character", "too_long"]
ErrorCode = Literal["invalid_json", "invalid_message", "unknown_type", "too_many_records", "duplicate_id",
                    "unavailable"]
ProtocolName = Literal["canaryws.records.v2", "canaryws.records.v1"]
CohortChangeReason = Literal["flags_changed"]


class CohortInfo(msgspec.Struct, frozen=True):
    """A connection's cohort: the strategy that answers its batches, whether a shadow
    of the other strategy runs beside it, and the flags revision it was decided on."""

    strategy: StrategyName
    strategy_version: Annotated[int, msgspec.Meta(ge=1)]
    shadow: bool
    flags_revision: str


class Welcome(msgspec.Struct, frozen=True, tag_field="type", tag="welcome"):
    """The first frame after the upgrade. ``durable`` (v2 only): whether this service commits
    each batch to its sink before answering it."""

    protocol: ProtocolName
    connection_id: str
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    cohort: CohortInfo
    durable: bool | msgspec.UnsetType = msgspec.UNSET


class Accepted(msgspec.Struct, frozen=True, gc=False):  # ints and strings: never in a cycle
    index: Annotated[int, msgspec.Meta(ge=0)]
    value: str


class Skipped(msgspec.Struct, frozen=True, gc=False):  # ints and strings: never in a cycle
    index: Annotated[int, msgspec.Meta(ge=0)]
    reason: ReasonCode


class Rejected(msgspec.Struct, frozen=True, gc=False):  # ints and strings: never in a cycle
    index: Annotated[int, msgspec.Meta(ge=0)]
    code: ReasonCode


class Result(msgspec.Struct, frozen=True, tag_field="type", tag="result"):
    """Exactly one per well-formed batch, in the order the batches arrived; every index of
    the batch appears exactly once across the three lists, each in ascending index order.

    v2 only: ``durable``, true when the batch's outcome was committed to the sink before
    this frame was sent; ``replay``, true when this is the outcome committed the first time
    a batch with this client id and batch id was sent (not processed again: its strategy
    may not be the connection's current cohort's)."""

    id: BatchId
    strategy: StrategyName
    strategy_version: Annotated[int, msgspec.Meta(ge=1)]
    accepted: list[Accepted]
    skipped: list[Skipped]
    rejected: list[Rejected]
    durable: bool | msgspec.UnsetType = msgspec.UNSET
    replay: bool | msgspec.UnsetType = msgspec.UNSET


class CohortChange(msgspec.Struct, frozen=True, tag_field="type", tag="cohort"):
    """Sent before the first result produced under a new cohort."""

    cohort: CohortInfo
    reason: CohortChangeReason


class Error(msgspec.Struct, frozen=True, tag_field="type", tag="error"):
    """A message-level error; the connection stays open. ``id``: the batch id when the
    frame carried a usable one, else null. ``retry_after_ms`` (v2, with ``unavailable``
    only): when resending the batch is worth trying."""

    id: BatchId | None
    code: ErrorCode
    detail: str
    retry_after_ms: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET


ServerMessage = Welcome | Result | CohortChange | Error
SERVER_MESSAGES: Final = (Welcome, Result, CohortChange, Error)


class _RawBatch(msgspec.Struct, frozen=True):
    type: Literal["batch"]
    id: BatchId
    records: list[msgspec.Raw]


_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer msgspec parses in C; a longer one fails the typed pass before it is built."""


class _Array(msgspec.Struct, array_like=True, gc=False):
    """A record that is a JSON array: no fields, so msgspec skips its elements (syntax checked, nothing built)."""


@dataclass(slots=True)
class _Object:
    """A record that is a JSON object: no fields, so msgspec skips its members. A dataclass, not a
    second Struct: a union may hold one untagged Struct (the array) and one other object type."""


class _AnyRecordBatch(msgspec.Struct, frozen=True, gc=False):
    """A batch whose records are any JSON value, decoded in one pass: only strings are built."""

    type: Literal["batch"]
    id: BatchId
    records: list[str | _Int64 | bool | _Array | _Object | None]


class MessageError(Exception):
    """A client frame that gets an error frame (the connection stays open)."""

    def __init__(self, code: str, detail: str, batch_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.batch_id = batch_id


_any_record_batch = msgspec.json.Decoder(_AnyRecordBatch)
_raw_batch = msgspec.json.Decoder(_RawBatch)
_strings = msgspec.json.Decoder(list[str])
_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_raw_value = msgspec.json.Decoder(msgspec.Raw)
_encoder = msgspec.json.Encoder()
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)  # too deep


def decode_batch(frame: str | bytes, max_records: int = DEFAULT_MAX_RECORDS) -> Batch:
    """Decode a client text frame into a :class:`Batch` or raise :class:`MessageError`.

    The same answer as :func:`decode_batch_by_slices` (its specification), in one typed pass."""
    try:
        decoded = _any_record_batch.decode(frame)
    except msgspec.ValidationError:  # a bad message, or a number other than an int64
        return decode_batch_by_slices(frame, max_records)
    except _DECODE_ERRORS as exc:
        raise _classify(frame, exc) from None
    records = decoded.records
    if len(records) > max_records:
        raise _too_many(len(records), max_records, decoded.id)
    # every time: as cheap as a test for a record of another kind would be (about 25 ns a record)
    texts: list[Any] = [r if r.__class__ is str or r is None else NOT_A_STRING for r in records]
    return Batch(decoded.type, decoded.id, texts)


def decode_batch_by_slices(frame: str | bytes, max_records: int = DEFAULT_MAX_RECORDS) -> Batch:
    """The reference decode: the batch with its records as raw JSON slices, its strings decoded
    in one more pass, nulls None, every other record :data:`NOT_A_STRING` (never parsed into a
    value). :func:`decode_batch` gives the same answer faster, and falls back on this for a
    number other than an int64."""
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
        try:  # a raw slice is not checked for UTF-8: a string of invalid bytes fails here
            values = _strings.decode(b"[" + b",".join(strings) + b"]")
        except _DECODE_ERRORS as exc:
            raise _classify(frame, exc) from None
        for index, value in zip(positions, values, strict=True):
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


def cohort_info(cohort: Cohort) -> CohortInfo:
    return CohortInfo(cohort.strategy, cohort.strategy_version, cohort.shadow, cohort.flags_revision)  # type: ignore[arg-type]


def encode_welcome(*, connection_id: str, client_id: str, cohort: Cohort, protocol: str = PROTOCOL_V1,
                   durable: bool = False) -> str:
    """The welcome frame; ``durable`` is said in v2 only."""
    return encode_welcome_bytes(connection_id=connection_id, client_id=client_id, cohort=cohort, protocol=protocol,
                                durable=durable).decode()


def encode_welcome_bytes(*, connection_id: str, client_id: str, cohort: Cohort, protocol: str = PROTOCOL_V1,
                         durable: bool = False) -> bytes:
    """:func:`encode_welcome`'s frame as the UTF-8 bytes the encoder writes (what goes on the wire)."""
    return _encoder.encode(Welcome(protocol, connection_id, client_id, cohort_info(cohort),  # type: ignore[arg-type]
                                   durable if protocol == PROTOCOL_V2 else msgspec.UNSET))


def encode_result(batch_id: str, outcome: Outcome, durable: bool | msgspec.UnsetType = msgspec.UNSET,
                  replay: bool | msgspec.UnsetType = msgspec.UNSET) -> str:
    """A result frame; v2's ``durable`` and ``replay`` only when given (a v1 frame has neither)."""
    return encode_result_bytes(batch_id, outcome, durable, replay).decode()


def encode_result_bytes(batch_id: str, outcome: Outcome, durable: bool | msgspec.UnsetType = msgspec.UNSET,
                        replay: bool | msgspec.UnsetType = msgspec.UNSET) -> bytes:
    """:func:`encode_result`'s frame as the UTF-8 bytes the encoder writes (what goes on the wire)."""
    return _encoder.encode(
        Result(
            batch_id,
            outcome.strategy,  # type: ignore[arg-type]
            outcome.strategy_version,
            list(starmap(Accepted, outcome.accepted)),  # the structs built in C, from the (index, value) pairs
            list(starmap(Skipped, outcome.skipped)),
            list(starmap(Rejected, outcome.rejected)),
            durable,
            replay,
        )
    )


def encode_unavailable(batch_id: str, detail: str, retry_after: float) -> str:
    """The v2 error frame for a batch the sink could not commit."""
    return _encoder.encode(Error(batch_id, UNAVAILABLE, detail, max(0, round(retry_after * 1000)))).decode()


def encode_cohort_change(cohort: Cohort, reason: CohortChangeReason = "flags_changed") -> str:
    return _encoder.encode(CohortChange(cohort_info(cohort), reason)).decode()


def encode_error(error: MessageError) -> str:
    return _encoder.encode(Error(error.batch_id, error.code, error.detail)).decode()  # type: ignore[arg-type]


def negotiate_subprotocol(offered: list[str]) -> tuple[bool, str | None]:
    """``(acceptable, chosen)``: no offer means v1 with no subprotocol header; otherwise the
    first offered that is supported (the client's order of preference); offers without a
    supported version are refused."""
    if not offered:
        return True, None
    for proto in offered:
        if proto in SUPPORTED_PROTOCOLS:
            return True, proto
    return False, None
