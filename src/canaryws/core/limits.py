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

    Each remembered id gets its number in the connection's sequence of remembered ids; an id
    is among the last ``window`` when its number is within ``window`` of the next one. The ids
    sit in two generations of at most ``window`` each: the current one, and the one before it.
    When the current one is full it becomes the one before, and the oldest generation is
    dropped whole. Every id numbered within the window is in one of the two (the generation
    before was full when it was closed, so it reaches back at least ``window`` numbers), and the
    two hold at most ``2 × window`` ids. Per batch that is one or two lookups and one store: no
    eviction of the oldest id one by one (each eviction reads an id that has not been touched
    for ``window`` batches, a cache miss), nor a pass over the dict to drop the old half.
    """

    __slots__ = ("_new", "_next", "_old", "window")

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("the window holds at least one id")
        self.window = window
        self._new: dict[str, int] = {}  # the current generation: id -> its number
        self._old: dict[str, int] = {}  # the generation before
        self._next = 0  # the number the next remembered id gets

    def _number(self, batch_id: str) -> int | None:
        seq = self._new.get(batch_id)
        return self._old.get(batch_id) if seq is None else seq

    def __contains__(self, batch_id: str) -> bool:
        seq = self._number(batch_id)
        return seq is not None and seq >= self._next - self.window

    def __len__(self) -> int:
        return min(self._next, self.window)

    def remember(self, batch_id: str) -> bool:
        """Remember ``batch_id`` and return True, or return False (and change nothing)
        when it is one of the last ``window`` ids: one call per batch does both the
        duplicate check and the bookkeeping."""
        new = self._new
        seq = new.get(batch_id)
        if seq is None:
            seq = self._old.get(batch_id)
        n = self._next
        if seq is not None and seq >= n - self.window:
            return False
        if len(new) >= self.window:  # the current generation is full: it becomes the one before
            self._old = new
            self._new = new = {}
        new[batch_id] = n
        self._next = n + 1
        return True

    def forget(self, batch_id: str) -> None:
        """Forget ``batch_id``, a batch that was not answered with a result after all (the sink
        could not commit it): its id may be sent again. Its place in the window stays taken."""
        self._new.pop(batch_id, None)
        self._old.pop(batch_id, None)
