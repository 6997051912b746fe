"""Serves ``/records`` outside FastAPI: the endpoint runs under the service's thin wrappers only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket


class RecordsRoute:
    """Serves ``/records`` WebSocket connections itself and passes everything else to ``app``.

    A connection's task resumes through every ASGI layer that awaits the endpoint, on
    every frame it waits for (about 30 ns a layer on this stack; docs/benchmarks.md). A
    route inside FastAPI sits under about ten of them (the app, its error and exception
    middleware, the OpenTelemetry middleware, the router, the route's session wrappers)
    that do nothing for this endpoint after the handshake. Placed outside FastAPI, the
    endpoint's handshake and batch loop run under the service's own thin wrappers only.
    """

    def __init__(self, app: ASGIApp, handle: Callable[[WebSocket], Awaitable[None]], path: str = "/records") -> None:
        self.app = app
        self.handle = handle
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if path == self.path:
                await self.handle(WebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)
