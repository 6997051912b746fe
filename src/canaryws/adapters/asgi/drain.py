"""Drains the WebSocket connections at shutdown: each answers what it read, then 1012."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canaryws.adapters.asgi.scope import OWES_ANSWERS_SCOPE_KEY


class _Tracked:
    """One WebSocket connection as the drain sees it: its server protocol (with the inbound
    queue and the transport), its ``send``, and where its app task is."""

    __slots__ = ("closing", "protocol", "queue", "receiving", "scope", "send", "transport")

    def __init__(self, protocol: object, queue: asyncio.Queue[Any], transport: asyncio.Transport, send: Send,
                 scope: Scope) -> None:
        self.scope = scope
        self.protocol = protocol
        self.queue = queue
        self.transport = transport
        self.send = send
        self.receiving: Awaitable[Message] | None = None  # the app's latest receive() awaitable
        self.closing = False  # the drain sent its close frame

    @property
    def parked(self) -> bool:
        """The app task waits in receive(): its latest receive() coroutine is suspended."""
        pending = self.receiving
        return inspect.iscoroutine(pending) and inspect.getcoroutinestate(pending) == inspect.CORO_SUSPENDED

    @property
    def owes(self) -> bool:
        """Batches it read still wait for their answers (the batch loop's OWES_ANSWERS_SCOPE_KEY)."""
        owes = self.scope.get(OWES_ANSWERS_SCOPE_KEY)
        return bool(owes()) if owes is not None else False

    @property
    def idle(self) -> bool:
        """Everything it read is answered: the app waits for more and nothing is queued."""
        return self.parked and self.queue.empty() and not self.owes

    def stop_reading(self) -> None:
        if self.transport.is_reading():
            self.transport.pause_reading()


class ConnectionDrain:
    """Outermost ASGI wrapper that drains the WebSocket connections at shutdown.

    :meth:`drain` stops reading on every connection; each one, once it has answered every
    frame it had read, is closed with 1012 through its own ``send`` (the ASGI
    ``websocket.close``), so the server protocol runs the closing handshake: it reads
    again, discards data frames that arrive after the close, and closes the TCP connection
    when the client's close frame arrives. (Closing the socket while unread frames sit in
    it would reset the connection and destroy the results still on their way.)

    It needs the server protocol behind ``receive`` (uvicorn's WebSocket protocols hand the
    application their bound ``receive``, with the inbound ``queue`` and the ``transport``);
    connections under another server are left to the server's own shutdown.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._open: set[_Tracked] = set()
        self.closed: set[object] = set()  # server protocols the drain sent a close frame to
        self._draining = False
        self._closers: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = getattr(receive, "__self__", None)
        queue = getattr(protocol, "queue", None)
        transport = getattr(protocol, "transport", None)
        if scope["type"] != "websocket" or not isinstance(queue, asyncio.Queue) or transport is None:
            await self.app(scope, receive, send)
            return
        tracked = _Tracked(protocol, queue, transport, send, scope)

        def tracked_receive() -> Awaitable[Message]:
            # Until the drain starts: the protocol's own receive() coroutine, remembered (so
            # the drain can tell a parked app) but not wrapped, since a wrapper coroutine
            # would be created and resumed on every frame (docs/benchmarks.md).
            if self._draining:
                return self._receive_draining(tracked, receive)
            tracked.receiving = pending = receive()
            return pending

        self._open.add(tracked)
        try:
            await self.app(scope, tracked_receive, send)
        finally:
            self._open.discard(tracked)

    async def _receive_draining(self, tracked: _Tracked, receive: Receive) -> Message:
        if not tracked.closing and tracked.queue.empty() and not tracked.owes:
            await self._close(tracked)  # all it read is answered; receive() returns the disconnect
        # (answers still owed: the drain's next look closes it once they are sent)
        tracked.receiving = pending = receive()
        message = await pending
        if not tracked.closing:
            # The protocol resumes reading when its queue empties; while draining, nothing new is read.
            tracked.stop_reading()
        return message

    async def _close(self, tracked: _Tracked) -> None:
        tracked.closing = True
        self.closed.add(tracked.protocol)
        # Already closed or gone (the app closed it, the peer left): nothing to do.
        with contextlib.suppress(Exception):
            await tracked.send({"type": "websocket.close", "code": 1012})
        # Read again so that the protocol sees the client's close frame (it discards data frames).
        if not tracked.transport.is_closing():
            tracked.transport.resume_reading()

    @property
    def busy(self) -> int:
        """Connections not closed yet (they still owe answers)."""
        return sum(not tracked.closing for tracked in self._open)

    async def drain(self, timeout: float, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Stop reading on every connection and close each with 1012 once it has answered
        what it read; wait at most ``timeout`` seconds (or until ``give_up()``, checked every
        50 ms) until all are closed. True when all were. (The closing handshakes may still
        be running: see :attr:`closed`.)"""
        self._draining = True
        for tracked in self._open:
            tracked.stop_reading()
        deadline = time.monotonic() + timeout
        while True:
            for tracked in self._open:
                if tracked.idle and not tracked.closing:
                    # The app waits in receive(): close on its behalf, off this loop (send may wait to write).
                    closer = asyncio.create_task(self._close(tracked))
                    self._closers.add(closer)
                    closer.add_done_callback(self._closers.discard)
            if not self.busy:
                return True
            if time.monotonic() >= deadline or give_up():
                return False
            await asyncio.sleep(0.05)
