"""Keeps the browser ``access_token`` query parameter out of logs and traces."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from canaryws.adapters.asgi.scope import ACCESS_TOKEN_SCOPE_KEY

ACCESS_TOKEN_PARAM = "access_token"


class AccessTokenScrubber:
    """Moves ``access_token`` from the query string into a private scope key, before
    anything (OTel instrumentation, uvicorn's own log lines) reads the query string.

    The scope dict is mutated in place on purpose: uvicorn logs from the same dict.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("websocket", "http"):
            raw: bytes = scope.get("query_string", b"")
            if raw and b"access_token" in raw:
                pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
                kept = []
                for key, value in pairs:
                    if key == ACCESS_TOKEN_PARAM:
                        scope[ACCESS_TOKEN_SCOPE_KEY] = value
                    else:
                        kept.append((key, value))
                scope["query_string"] = urlencode(kept).encode("latin-1")
        await self.app(scope, receive, send)
