"""Structured logs: one JSON object per line, correlated with connections and traces.

Every record carries ``time`` (ISO-8601, UTC), ``level``, ``logger`` and ``message``;
``connection_id``/``client_id`` when the ContextVars below are set (the WebSocket
endpoint sets them for the life of a connection); ``trace_id``/``span_id`` (hex) when
a valid span is current; and whatever ``extra=`` fields the call passed.

Secrets are redacted on the way out, as defence in depth (the HTTP layer already keeps
``access_token`` out of logged URLs): ``access_token=<value>``, ``Bearer <token>`` and
JWT-shaped strings, and the values of credential headers in DEBUG header lines
(``< cookie: …``), become ``[REDACTED]`` in the message, in string extras and in
exception text.

uvicorn: call :func:`configure_logging` first and give uvicorn ``log_config=None``
(``uvicorn.Config(..., log_config=None)``); uvicorn's default ``log_config`` would
re-install its own handlers on the ``uvicorn*`` loggers.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "REDACTED",
    "JsonLogFormatter",
    "RedactingFilter",
    "client_id_var",
    "configure_logging",
    "connection_id_var",
    "redact",
]

connection_id_var: ContextVar[str | None] = ContextVar("canaryws_connection_id", default=None)
client_id_var: ContextVar[str | None] = ContextVar("canaryws_client_id", default=None)

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

def iso_utc(timestamp: float, timespec: str = "milliseconds", utc: str = "Z") -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix: the service's one time format
    (log records, and the times /readyz reports). ``timespec="seconds"`` where a second is
    the unit (token expiries, the report's window); ``utc="+00:00"`` where UTC has always
    been written as an offset (the report's JSON, the guard's judgements)."""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec=timespec).replace("+00:00", utc)


REDACTED = "[REDACTED]"
# One pass over the text for the three shapes; the groups keep the harmless prefixes.
# access_token=v, access_token%3Dv, access_token: v, "access_token": "v"
_SECRET = re.compile(
    r"(?P<param>(?i:access_token)(?:%3D|[\"']?\s*[:=]\s*[\"']?))[^&\s\"'#;,}]+"
    r"|(?P<bearer>\b(?i:bearer)\s+)(?!(?i:bearer)\b)[A-Za-z0-9\-._~+/]+=*"
    r"|\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    # header lines logged at DEBUG ("< cookie: ..."): credential headers of any scheme
    r"|(?P<header>(?im:^[<>]\s+(?:authorization|proxy-authorization|cookie|set-cookie"
    r"|[a-z0-9-]*(?:token|secret|api-?key|password|session)[a-z0-9-]*):[ \t]*))[^\r\n]+"
)


def _replace_secret(match: re.Match[str]) -> str:
    prefix = match.group("param") or match.group("bearer") or match.group("header") or ""
    return prefix + REDACTED


_REDACTED_SHORT: dict[str, str] = {}  # short strings already redacted (a log line's are mostly repeats)
_SHORT = 64
_SHORT_KEPT = 4096


def redact(text: str) -> str:
    """``text`` with access tokens, bearer tokens, JWTs and credential header values
    replaced by ``[REDACTED]``.

    Each shape needs a character no letter or digit is (``_``, white space, ``.``, ``<``
    or ``>``), so a string of letters and digits alone (an id, a strategy, a level) is
    returned as it is; a short string seen before gets the answer it got then. The
    pattern costs 0.5-1.5 µs a string, and a log line has about ten."""
    if text.isalnum():
        return text
    if len(text) > _SHORT:
        return _SECRET.sub(_replace_secret, text)
    done = _REDACTED_SHORT.get(text)
    if done is None:
        if len(_REDACTED_SHORT) >= _SHORT_KEPT:
            _REDACTED_SHORT.clear()
        done = _REDACTED_SHORT[text] = _SECRET.sub(_replace_secret, text)
    return done


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


