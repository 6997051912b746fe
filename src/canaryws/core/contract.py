"""Contract v1: the messages clients and the service exchange over ``/records``.

Pure: decoding and encoding of JSON text frames, and the error codes. The per-batch
path is one typed msgspec decode (validation included) and one encode; malformed
frames are classified on a slower path that only errors pay for.
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


class Batch(msgspec.Struct, frozen=True):
    """``{"type":"batch","id":"b-1","records":[...]}``; records are any JSON values.

    ``type`` is a required field (not a msgspec tag, which would make it optional).
    """

    type: Literal["batch"]
    id: BatchId
    records: list[Any]


class MessageError(Exception):
    """A client frame that gets an error frame (the connection stays open)."""

    def __init__(self, code: str, detail: str, batch_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.batch_id = batch_id


_batch_decoder = msgspec.json.Decoder(Batch)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def decode_batch(frame: str | bytes, max_records: int = DEFAULT_MAX_RECORDS) -> Batch:
    """Decode a client text frame into a :class:`Batch` or raise :class:`MessageError`."""
    try:
        batch = _batch_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:  # too deep
        raise _classify(frame, exc) from None
    if len(batch.records) > max_records:
        raise MessageError(
            TOO_MANY_RECORDS,
            f"batch has {len(batch.records)} records; the limit is {max_records}",
            batch.id,
        )
    return batch


def duplicate_id(batch_id: str, window: int) -> MessageError:
    """The error for a batch whose id repeats one of the connection's last ``window`` answered ids."""
    return MessageError(
        DUPLICATE_ID,
        f"batch id {batch_id[:64]!r} was already answered on this connection (ids must be unique among "
        f"the last {window} batches); the batch was not processed",
        batch_id,
    )


def _classify(frame: str | bytes, exc: Exception) -> MessageError:
    """Turn a failed typed decode into the most helpful error frame."""
    if not isinstance(exc, msgspec.ValidationError):
        return MessageError(INVALID_JSON, f"frame is not valid JSON: {exc}")
    try:
        value = _any_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as inner:
        # Syntactically JSON but not representable (e.g. a number out of range, nesting too deep).
        return MessageError(INVALID_JSON, f"frame is not usable JSON: {inner}")
    if not isinstance(value, dict):
        return MessageError(INVALID_MESSAGE, f"a message is a JSON object, got {_json_type(value)}")
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


def _json_type(value: Any) -> str:
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
