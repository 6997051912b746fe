"""Contract v1 as an AsyncAPI 3.0 document, generated from the wire types of
:mod:`canaryws.core.contract` (the one source; ``canaryws contract asyncapi`` writes
``docs/asyncapi.yaml`` from :func:`document`).

Pure: builds a dict. The payload schemas are msgspec's JSON Schemas of the Structs, with two
things msgspec cannot know: every server message and its parts are closed
(``additionalProperties: false``: v1 never adds a field), and a batch is open (the service
ignores unknown fields) with records of any JSON value (the Struct decodes them to what the
strategies need).
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from canaryws.core import contract
from canaryws.core.contract import (
    Accepted,
    Batch,
    CohortChange,
    CohortInfo,
    Error,
    Rejected,
    Result,
    Skipped,
    Welcome,
)

ASYNCAPI_VERSION: Final = "3.0.0"
CHANNEL: Final = "records"
REF_TEMPLATE: Final = "#/components/schemas/{name}"
WS_BINDING_VERSION: Final = "0.1.0"

# Message name (as in components/messages and the frames' ``type``) -> its Struct.
SERVER_MESSAGES: Final[dict[str, type[msgspec.Struct]]] = {
    "welcome": Welcome,
    "result": Result,
    "cohort": CohortChange,
    "error": Error,
}
CLIENT_MESSAGES: Final[dict[str, type[msgspec.Struct]]] = {"batch": Batch}
CLOSED_SCHEMAS: Final = tuple(
    t.__name__ for t in (Welcome, CohortInfo, Result, Accepted, Skipped, Rejected, CohortChange, Error)
)

_COHORT = CohortInfo("strict", 1, False, "3b1f0c2a9d7e4410")
_EXAMPLES: Final[dict[str, list[tuple[str, msgspec.Struct | dict[str, Any]]]]] = {
    "welcome": [("welcome", Welcome("canaryws.records.v1", "9f0c1d2e3f4a5b6c", "tenant-42", _COHORT)),
                ("welcome_v2", Welcome("canaryws.records.v2", "9f0c1d2e3f4a5b6c", "tenant-42", _COHORT, True))],
    "result": [
        ("strict", Result("b-1", "strict", 1, [Accepted(0, "a"), Accepted(3, "b")], [],
                          [Rejected(1, "empty"), Rejected(2, "blank"), Rejected(4, "missing"),
                           Rejected(5, "not_a_string")])),
        ("lenient", Result("b-1", "lenient", 1, [Accepted(0, "a"), Accepted(3, "b")],
                           [Skipped(1, "empty"), Skipped(2, "blank"), Skipped(4, "missing"),
                            Skipped(5, "not_a_string")], [])),
        ("v2_durable", Result("b-2", "strict", 1, [Accepted(0, "c")], [], [], durable=True, replay=False)),
        ("v2_replay", Result("b-1", "lenient", 1, [Accepted(0, "a")], [Skipped(1, "blank")], [], durable=True,
                             replay=True)),
    ],
    "cohort": [("flags_changed", CohortChange(CohortInfo("lenient", 1, False, "7c2d9e0f1a3b5c6d"), "flags_changed"))],
    "error": [
        ("too_many_records", Error("b-7", "too_many_records", "batch has 10001 records; the limit is 10000")),
        ("invalid_json", Error(None, "invalid_json", "frame is not valid JSON: malformed data")),
        ("unavailable", Error("b-8", "unavailable", "the sink could not commit this batch (ConnectionRefusedError); "
                              "nothing of it was written: resend it", 1000)),
    ],
    "batch": [("batch", {"type": "batch", "id": "b-1", "records": [" a ", "", "  ", "b", None, 5]})],
}

_SUMMARIES: Final = {
    "welcome": "The first frame after the upgrade: the protocol, the connection and the client's cohort (v2: and "
    "whether results are durable).",
    "result": "Exactly one per well-formed batch, in the order the batches arrived.",
    "cohort": "Sent before the first result produced under a new cohort (the flags changed).",
    "error": "A message-level error; the connection stays open.",
    "batch": "Records to process; answered by exactly one result or error.",
}
_DESCRIPTIONS: Final = {
    "result": "Every index of the batch appears exactly once across `accepted`, `skipped` and `rejected`, each "
    "list in ascending index order. `strict` never skips; `lenient` never rejects. v2 adds `durable` (the batch was "
    "committed to the sink before this frame was sent) and `replay` (the outcome stored when a batch with this client "
    "id and batch id was first committed; it was not processed again). A v1 connection gets neither field.",
    "cohort": "A connection's cohort is decided at connect time and re-decided only when the flags revision "
    "changes, at the next batch boundary. A revision change that leaves the strategy, its version and `shadow` "
    "unchanged sends no cohort frame.",
    "batch": "`id`: a string of 1-256 characters chosen by the client, echoed in the answer; `records`: an array of "
    "any JSON values. Unknown fields are ignored.",
}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of contracts v1 and v2 (v2 = v1 + the fields marked v2)."""
    messages = {**SERVER_MESSAGES, **CLIENT_MESSAGES}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "canaryws records",
            "version": "2",
            "description": (
                "Contracts v1 and v2 of canaryws: clients send batches of records over a WebSocket and get one "
                "answer per batch. v2 (subprotocol `canaryws.records.v2`) adds what a durable persist step says: "
                "`durable` and `replay` on results and welcome, and the retryable error `unavailable`; a client "
                "that offers v1 (or no subprotocol) gets v1's frames. Generated from the code (`canaryws contract "
                "asyncapi`, from `canaryws.core.contract`); docs/contract.md is the prose explanation."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "`canaryws serve` with its defaults. Behind TLS the protocol is `wss`.",
                "security": [
                    {"$ref": "#/components/securitySchemes/httpBearer"},
                    {"$ref": "#/components/securitySchemes/accessToken"},
                ],
            }
        },
        "channels": {CHANNEL: _channel(messages)},
        "operations": _operations(),
        "components": {
            "schemas": _schemas(),
            "messages": {name: _message(name, struct) for name, struct in messages.items()},
            "securitySchemes": _security_schemes(),
        },
    }


