"""The endpoint's state for one open connection, and the close codes the service uses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from canaryws.adapters.auth import Identity
from canaryws.core.cohorts import Cohort, EvaluationContext
from canaryws.core.summary import ConnectionSummary

CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013  # v1 only: the sink could not commit a batch

# Why the service ended a connection itself (the ``reason`` label of
# ``canaryws_connections_terminated_total``; the close frame carries a readable reason).
SLOW_CONSUMER = "slow_consumer"
TOKEN_EXPIRED = "token_expired"
TOKEN_REVOKED = "token_revoked"
CLOSE_REASONS = {
    SLOW_CONSUMER: "slow consumer: the client stopped reading results",
    TOKEN_EXPIRED: "token expired",
    TOKEN_REVOKED: "token revoked",
}


@dataclass(slots=True, kw_only=True)
class Connection:
    """The endpoint's state for one open connection."""

    context: EvaluationContext
    identity: Identity
    cohort: Cohort
    connect: trace.SpanContext | None
    summary: ConnectionSummary  # the current slice
    slice_start_ns: int
    slice_started: float  # time.perf_counter() at the slice's start
    task: asyncio.Task[None] | None
    abort: Callable[[], None] | None  # drops the TCP connection (see canaryws.adapters.asgi.expose_abort)
    sending_since: float = 0.0  # perf_counter() when the pending send started; 0.0 when none is pending
    ended: tuple[int, str] | None = field(default=None)  # (close code, reason) once the sweep ended it
    protocol: str | None = None  # the negotiated subprotocol (None: v1, none offered)
