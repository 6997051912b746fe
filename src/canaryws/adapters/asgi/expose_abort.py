"""Hands the ``/records`` endpoint the server's own channel and its transport's abort."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from canaryws.adapters.asgi.scope import ABORT_SCOPE_KEY, CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY

_HOLDING_THE_PROTOCOL = (ABORT_SCOPE_KEY, CHANNEL_SCOPE_KEY, OWES_ANSWERS_SCOPE_KEY)


class ExposeAbort:
    """Outermost ASGI wrapper of the app: hands the endpoint the server's own channel.

    - **Abort.** A peer that stops reading fills its socket buffer; then not even a close
      frame gets through, and closing the transport gracefully would wait for that buffer
      forever. ASGI has no message for "abort", so this exposes ``transport.abort`` of the
      server protocol whose bound ``send`` the server hands to the application (uvicorn's
      WebSocket protocols). Under a server without one, the endpoint falls back to a close
      frame.
    - **The batch loop's channel.** The ``receive``/``send`` this wrapper gets, before the
      middleware stack wraps them once per message (Starlette's exception and state
      wrappers, OpenTelemetry's ASGI middleware, which does work on every ``send`` even
      with its per-message spans excluded). The handshake still goes through the whole
      stack; the batch loop reads and writes frames on this channel (docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        abort = getattr(transport, "abort", None)
        if callable(abort):
            scope[ABORT_SCOPE_KEY] = abort
        scope[CHANNEL_SCOPE_KEY] = (receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            # The server's protocol holds this scope, and these entries hold the protocol (its
            # bound receive and send, its transport's abort, the batch loop's answers): left
            # in place they make a reference cycle, and the connection's protocol, parser,
            # transport and everything they hold (about 50 objects) wait for the garbage
            # collector instead of going when the connection does (docs/benchmarks.md).
            for key in _HOLDING_THE_PROTOCOL:
                scope.pop(key, None)
