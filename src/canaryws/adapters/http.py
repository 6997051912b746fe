"""HTTP surface: the probes and the Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

REQUIRE_COHORT_FLAGS = "cohort-flags"  # /readyz?require=cohort-flags: 503 while a cohort flag is held
REQUIRE_SINK = "sink"  # /readyz?require=sink: 503 while the sink is not committing
REQUIRE_VALUES = (REQUIRE_COHORT_FLAGS, REQUIRE_SINK)


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
    sink_status: Callable[[], dict[str, Any]] | None = None,
) -> APIRouter:
    """``/healthz``, ``/readyz`` and ``/metrics``.

    Readiness depends on the flags only. ``telemetry_status`` (traces state and dropped
    spans) is reported by ``/readyz`` but never makes it fail: losing telemetry must not
    take a replica out of the load balancer. ``/readyz`` shows its details (paths, URLs,
    error text) only to a request whose ``Authorization`` header ``is_admin`` accepts.
    ``sink_status`` (None without a sink) is reported too; like a held cohort flag, an
    unavailable sink leaves the replica ready unless the probe asks ``?require=sink``.
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
        instead, for a load balancer or check that should act on it. The sink is shared by
        every replica too: ``sink.state`` says ``unavailable`` (batches are answered
        ``unavailable``), and ``?require=sink`` makes that 503."""
        status = flags_status()
        ready = bool(status.get("revision"))
        if require is not None:
            if require not in REQUIRE_VALUES:
                return JSONResponse(
                    {"error": "invalid_require", "detail": f"require must be {' or '.join(map(repr, REQUIRE_VALUES))}"},
                    status_code=400,
                )
            if require == REQUIRE_COHORT_FLAGS:
                held = [flag for flag, state in (status.get("cohort_flags") or {}).items()
                        if state.get("state") == "held"]
                ready = ready and not held
        sink = sink_status() if sink_status is not None else None
        if require == REQUIRE_SINK:
            ready = ready and (sink is None or sink["state"] == "ok")  # CANARYWS_SINK=none: nothing to wait for
        body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "flags": status}
        if sink is not None:
            body["sink"] = sink
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
