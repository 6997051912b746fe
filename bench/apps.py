"""The comparison servers of ``bench/run.py``; each runs under uvicorn with canaryws' settings.

    .venv/bin/python bench/apps.py KIND PORT [FLAGS_FILE]

- ``echo``: a bare FastAPI WebSocket echo, the ceiling of the stack (uvicorn + FastAPI).
- ``lean``: the same strict work as canaryws (decode, strict strategy, encode) and
  nothing else: no flags, no telemetry, no auth, no limits. The limit for this work.
- ``lean-both``: ``lean`` that also does, inline after each answer, what a shadow is for:
  the lenient strategy on the batch and the comparison of its outcome with the answer
  (``canaryws.core.compare``). The difference to ``lean`` is the second strategy's own
  work, which the shadow (running it after the answer, counting it) is held to.
- ``lean-stack``: ``lean``'s work as a bare ASGI app on canaryws' own WebSocket stack (the
  protocol that reads text frames itself, the answers written straight to the transport):
  ``canaryws / lean-stack`` is canaryws' overhead over the work on the stack it runs on, where
  ``canaryws / lean`` also counts what that stack saves against stock uvicorn.
- ``naive``: the design canaryws avoids: the flag engine's ``is_enabled`` per batch (the
  Unleash engine UnleashClient evaluates, on the flags file given), and OpenTelemetry's
  default instrumentation (FastAPIInstrumentor with its per-message ``receive``/``send``
  spans, the SDK's default always-on sampler, a span per batch, written to a trace file).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket

from canaryws.core import contract
from canaryws.core.compare import compare
from canaryws.core.strategies import LENIENT, STRICT
from canaryws.core.strategies.strict import DEFAULT_MAX_LENGTH

MAX_RECORDS = contract.DEFAULT_MAX_RECORDS


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/records")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        receive, send = websocket.receive, websocket.send
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message["text"]})

    return app


def lean_app(*, both: bool = False) -> FastAPI:
    app = FastAPI()

    @app.websocket("/records")
    async def lean(websocket: WebSocket) -> None:
        await websocket.accept()
        receive, send = websocket.receive, websocket.send
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                batch = contract.decode_batch(message["text"], MAX_RECORDS)
            except contract.MessageError as err:
                await send({"type": "websocket.send", "text": contract.encode_error(err)})
                continue
            outcome = STRICT.process(batch.records, DEFAULT_MAX_LENGTH)
            await send({"type": "websocket.send", "text": contract.encode_result(batch.id, outcome)})
            if both:
                compare(outcome, LENIENT.process(batch.records, DEFAULT_MAX_LENGTH))

    return app


def lean_stack_app() -> Any:
    """``lean-stack``: lean's work as a bare ASGI app on canaryws' own WebSocket stack (main runs it
    under :class:`canaryws.adapters.server.ws_protocol.WebSocketProtocol`; the answers go through
    :func:`canaryws.adapters.asgi.frame_writer.text_writer`): canaryws' overhead over the work,
    measured on the stack canaryws runs on."""
    from canaryws.adapters.asgi.frame_writer import text_writer

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        write = text_writer(send)
        while True:
            message = await receive()
            text = message.get("text")
            if text is None:
                return
            try:
                batch = contract.decode_batch(text, MAX_RECORDS)
            except contract.MessageError as err:
                await send({"type": "websocket.send", "text": contract.encode_error(err)})
                continue
            payload = contract.encode_result_bytes(batch.id, STRICT.process(batch.records, DEFAULT_MAX_LENGTH))
            if write is None or not write(payload):
                await send({"type": "websocket.send", "text": payload.decode()})

    return app


def naive_app(flags_file: Path, trace_file: Path) -> FastAPI:
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from canaryws.adapters.flags.engine import FlagSnapshot
    from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
    from canaryws.core.cohorts import STRICT_FLAG
    from canaryws.core.flagdoc import parse_flags_document

    snapshot = FlagSnapshot.from_document(parse_flags_document(flags_file.read_bytes()), source="file")
    provider = TracerProvider()  # the SDK's default sampler: parentbased_always_on
    provider.add_span_processor(BatchSpanProcessor(OtlpJsonFileSpanExporter(trace_file)))
    tracer = trace.get_tracer("naive", tracer_provider=provider)
    app = FastAPI()

    @app.websocket("/records")
    async def naive(websocket: WebSocket) -> None:
        await websocket.accept()
        client = websocket.headers.get("x-client-id", "anonymous")
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            with tracer.start_as_current_span("records.batch"):
                strict = snapshot.evaluate(STRICT_FLAG, {"userId": client}).enabled
                strategy = STRICT if strict else LENIENT
                try:
                    batch = contract.decode_batch(message["text"], MAX_RECORDS)
                except contract.MessageError as err:
                    await websocket.send_text(contract.encode_error(err))
                    continue
                outcome = strategy.process(batch.records, DEFAULT_MAX_LENGTH)
                await websocket.send_text(contract.encode_result(batch.id, outcome))

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    ws: Any = "websockets-sansio"
    if kind == "lean-stack":
        from canaryws.adapters.server.ws_protocol import WebSocketProtocol

        app: Any = lean_stack_app()
        ws = WebSocketProtocol
    elif kind == "echo":
        app = echo_app()
    elif kind in ("lean", "lean-both"):
        app = lean_app(both=kind == "lean-both")
    elif kind == "naive":
        flags_file = Path(sys.argv[3])
        app = naive_app(flags_file, flags_file.parent / "naive-traces.jsonl")
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        ws=ws,
        ws_max_size=1024 * 1024,
        ws_per_message_deflate=False,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
