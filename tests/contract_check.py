"""Contract tests' checker: frames validated against docs/asyncapi.yaml, the machine-readable
contract (not against the msgspec types it is generated from, so a frame the encoders build
differently from the document fails here).

- :func:`validate_server_frame` for what the service sends (``welcome``, ``result``, ``cohort``,
  ``error``; another ``type`` is a violation). tests/integration/conftest.py runs it on every
  text frame the ``websockets`` client receives in the integration suite.
- :func:`validate_client_frame` for what a client sends (``batch``), e.g. the SDK's frames.

Both raise :class:`ContractViolation` with the frame, the message and the schema's complaint.
The payload schemas are JSON Schema draft 7 (AsyncAPI 3.0's default schema format is a superset
of it), validated with ``jsonschema``; their ``$ref`` s resolve inside the document.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
_URI = "urn:canaryws:asyncapi"
_SHOWN = 600  # characters of a frame quoted in a violation


class ContractViolation(AssertionError):
    """A frame that docs/asyncapi.yaml does not allow."""


@dataclass
class ContractRecord:
    """What a checker saw (tests/integration/conftest.py keeps one per test): the frames it
    validated, parsed, and the violations, as messages.

    Frames are validated when :attr:`frames` or :attr:`violations` is read (at the latest at the
    test's teardown), not as they arrive: jsonschema takes milliseconds on a large result, and a
    client slowed down that much changes what timing-sensitive tests (a drain, a slow consumer)
    observe. Each distinct frame is validated once."""

    checking: bool = True
    _pending: list[Any] = field(default_factory=list)
    _frames: list[dict[str, Any]] = field(default_factory=list)
    _violations: list[str] = field(default_factory=list)
    _seen: dict[Any, dict[str, Any] | str] = field(default_factory=dict)

    def received(self, message: Any) -> None:
        if self.checking:
            self._pending.append(message)

    def check(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            outcome = self._seen.get(message)
            if outcome is None:
                try:
                    outcome = validate_server_frame(message)
                except ContractViolation as exc:
                    outcome = str(exc)
                self._seen[message] = outcome
            if isinstance(outcome, str):
                self._violations.append(outcome)
            else:
                self._frames.append(outcome)

    @property
    def frames(self) -> list[dict[str, Any]]:
        self.check()
        return self._frames

    @property
    def violations(self) -> list[str]:
        self.check()
        return self._violations

    @violations.setter
    def violations(self, value: list[str]) -> None:
        self.check()
        self._violations = value


@functools.cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(_URI, Resource.from_contents(document(), default_specification=DRAFT7))


def messages_sent_by(action: str) -> dict[str, str]:
    """``type`` -> message name, of the messages of the operations with ``action`` (the
    document describes the service: it ``send`` s server messages and ``receive`` s client ones)."""
    doc = document()
    out: dict[str, str] = {}
    for operation in doc["operations"].values():
        if operation["action"] != action:
            continue
        for ref in operation["messages"]:
            name = ref["$ref"].rsplit("/", 1)[1]
            out[_type_of(name)] = name
    return out


def _resolve(pointer: str) -> Any:
    node: Any = document()
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _type_of(message: str) -> str:
    """The ``type`` value that names a message: the single value its payload schema allows."""
    payload = document()["components"]["messages"][message]["payload"]
    schema = _resolve(payload["$ref"]) if "$ref" in payload else payload
    (value,) = schema["properties"]["type"].get("enum") or [schema["properties"]["type"]["const"]]
    return str(value)


@functools.cache
def validator(message: str) -> Draft7Validator:
    """The validator of a message's payload (a name under ``components/messages``)."""
    if message not in document()["components"]["messages"]:
        raise KeyError(f"docs/asyncapi.yaml has no message {message!r}")
    return Draft7Validator({"$ref": f"{_URI}#/components/messages/{message}/payload"}, registry=_registry())


@functools.cache
def server_messages() -> dict[str, str]:
    return messages_sent_by("send")


@functools.cache
def client_messages() -> dict[str, str]:
    return messages_sent_by("receive")


def validate_server_frame(text: str | bytes) -> dict[str, Any]:
    """The frame, parsed, if docs/asyncapi.yaml allows the service to send it; else ContractViolation."""
    return _validate(text, server_messages(), "server")


def validate_client_frame(text: str | bytes) -> dict[str, Any]:
    """The frame, parsed, if docs/asyncapi.yaml allows a client to send it; else ContractViolation."""
    return _validate(text, client_messages(), "client")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _validate(text: str | bytes, by_type: dict[str, str], side: str) -> dict[str, Any]:
    shown = _shown(text)
    if isinstance(text, bytes):
        raise ContractViolation(f"{side} frame is binary; the contract has JSON text frames only: {shown}")
    try:
        frame = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ContractViolation(f"{side} frame is not JSON ({exc}): {shown}") from None
    if not isinstance(frame, dict):
        raise ContractViolation(f"{side} frame is not a JSON object: {shown}")
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in by_type:
        raise ContractViolation(
            f"{side} frame has type {kind!r}; docs/asyncapi.yaml allows {sorted(by_type)}: {shown}")
    message = by_type[kind]
    errors = sorted(validator(message).iter_errors(frame), key=lambda e: list(e.absolute_path))
    if errors:
        problems = "; ".join(f"at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])
        raise ContractViolation(
            f"{side} frame does not match message {message!r} of docs/asyncapi.yaml: {problems}\nframe: {shown}")
    return frame


def _shown(text: str | bytes) -> str:
    shown = repr(text[:_SHOWN])
    return shown + (f" ... ({len(text)} in all)" if len(text) > _SHOWN else "")