def _channel(messages: dict[str, type[msgspec.Struct]]) -> dict[str, Any]:
    return {
        "address": "/records",
        "title": "Records",
        "description": _channel_description(),
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {
            "ws": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "properties": {
                        "access_token": {
                            "type": "string",
                            "description": "The token, for browsers (which cannot set headers on a WebSocket); "
                            "used when no Authorization header is sent.",
                        }
                    },
                },
                "headers": {
                    "type": "object",
                    "properties": {
                        "Authorization": {"type": "string",
                                          "description": "`Bearer <token>` (the scheme in any case); at most one "
                                          "such header."},
                        "Sec-WebSocket-Protocol": {
                            "type": "string",
                            "description": f"The subprotocols offered, in order of preference; one of them must be "
                            f"`{contract.PROTOCOL_V2}` or `{contract.PROTOCOL_V1}` (the first supported one is "
                            "chosen). A client that offers none gets v1 without the header in the answer.",
                        },
                        "Origin": {"type": "string", "description": "At most one; checked against "
                                   "CANARYWS_ALLOWED_ORIGINS when that is set."},
                        "X-Canaryws-Client-Version": {"type": "string", "description": "Advisory: recorded for "
                                                      "diagnosis, never used to pick a cohort."},
                    },
                },
                "bindingVersion": WS_BINDING_VERSION,
            }
        },
        "x-canaryws-subprotocols": list(contract.SUPPORTED_PROTOCOLS),
        "x-canaryws-handshake-refusals": [
            {"status": r.status, "error": r.error, "meaning": r.meaning, "retryable": r.retryable,
             "retry_after": r.retry_after}
            for r in contract.HANDSHAKE_REFUSALS
        ],
        "x-canaryws-close-codes": [
            {"code": c.code, "name": c.name, "meaning": c.meaning, "retryable": c.retryable}
            for c in contract.CLOSE_CODES
        ],
    }


def _channel_description() -> str:
    yes_no = {True: "yes", False: "no"}
    refusals = "\n".join(
        f"| {r.status} | `{r.error}` | {r.meaning} | {yes_no[r.retryable]}"
        f"{' (after `Retry-After`)' if r.retry_after else ''} |"
        for r in contract.HANDSHAKE_REFUSALS
    )
    closes = "\n".join(
        f"| {c.code} | {c.name} | {c.meaning} | {yes_no[c.retryable]} |" for c in contract.CLOSE_CODES
    )
    return (
        f"The WebSocket endpoint, subprotocols `{contract.PROTOCOL_V2}` and `{contract.PROTOCOL_V1}`; all frames "
        "are JSON text frames.\n\n"
        "Refusals happen before the upgrade, as HTTP answers with a JSON body `{\"error\": ..., \"detail\": ...}` "
        "(machine-readable: `x-canaryws-handshake-refusals`):\n\n"
        "| status | error | meaning | retry |\n|---|---|---|---|\n"
        f"{refusals}\n\n"
        "Close codes (machine-readable: `x-canaryws-close-codes`); reconnect with jitter when *retry* says yes:\n\n"
        "| code | name | meaning | retry |\n|---|---|---|---|\n"
        f"{closes}\n"
    )


