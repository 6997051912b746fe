"""Connections handed from the supervisor to a worker (``canaryws serve --workers N``).

The supervisor (:mod:`canaryws.adapters.server.supervisor`) accepts every connection itself
and passes its file descriptor to one worker over that worker's **channel**: an ``AF_UNIX``
``SOCK_SEQPACKET`` socket pair, each message one byte and up to :data:`MAX_FDS_PER_MESSAGE`
descriptors (``SCM_RIGHTS``). A message is delivered whole or not at all, so descriptors
still queued in a dead worker's channel were never touched by it: the supervisor takes them
back (:func:`receive_fds` on its copy of the worker's end) and gives them to another worker.

Each worker publishes how loaded it is in two shared 64-bit counters (:class:`Inbox`), which
only it writes and the supervisor reads without a lock:

- ``taken``: descriptors it has read from its channel and turned into connections (counted
  when the connection is made, right after ``live`` counts it) or failed to, ever;
- ``live``: connections it holds now (uvicorn's ``server_state.connections``, probes and
  WebSockets alike: :class:`PublishedConnections` writes its size at every change).

The supervisor's estimate of a worker's connections is ``sent - taken + live`` (plus what it
has accepted for it and not sent yet): exact once the worker has caught up, and counting
descriptors still in flight as connections, so a worker that stops reading stops getting more.
A descriptor is counted once at every moment: in ``sent - taken`` until its connection is
made, in ``live`` from then on (counting it as taken when it was read would count it in
neither until then; counting it when the whole batch read with it is connected would count
it twice meanwhile, and a burst would then tilt towards the other worker).

The worker side is :class:`HandoffServer`: :class:`canaryws.adapters.server.graceful.GracefulServer`
started with no listening socket, which reads its channel in its event loop
(:class:`HandoffListener`) and feeds each descriptor to uvicorn's protocol with
``loop.connect_accepted_socket``, the protocol built as uvicorn's own ``Server.startup``
builds it (:func:`protocol_factory`, the one place that relies on uvicorn's internals;
tests/integration/test_workers_balance.py pins it). Its shutdown is graceful.py's: the
listener is one of ``server.servers``, so "stop accepting" closes the channel (the kernel
closes the descriptors still queued in it) before the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import uvicorn

from canaryws.adapters.asgi.drain import ConnectionDrain
from canaryws.adapters.server import graceful

log = logging.getLogger("canaryws.workers")

MAX_FDS_PER_MESSAGE = 253  # Linux's SCM_MAX_FD: the most descriptors one message may carry
READS_PER_WAKEUP = 64  # messages a worker reads before its event loop serves its connections again
TAKEN, LIVE = 0, 1  # the counters' slots

SharedCounters = Any
"""Two ``ctypes.c_int64`` in shared memory (``multiprocessing`` ``RawArray``): ``[taken, live]``."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A worker's channel: (the supervisor's end, the worker's end), both non-blocking."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


def send_fds(channel: socket.socket, fds: Sequence[int]) -> None:
    """One message carrying ``fds`` (at most :data:`MAX_FDS_PER_MESSAGE`): all or nothing
    (BlockingIOError when the channel is full)."""
    socket.send_fds(channel, [b"\0"], fds)


def receive_fds(channel: socket.socket) -> list[int] | None:
    """The descriptors of the next message; [] when none is queued, None at end of file (the
    other end closed). A message that carried more than the receiver may take is an error
    the kernel already resolved by closing the extra descriptors: logged."""
    try:
        data, fds, flags, _ = socket.recv_fds(channel, 1, MAX_FDS_PER_MESSAGE)
    except (BlockingIOError, InterruptedError):
        return []
    if not data and not fds:
        return None
    if flags & socket.MSG_CTRUNC:
        log.error("a hand-off message carried more descriptors than it may; the extra connections were lost")
    return fds


@dataclass(frozen=True)
class Inbox:
    """What a worker gets from its supervisor: its end of the channel and its counters
    (passed to the spawned worker as one of its arguments)."""

    channel: socket.socket
    counters: SharedCounters

    def taken(self, count: int) -> None:
        self.counters[TAKEN] += count

    def live(self, count: int) -> None:
        self.counters[LIVE] = count


def new_counters(factory: Callable[[Any, int], SharedCounters]) -> SharedCounters:
    """Zeroed counters from ``factory`` (a ``multiprocessing`` context's ``RawArray``)."""
    return factory(ctypes.c_int64, 2)


