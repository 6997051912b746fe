"""Per-connection limits: a message-rate token bucket and the window of recent batch ids.

Pure: the caller passes the clock reading (``time.perf_counter()``), so both are
deterministic under test.
"""

from __future__ import annotations

from collections import deque


class TokenBucket:
    """``rate`` messages per second with bursts of up to ``burst``.

    :meth:`take` always admits the message and returns how long the caller must wait
    before handling it (0.0 while the bucket holds a token). Waiting repays the debt, so
    a connection that floods is slowed to ``rate`` and loses nothing: while it waits the
    server does not read its next frame, and TCP pushes back on the sender.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        tokens -= 1.0
        self.tokens = tokens
        return 0.0 if tokens >= 0.0 else -tokens / self.rate


class RecentIds:
    """The last ``window`` batch ids a connection was answered for (oldest forgotten first)."""

    __slots__ = ("_ids", "_order", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the window holds at least one id")
        self.window = window
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, batch_id: str) -> None:
        if batch_id in self._ids:
            return
        self._ids.add(batch_id)
        self._order.append(batch_id)
        if len(self._order) > self.window:
            self._ids.discard(self._order.popleft())
