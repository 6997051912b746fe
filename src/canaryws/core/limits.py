"""Per-connection limits: a message-rate token bucket and the window of recent batch ids.

Pure: the caller passes the clock reading (``time.perf_counter()``), so both are
deterministic under test.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` messages (or bytes) per second with bursts of up to ``burst``.

    :meth:`take` always admits the message (of ``amount`` tokens: 1 for a message, its
    size for a byte budget) and returns how long the caller must wait before handling it
    (0.0 while the bucket holds the tokens). Waiting repays the debt, so
    a connection that floods is slowed to ``rate`` and loses nothing: while it waits the
    server does not read its next frame, and TCP pushes back on the sender.

    The batch loop (``canaryws.adapters.records.loop``) runs this arithmetic on its own local
    variables, since a method call per frame cost more than the arithmetic; this class is
    its specification, and ``tests/unit/test_endpoint_rate.py`` checks the loop's waits
    against it frame by frame.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> float:
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        tokens -= amount
        self.tokens = tokens
        return 0.0 if tokens >= 0.0 else -tokens / self.rate


    def admit(self, now: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens if the bucket holds them (0.0), else take nothing and return
        how long until it would: for refusing (a handshake over its rate) rather than delaying,
        so that refused attempts never push the bucket into debt."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= amount:
            self.tokens = tokens - amount
            return 0.0
        self.tokens = tokens
        return (amount - tokens) / self.rate


class RecentIds:
    """The last ``window`` batch ids a connection was answered for (oldest forgotten first).

    One dict maps each id to its number in the connection's sequence of remembered ids;
    an id is among the last ``window`` when its number is within ``window`` of the next
    one. Forgetting is lazy: older entries stay until the dict holds ``window`` of them
    beyond the window, and are then dropped in one pass. Per batch that is one lookup
    and one store, instead of evicting the oldest id one by one (each eviction reads an
    id that has not been touched for ``window`` batches, a cache miss, more than once).
    """

    __slots__ = ("_ids", "_next", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the window holds at least one id")
        self.window = window
        self._ids: dict[str, int] = {}
        self._next = 0  # the number the next remembered id gets

    def __contains__(self, batch_id: str) -> bool:
        seq = self._ids.get(batch_id)
        return seq is not None and seq >= self._next - self.window

    def __len__(self) -> int:
        return min(self._next, self.window)

    def remember(self, batch_id: str) -> bool:
        """Remember ``batch_id`` and return True, or return False (and change nothing)
        when it is one of the last ``window`` ids: one call per batch does both the
        duplicate check and the bookkeeping."""
        ids = self._ids
        seq = ids.get(batch_id)
        n = self._next
        if seq is not None and seq >= n - self.window:
            return False
        ids[batch_id] = n
        self._next = n + 1
        if len(ids) >= 2 * self.window:
            self._forget()
        return True

    def forget(self, batch_id: str) -> None:
        """Forget ``batch_id``, a batch that was not answered with a result after all (the sink
        could not commit it): its id may be sent again. Its place in the window stays taken."""
        self._ids.pop(batch_id, None)

    def _forget(self) -> None:
        """Drop the ids that fell out of the window (about half of them)."""
        oldest = self._next - self.window
        self._ids = {batch_id: seq for batch_id, seq in self._ids.items() if seq >= oldest}
