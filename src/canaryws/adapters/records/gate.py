"""The limits a handshake meets first, before anything else is read: new handshakes per
second (per source address, then per process) and open connections per process; and the
accounting of every refusal (counted, and summarised in the log at most every
:data:`REFUSAL_LOG_INTERVAL` seconds: a flood of refused clients must not flood the log)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from canaryws.adapters.records.admission import Refusal
from canaryws.core.limits import TokenBucket

log = logging.getLogger("canaryws.records")

REFUSAL_LOG_INTERVAL = 10.0  # seconds between two "refused connections" log lines
MAX_TRACKED_SOURCES = 10_000  # source addresses whose handshake rate is tracked (least recently seen forgotten)


class HandshakeGate:
    """``max_source_per_second``/``source_burst`` and ``max_per_second``/``burst`` (0: no
    limit) bound new handshakes; ``max_connections`` the open connections. ``count`` is
    called with the reason of every refusal (the ``canaryws_connections_refused_total``
    counter)."""

    def __init__(
        self,
        *,
        max_per_second: float,
        burst: int,
        max_source_per_second: float,
        source_burst: int,
        max_connections: int,
        count: Callable[[str], None],
    ) -> None:
        now = time.perf_counter()
        self._process = TokenBucket(max_per_second, burst, now) if max_per_second > 0 else None
        self._source_rate = max_source_per_second
        self._source_burst = source_burst
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()  # bounded: MAX_TRACKED_SOURCES
        self._max_connections = max_connections
        self._count = count
        self._refusals: dict[str, int] = {}
        self._refusals_logged = time.monotonic() - REFUSAL_LOG_INTERVAL

    def check(self, source: str, open_connections: int) -> Refusal | None:
        """The refusal of a new handshake from ``source`` while ``open_connections`` are
        open, or None. The source address's rate first (a flooding address is refused
        without spending the process's budget), then the process's, then the cap. A refused
        handshake spends nothing (:meth:`TokenBucket.admit`)."""
        now = time.perf_counter()
        if self._source_rate > 0:
            bucket = self._sources.get(source)
            if bucket is None:
                if len(self._sources) >= MAX_TRACKED_SOURCES:
                    self._sources.popitem(last=False)  # the least recently seen
                bucket = self._sources[source] = TokenBucket(self._source_rate, self._source_burst, now)
            else:
                self._sources.move_to_end(source)
            wait = bucket.admit(now)
            if wait > 0.0:
                return _too_many("too_many_handshakes_from_source", wait)
        if self._process is not None:
            wait = self._process.admit(now)
            if wait > 0.0:
                return _too_many("too_many_handshakes", wait)
        if open_connections >= self._max_connections:
            return Refusal(503, "over_capacity",
                           f"this process holds its maximum of {self._max_connections} connections", retry_after=1.0)
        return None

    def refused(self, reason: str) -> None:
        """Count a refused handshake or connection (also the door's,
        :mod:`canaryws.adapters.server.door`) and log the refusals, by reason, at most once
        per :data:`REFUSAL_LOG_INTERVAL` seconds at INFO."""
        self._count(reason)
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._refusals_logged >= REFUSAL_LOG_INTERVAL:
            log.info("refused connections", extra={"refused": dict(self._refusals),
                                                     "seconds": round(now - self._refusals_logged, 1)})
            self._refusals.clear()
            self._refusals_logged = now


def _too_many(reason: str, wait: float) -> Refusal:
    return Refusal(429, reason, f"too many new connections; retry in {wait:.1f} s", retry_after=wait)
