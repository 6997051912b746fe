"""When to reconnect: the policy and its delays (pure; no I/O).

Exponential back-off with *full jitter* (a delay drawn uniformly between 0 and the
exponential bound, as in AWS's "Exponential Backoff And Jitter"): a crowd of clients closed
at once by a restart (1012) comes back spread out instead of in one wave. A refusal with
``Retry-After`` (429, 503) waits at least that long, plus jitter, as the contract asks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from canaryws.core.contract import CLOSE_CODES, HANDSHAKE_REFUSALS

RETRYABLE_CLOSE_CODES = frozenset({c.code for c in CLOSE_CODES if c.retryable} | {1013})
"""Closes after which the SDK reconnects: the contract's retryable ones (going away, abnormal
(no close frame), server error, service restart), and 1013 (try again later) from a proxy."""

TOKEN_CLOSE_REASONS = frozenset({"token expired", "token revoked"})
"""1008 reasons after which a fresh token from ``token_provider`` may help."""

RETRYABLE_STATUSES = frozenset({r.status for r in HANDSHAKE_REFUSALS if r.retryable} | {502, 504})
"""Handshake refusals after which the SDK tries again (after ``Retry-After`` when given): the
contract's retryable ones (408, 429, 503) and a proxy's 502 and 504. 401 is retried once with a
fresh token when there is a ``token_provider``; 400, 403 and 431 never."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How the client reconnects. ``max_attempts`` handshakes in a row may fail (the first
    connection included) before :class:`~canaryws.client.errors.GaveUp`; ``give_up_after``
    seconds bound the whole outage; the n-th retry waits a uniform random delay in
    ``[0, min(max_delay, initial_delay * multiplier**n)]``."""

    max_attempts: int = 10
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    give_up_after: float | None = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts is at least 1")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delays are not negative and multiplier is at least 1")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        bound = min(self.max_delay, self.initial_delay * self.multiplier ** min(retry, 64))
        jittered = self.rng.uniform(0.0, bound)
        if retry_after is not None:
            return retry_after + jittered
        return jittered
