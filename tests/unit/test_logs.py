"""JSON logs: fields, connection/trace correlation, uvicorn routing, redaction."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from uvicorn.config import LOGGING_CONFIG

from canaryws.adapters.telemetry import logs as logs_module
from canaryws.adapters.telemetry.logs import (
    REDACTED,
    RedactingFilter,
    client_id_var,
    configure_logging,
    connection_id_var,
    redact,
)

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back afterwards."""
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled))
    yield
    for logger, handlers, level, propagate, disabled in saved:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_records_are_json_with_the_standard_fields_and_extras() -> None:
    stream = io.StringIO()
    configure_logging(level="debug", stream=stream)
    logging.getLogger("canaryws.test").info("ready on %s", "port 8000", extra={"flags_revision": "r1", "n": 3})
    (line,) = _lines(stream)
    assert line["level"] == "INFO" and line["logger"] == "canaryws.test"
    assert line["message"] == "ready on port 8000"
    assert line["flags_revision"] == "r1" and line["n"] == 3
    assert line["time"].endswith("Z")
    assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert not {"connection_id", "client_id", "trace_id", "span_id"} & set(line)


def test_connection_and_trace_context_are_attached() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    connection_token = connection_id_var.set("c-123")
    client_token = client_id_var.set("client-7")
    try:
        with tracer.start_as_current_span("records.batch") as span:
            logging.getLogger("canaryws.ws").warning("batch rejected")
        logging.getLogger("canaryws.ws").info("after the span", extra={"client_id": "explicit"})
    finally:
        connection_id_var.reset(connection_token)
        client_id_var.reset(client_token)
    logging.getLogger("canaryws.ws").info("outside the connection")

    inside, after, outside = _lines(stream)
    context = span.get_span_context()
    assert inside["connection_id"] == "c-123" and inside["client_id"] == "client-7"
    assert inside["trace_id"] == f"{context.trace_id:032x}" and len(inside["trace_id"]) == 32
    assert inside["span_id"] == f"{context.span_id:016x}" and len(inside["span_id"]) == 16
    assert inside["level"] == "WARNING"
    assert "trace_id" not in after and after["client_id"] == "explicit"  # extra wins
    assert "connection_id" not in outside


def test_secrets_are_redacted_in_message_extras_and_exceptions() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    log = logging.getLogger("canaryws.test")
    log.info('"GET /records?access_token=abc&v=1 HTTP/1.1" 101')
    log.info("header %s", "Authorization: Bearer abc.def.ghi", extra={"url": "/records?access_token=abc"})
    try:
        raise ValueError("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjIn0.c2ln rejected")
    except ValueError:
        log.exception("auth failed")
    output = stream.getvalue()
    for secret in ("access_token=abc", "abc.def.ghi", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in output
    first, second, third = _lines(stream)
    assert first["message"] == '"GET /records?access_token=[REDACTED]&v=1 HTTP/1.1" 101'
    assert second["message"] == "header Authorization: Bearer [REDACTED]"
    assert second["url"] == "/records?access_token=[REDACTED]"
    assert "[REDACTED]" in third["exc_info"] and "ValueError" in third["exc_info"]


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "batch b-1 accepted 3 records for client-7 (strategy strict)"
    assert redact(text) == text
    assert redact('{"access_token": "abc"}') == '{"access_token": "[REDACTED]"}'


def test_redacting_filter_for_other_handlers() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(token)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("canaryws.test.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("bearer %s", "Bearer abc.def.ghi", extra={"token": "access_token=abc"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert stream.getvalue() == "bearer Bearer [REDACTED] access_token=[REDACTED]\n"


def test_uvicorn_loggers_go_through_the_one_handler_once_even_after_uvicorn_config() -> None:
    logging.config.dictConfig(LOGGING_CONFIG)  # what uvicorn does with its default log_config
    stream = io.StringIO()
    configure_logging(stream=stream)
    configure_logging(stream=stream)  # idempotent: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/records?access_token=abc", "1.1", 101
    )
    logging.getLogger("uvicorn").warning("shutting down")
    lines = _lines(stream)
    assert [line["logger"] for line in lines] == ["uvicorn.error", "uvicorn.access", "uvicorn"]
    assert lines[1]["message"] == '127.0.0.1:5000 - "GET /records?access_token=[REDACTED] HTTP/1.1" 101'


def test_level_filters_and_a_new_call_replaces_the_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(level="WARNING", stream=first)
    logging.getLogger("canaryws").info("hidden")
    logging.getLogger("canaryws").warning("shown")
    configure_logging(level="INFO", stream=second)
    logging.getLogger("canaryws").info("to the second stream")
    assert [line["message"] for line in _lines(first)] == ["shown"]
    assert [line["message"] for line in _lines(second)] == ["to the second stream"]
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="chatty")


TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


@given(
    prefix=st.text(max_size=20),
    token=st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=40).filter(lambda t: not t.lower().startswith("bearer")),
    suffix=st.sampled_from(["", " ", "&x=1", '"', " HTTP/1.1", ", next"]),
)
def test_redaction_never_leaks_the_token_and_is_idempotent(prefix: str, token: str, suffix: str) -> None:
    for text in (f"{prefix} Bearer {token}{suffix}", f"{prefix}?access_token={token}{suffix}"):
        redacted = redact(text)
        assert f"Bearer {token}{suffix}" not in redacted and f"access_token={token}{suffix}" not in redacted
        assert redact(redacted) == redacted


@pytest.mark.parametrize(
    "line",
    [
        "< cookie: session=s3cr3t",
        "< Authorization: Basic s3cr3t",
        "> set-cookie: id=s3cr3t; Path=/",
        "< x-api-key: s3cr3t",
        "< X-Upstream-Token: s3cr3t",
        "< proxy-authorization: Digest s3cr3t",
    ],
)
def test_credential_header_lines_are_redacted_whatever_the_scheme(line: str) -> None:
    redacted = redact(f"< host: example.org\n{line}\n< upgrade: websocket")
    assert "s3cr3t" not in redacted and REDACTED in redacted
    assert "< host: example.org" in redacted and "< upgrade: websocket" in redacted


def test_ordinary_header_lines_are_kept() -> None:
    text = "< sec-websocket-protocol: canaryws.records.v1\n< x-canaryws-client-version: 1.2"
    assert redact(text) == text


@given(st.one_of(st.text(max_size=80), st.text(alphabet="abcAB09_. <>\t\nèé\u00a0\u2003-=:/eyJ", max_size=80),
                 st.sampled_from(["Bearer abc.def", "access_token=x", "eyJhbGciOi.eyJzdWIi.sig", "< cookie: a=b",
                                  "strict", "0123abcdef", "ÉtéΣ9"])))
def test_redact_answers_as_the_pattern_alone_whatever_its_shortcuts(text: str) -> None:
    """Letters and digits alone are returned at once and short strings are remembered: the
    answers are the pattern's, the first time and the next."""
    expected = logs_module._SECRET.sub(logs_module._replace_secret, text)
    assert redact(text) == expected
    assert redact(text) == expected


def test_remembered_redactions_stay_bounded() -> None:
    for i in range(logs_module._SHORT_KEPT + 10):
        redact(f"a b {i}")
    assert len(logs_module._REDACTED_SHORT) <= logs_module._SHORT_KEPT


def test_records_keep_their_fields_without_caller_thread_or_process_lookups() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", stream=stream)
    logging.getLogger("canaryws.test").info("hello %s", "there", extra={"k": "v"})
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert {key: line[key] for key in ("level", "logger", "message", "k")} == {
        "level": "INFO", "logger": "canaryws.test", "message": "hello there", "k": "v"}
    assert (logging.logThreads, logging.logProcesses, logging.logMultiprocessing) == (False, False, False)