class PublishedConnections(set[Any]):
    """uvicorn's ``server_state.connections`` that publishes its size at every change
    (uvicorn's protocols ``add`` themselves when their connection is made, ``discard`` or
    ``remove`` themselves when it is lost, and the HTTP protocol hands over to the WebSocket
    one on an upgrade: the size stays the number of open connections).

    A protocol built for a handed-over descriptor is :meth:`arriving` until it adds itself:
    then, after the size, ``taken`` counts it (:data:`TAKEN`, via the ``taken`` callback)."""

    def __init__(self, publish: Callable[[int], None], taken: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._publish = publish
        self._taken = taken
        self._arriving: set[Any] = set()

    def arriving(self, protocol: Any) -> None:
        """``protocol`` serves a descriptor read from the channel; its connection is not made yet."""
        self._arriving.add(protocol)

    def abandon(self, protocol: Any) -> bool:
        """``protocol``'s connection failed: True when it had not been made (nor counted as taken)."""
        if protocol in self._arriving:
            self._arriving.remove(protocol)
            return True
        return False

    def add(self, item: Any) -> None:
        super().add(item)
        self._publish(len(self))
        if item in self._arriving:
            self._arriving.remove(item)
            if self._taken is not None:
                self._taken(1)

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._publish(len(self))

    def remove(self, item: Any) -> None:
        super().remove(item)
        self._publish(len(self))


def protocol_factory(server: uvicorn.Server) -> Callable[[], asyncio.Protocol]:
    """The protocol factory uvicorn's ``Server.startup`` gives ``loop.create_server`` (its
    ``create_protocol``), for ``server`` once its lifespan has started: one HTTP protocol per
    connection, sharing the server's state and the lifespan's state."""
    config = server.config

    def create_protocol() -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=server.server_state, app_state=server.lifespan.state)

    return create_protocol


class HandoffListener:
    """Reads a worker's channel in its event loop and serves each descriptor; stands in for
    the listening server in ``uvicorn.Server.servers`` (``close``, ``wait_closed``)."""

    def __init__(self, inbox: Inbox, factory: Callable[[], asyncio.Protocol],
                 connections: PublishedConnections) -> None:
        self._inbox = inbox
        self._factory = factory
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        inbox.channel.setblocking(False)
        self._loop.add_reader(inbox.channel.fileno(), self._readable)

    def _readable(self) -> None:
        socks: list[socket.socket] = []
        for _ in range(READS_PER_WAKEUP):
            fds = receive_fds(self._inbox.channel)
            if fds is None:  # the supervisor closed its end: nothing more will come
                self.close()
                break
            if not fds:
                break
            for fd in fds:
                try:
                    socks.append(socket.socket(fileno=fd))
                except OSError:
                    socket.close(fd)
                    self._inbox.taken(1)
        if socks:
            task = self._loop.create_task(self._serve(socks))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, socks: list[socket.socket]) -> None:
        built: list[asyncio.Protocol | None] = [None] * len(socks)

        def factory(slot: int) -> Callable[[], asyncio.Protocol]:
            def build() -> asyncio.Protocol:
                protocol = built[slot] = self._factory()
                self._connections.arriving(protocol)  # counted as taken when its connection is made
                return protocol
            return build

        results = await asyncio.gather(*(self._loop.connect_accepted_socket(factory(slot), sock)
                                         for slot, sock in enumerate(socks)), return_exceptions=True)
        failed = 0
        for sock, protocol, result in zip(socks, built, results, strict=True):
            if isinstance(result, BaseException):  # e.g. the client reset it while it waited
                log.debug("a handed-over connection could not be served: %r", result)
                sock.close()
                if protocol is None or self._connections.abandon(protocol):
                    failed += 1
        if failed:
            self._inbox.taken(failed)

    def close(self) -> None:
        """Stop taking connections; those still queued in the channel are closed with it."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._inbox.channel.fileno())
        self._inbox.channel.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class HandoffServer(graceful.GracefulServer):
    """:class:`~canaryws.adapters.server.graceful.GracefulServer` whose connections come from
    its ``inbox`` instead of a listening socket."""

    def __init__(self, config: uvicorn.Config, drain: ConnectionDrain, watchdog: graceful.ShutdownWatchdog,
                 inbox: Inbox, *, signals: Iterable[int], on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config, drain, watchdog, signals=tuple(signals), on_started=on_started)
        self.inbox = inbox
        self.published = PublishedConnections(inbox.live, inbox.taken)
        self.server_state.connections = self.published

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:  # noqa: ARG002 (uvicorn's name)
        await super().startup([])  # no listening socket: the supervisor accepts
        if self.started:  # (the ready signal may precede this: the channel queues what comes meanwhile)
            listener = HandoffListener(self.inbox, protocol_factory(self), self.published)
            self.servers.append(cast(asyncio.base_events.Server, listener))


def run(config: uvicorn.Config, drain: ConnectionDrain, shutdown_timeout: float, inbox: Inbox, *,
        signals: Iterable[int], on_started: Callable[[], None] | None = None) -> None:
    """:func:`canaryws.adapters.server.graceful.run` for a worker whose connections come from
    its supervisor through ``inbox``: the same server, bound and shutdown."""
    handled = tuple(signals)
    graceful.run(config, drain, shutdown_timeout, sockets=[], signals=handled,
                 make_server=lambda watchdog: HandoffServer(config, drain, watchdog, inbox, signals=handled,
                                                            on_started=on_started))
