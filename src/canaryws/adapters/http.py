"""HTTP surface: probes, Prometheus metrics, and the ASGI middleware that keeps the
browser ``access_token`` query parameter out of logs and traces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from canaryws.adapters.websocket import ACCESS_TOKEN_SCOPE_KEY

ACCESS_TOKEN_PARAM = "access_token"
REQUIRE_COHORT_FLAGS = "cohort-flags"  # /readyz?require=cohort-flags: 503 while a cohort flag is held


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


PRIVATE_STATUS_KEYS = frozenset({"path", "url", "bootstrap_path", "last_error", "target"})
"""What ``/readyz`` shows only to the admin credential: file paths, the Unleash URL, exporter
targets and raw error text (the probe is unauthenticated, and a load balancer may expose it)."""


def public_status(status: Any) -> Any:
    """``status`` without :data:`PRIVATE_STATUS_KEYS`, at any depth."""
    if isinstance(status, dict):
        return {k: public_status(v) for k, v in status.items() if k not in PRIVATE_STATUS_KEYS}
    if isinstance(status, list):
        return [public_status(v) for v in status]
    return status


def probes_router(
    *,
    flags_status: Callable[[], dict[str, Any]],
    metrics_text: Callable[[], tuple[bytes, str]],
    telemetry_status: Callable[[], dict[str, Any]] | None = None,
    is_admin: Callable[[str | None], bool] | None = None,
) -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``.

    Readiness depends on the flags only. ``telemetry_status`` (traces state and dropped
    spans) is reported by ``/readyz`` but never makes it fail: losing telemetry must not
    take a replica out of the load balancer. ``/readyz`` shows its details (paths, URLs,
    error text) only to a request whose ``Authorization`` header ``is_admin`` accepts.
    ``/metrics`` is rendered off the event loop, so a scrape never stalls the batches.
    """
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness: the process serves HTTP."""
        return JSONResponse({"status": "ok"})

    @router.get("/readyz")
    async def readyz(request: Request, require: str | None = None) -> JSONResponse:
        """Readiness: flags are loaded; reports the flag source, revision and state, and
        the state of telemetry export (informational).

        A cohort flag held at its last good definition leaves the replica ready (every
        replica reads the same flags: failing them all would turn a flag problem into an
        outage) with ``flags.state: degraded``; ``?require=cohort-flags`` makes it 503
        instead, for a load balancer or check that should act on it."""
        status = flags_status()
        ready = bool(status.get("revision"))
        if require is not None:
            if require != REQUIRE_COHORT_FLAGS:
                return JSONResponse(
                    {"error": "invalid_require", "detail": f"require must be {REQUIRE_COHORT_FLAGS!r}"},
                    status_code=400,
                )
            held = [flag for flag, state in (status.get("cohort_flags") or {}).items() if state.get("state") == "held"]
            ready = ready and not held
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "flags": status}
        if telemetry_status is not None:
            body["telemetry"] = telemetry_status()
        if is_admin is None or not is_admin(request.headers.get("authorization")):
            body = public_status(body)
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        body, content_type = await asyncio.to_thread(metrics_text)
        return Response(body, media_type=content_type)

    return router