class JsonLogFormatter(JsonFormatter):
    """python-json-logger's formatter with canaryws's fields and redaction."""

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = iso_utc(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message  # set by format(); "" for a dict msg
        connection_id = connection_id_var.get()
        if connection_id is not None:
            log_data["connection_id"] = connection_id
        client_id = client_id_var.get()
        if client_id is not None:
            log_data["client_id"] = client_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            log_data["trace_id"] = f"{context.trace_id:032x}"
            log_data["span_id"] = f"{context.span_id:016x}"
        # extra= fields, exc_info/stack_info; an explicit extra wins over the context.
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # uvicorn adds "color_message" (the message with ANSI colours): noise in JSON.
        return {key: _redact_value(value) for key, value in log_data.items() if key != "color_message"}


class RedactingFilter(logging.Filter):
    """Redacts the message and string extras of records passing through a handler.

    Not needed with :class:`JsonLogFormatter`, which redacts its whole output; this is
    for handlers with other formatters. It rewrites ``record.msg`` (arguments merged)
    and string attributes in place.
    """

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for key, value in list(record.__dict__.items()):
            if key not in self._STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class _CanarywsHandler(logging.StreamHandler[IO[str]]):
    """Marker class, so that configure_logging can find and replace its own handler."""


class _ClientErrorsAreNotServerErrors(logging.Filter):
    """uvicorn logs invalid UTF-8 from a client with ``logger.exception``: an ERROR with a
    traceback per frame, which any client could use to flood the log. It is the client's
    error (the connection is closed with 1007 and counted): keep one INFO line, no traceback."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.msg in self.MESSAGES:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


_CLIENT_ERRORS = _ClientErrorsAreNotServerErrors()


class QuietHandshakes(logging.Filter):
    """uvicorn logs every WebSocket handshake at INFO (with the client address and path), the
    websockets library it drives logs each one again ("connection open", "connection rejected
    (401 Unauthorized)", "connection closed", all on uvicorn's logger), and uvicorn logs one the
    app refuses (401, 403, 429) a third time as an ERROR ("ASGI callable returned without
    completing handshake"): an unauthenticated flood became thousands of ERROR lines. The
    service logs its own accepted and closed connections and a rate-limited summary of refusals
    (``canaryws.adapters.records``), so these are dropped."""

    TEMPLATES = ('%s - "WebSocket %s"', "connection rejected (", "HTTP response sent (")
    MESSAGES = frozenset({"ASGI callable returned without completing handshake.", "connection open",
                          "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        return not (message in self.MESSAGES or message.startswith(self.TEMPLATES))


def configure_logging(*, level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Send all logging (root logger and uvicorn's) as JSON lines to ``stream``.

    ``stream`` defaults to ``sys.stderr``. The root logger's handlers are replaced by
    one JSON handler at ``level``; the ``uvicorn``, ``uvicorn.error`` and
    ``uvicorn.access`` loggers lose their own handlers and propagate to it, so each
    record is written once. Calling it again replaces the previous configuration
    (idempotent). Pass ``log_config=None`` to uvicorn so it does not undo this.
    """
    numeric_level = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")

    handler = _CanarywsHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _CanarywsHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        for old in list(uvicorn_logger.handlers):
            uvicorn_logger.removeHandler(old)
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)
        uvicorn_logger.disabled = False
    if _CLIENT_ERRORS not in logging.getLogger("uvicorn.error").filters:
        logging.getLogger("uvicorn.error").addFilter(_CLIENT_ERRORS)
    if not any(isinstance(f, QuietHandshakes) for f in logging.getLogger("uvicorn.error").filters):
        logging.getLogger("uvicorn.error").addFilter(QuietHandshakes())

    # A JSON line carries none of where the call was made, the thread or the process: skip
    # finding them for every record (the logging HOWTO's "Optimization" switches; ~3 µs a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    # watchfiles logs "N changes detected" at INFO for every change in the flags directory.
    logging.getLogger("watchfiles").setLevel(max(numeric_level, logging.WARNING))