def _operations() -> dict[str, Any]:
    channel = {"$ref": f"#/channels/{CHANNEL}"}

    def messages(*names: str) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{CHANNEL}/messages/{name}"} for name in names]

    return {
        "receiveBatch": {
            "action": "receive",
            "channel": channel,
            "title": "Receive a batch",
            "summary": "A client sends a batch; the service answers it with exactly one result or error, in order "
            "(a cohort frame may come before the result).",
            "messages": messages("batch"),
            "reply": {"channel": channel, "messages": messages("result", "error")},
        },
        "sendWelcome": {
            "action": "send", "channel": channel, "title": "Send the welcome",
            "summary": "The first frame after the upgrade.", "messages": messages("welcome"),
        },
        "sendResult": {
            "action": "send", "channel": channel, "title": "Send a result",
            "summary": "The answer to a well-formed batch.", "messages": messages("result"),
        },
        "sendCohort": {
            "action": "send", "channel": channel, "title": "Send a cohort change",
            "summary": "Before the first result produced under a new cohort.", "messages": messages("cohort"),
        },
        "sendError": {
            "action": "send", "channel": channel, "title": "Send an error",
            "summary": "The answer to a frame that is not a usable batch; the connection stays open.",
            "messages": messages("error"),
        },
    }


def _schemas() -> dict[str, Any]:
    structs = [*SERVER_MESSAGES.values(), *CLIENT_MESSAGES.values()]
    _, components = msgspec.json.schema_components(structs, ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = {}
    for name, schema in components.items():
        schema = dict(schema)
        if "description" in schema:
            schema["description"] = _prose(schema["description"])
        if name in CLOSED_SCHEMAS:
            schema["additionalProperties"] = False
        schemas[name] = schema
    batch = schemas[Batch.__name__]
    batch["description"] = _DESCRIPTIONS["batch"]
    batch["additionalProperties"] = True
    batch["properties"] = {
        **batch["properties"],
        "records": {"type": "array", "items": {"description": "any JSON value"}},
    }
    codes = schemas[Error.__name__]["properties"]["code"]
    codes["description"] = "; ".join(f"`{code}`: {contract.ERROR_MEANINGS[code]}" for code in contract.ERROR_CODES)
    return schemas


def _message(name: str, struct: type[msgspec.Struct]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": struct.__name__,
        "summary": _SUMMARIES[name],
        "contentType": "application/json",
        "payload": {"$ref": REF_TEMPLATE.format(name=struct.__name__)},
        "examples": [{"name": example, "payload": _builtins(value)} for example, value in _EXAMPLES[name]],
    }
    if name in _DESCRIPTIONS:
        message["description"] = _DESCRIPTIONS[name]
    if name == "error":
        message["description"] = "| code | meaning |\n|---|---|\n" + "\n".join(
            f"| `{code}` | {contract.ERROR_MEANINGS[code]} |" for code in contract.ERROR_CODES
        ) + "\n"
        message["x-canaryws-error-codes"] = [
            {"code": code, "meaning": contract.ERROR_MEANINGS[code]} for code in contract.ERROR_CODES
        ]
    return message


def _security_schemes() -> dict[str, Any]:
    return {
        "httpBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <token>`: an HS256 JWT from `canaryws token issue`.",
        },
        "accessToken": {
            "type": "httpApiKey",
            "name": "access_token",
            "in": "query",
            "description": "`?access_token=<token>`, for browsers; the service removes it from the query string "
            "before anything logs or traces the request.",
        },
    }


def _builtins(value: msgspec.Struct | dict[str, Any]) -> Any:
    return msgspec.to_builtins(value)


def _prose(docstring: str) -> str:
    """A docstring as one paragraph of Markdown (reST double backticks made single)."""
    return re.sub(r"\s+", " ", docstring.replace("``", "`")).strip()
