"""uvicorn's server as ``canaryws serve`` runs it, with a bounded graceful shutdown.

On SIGTERM (or SIGINT) the process exits within ``shutdown_timeout`` seconds
(``CANARYWS_SHUTDOWN_TIMEOUT``, ``--shutdown-timeout``), counted from the signal:

1. **Stop accepting** (the listening sockets close) and **drain**
   (:class:`canaryws.adapters.asgi.drain.ConnectionDrain`):
   each WebSocket connection stops reading new frames, answers the frames it had already
   read, and is then closed with 1012 and a closing handshake, on its own, as soon as it
   has answered (its app task waits in ``receive()`` with nothing queued).
2. **Close the rest**: at the end of the drain, uvicorn's own shutdown sends 1012 to the
   connections still open (and drops them), waits for the connections and their tasks,
   and cancels what is left at the end of the connections' share of the bound.
3. **The app's shutdown** (the lifespan): background tasks stop, spans and metrics are
   flushed, in :func:`app_shutdown_budget` (a third of the bound, at most 5 s).
4. A **watchdog** thread, armed by the signal, ends the process with ``os._exit(1)`` when
   the bound passes and it is still alive, whatever is stuck (a client that never reads, an
   OTLP endpoint that never answers, a task that blocks the event loop, an exit handler).

A graceful shutdown exits 0 (uvicorn would re-raise the signal after its shutdown, which
kills the process with the signal's status instead); a forced one exits 1.

5. **Exit without the final collections** (:func:`exit_without_collecting`): what is left is
   frozen out of the garbage collector before the interpreter exits.

With ``--workers N`` each worker process runs this same server, handles SIGTERM only and has
no listening socket: its supervisor (:mod:`canaryws.adapters.server.supervisor`) accepts every
connection and hands it to the worker holding the fewest (:mod:`canaryws.adapters.server.handoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from socket import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from canaryws.adapters.asgi.drain import ConnectionDrain

log = logging.getLogger("canaryws.shutdown")

FORCED_EXIT_STATUS = 1
APP_SHUTDOWN_MAX_SECONDS = 5.0


def app_shutdown_budget(shutdown_timeout: float) -> float:
    """Seconds the app's own shutdown (the background tasks, then the telemetry flush) gets
    of the shutdown bound: a third of it, at most 5 s. The connections get the rest."""
    return min(APP_SHUTDOWN_MAX_SECONDS, shutdown_timeout / 3)


@dataclass(frozen=True, slots=True)
class ShutdownPlan:
    """How a shutdown bound is split; all in seconds from the signal.

    The connections get what the app's shutdown and a reserve leave; of their share the
    last part is kept for uvicorn's wait after the 1012 closes, so that connections that
    drained in time can finish even when another one used up the drain.
    """

    bound: float
    app: float  # the lifespan's shutdown: background tasks, then the telemetry flush
    reserve: float  # interpreter exit and scheduling noise, before the watchdog fires
    connections: float  # drain + close, from the signal
    settle: float  # the end of ``connections`` kept for uvicorn's wait after the closes

    @classmethod
    def for_bound(cls, bound: float) -> ShutdownPlan:
        app = app_shutdown_budget(bound)
        reserve = min(1.0, bound / 5)
        connections = max(bound - app - reserve, 0.0)
        return cls(bound, app, reserve, connections, min(1.0, connections / 4))

    @property
    def drain(self) -> float:
        """When the drain gives up on busy connections, from the signal."""
        return self.connections - self.settle


def _log_detached(level: int, message: str, extra: dict[str, Any]) -> threading.Thread:
    """Log from a daemon thread of its own: a log write that blocks (a full stderr pipe)
    must not hold up the watchdog."""
    thread = threading.Thread(
        target=log.log, args=(level, message), kwargs={"extra": extra}, name="canaryws-shutdown-log", daemon=True
    )
    thread.start()
    return thread


class ShutdownWatchdog:
    """A daemon thread that ends the process ``bound`` seconds after :meth:`arm`.

    :meth:`arm` is called from the signal handler: it only stores the time and sets an
    event (re-entry safe: a second signal returns before touching the event). The thread
    logs the start of the shutdown, sleeps until the bound, and if the process is still
    there logs an error and calls ``os._exit``. It is never disarmed: the interpreter's
    exit (thread joins, atexit handlers) is covered too, and a process that has exited
    takes its daemon threads with it.
    """

    def __init__(self, plan: ShutdownPlan) -> None:
        self.plan = plan
        self.started_at: float | None = None  # time.monotonic() of the first signal
        self.signal_name = ""
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canaryws-shutdown-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, sig: int) -> None:
        if self.started_at is not None:
            return
        self.started_at = time.monotonic()
        self.signal_name = signal.Signals(sig).name
        self._armed.set()

    def _run(self) -> None:
        self._armed.wait()
        assert self.started_at is not None
        plan = self.plan
        _log_detached(
            logging.INFO,
            "shutdown started",
            {
                "signal": self.signal_name,
                "shutdown_timeout": plan.bound,
                "connections_seconds": round(plan.connections, 3),
                "app_seconds": round(plan.app, 3),
            },
        )
        deadline = self.started_at + plan.bound
        while (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 3600.0))  # time.sleep refuses very long sleeps
        last_words = _log_detached(
            logging.ERROR,
            "shutdown did not finish within the shutdown timeout; forcing exit",
            {"signal": self.signal_name, "shutdown_timeout": plan.bound, "exit_status": FORCED_EXIT_STATUS},
        )
        last_words.join(0.5)
        os._exit(FORCED_EXIT_STATUS)


class GracefulServer(uvicorn.Server):
    """uvicorn's server with :class:`ConnectionDrain` before its shutdown, the connections'
    wait bounded by the :class:`ShutdownPlan` and the :class:`ShutdownWatchdog` armed by
    the first of ``signals``. The config's app must be wrapped in ``drain``. ``on_started``
    is called once the server listens and the app has started (a worker tells its
    supervisor so)."""

    def __init__(
        self,
        config: uvicorn.Config,
        drain: ConnectionDrain,
        watchdog: ShutdownWatchdog,
        *,
        signals: Sequence[int] = HANDLED_SIGNALS,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.watchdog = watchdog
        self.signals = tuple(signals)
        self.on_started = on_started
        self.drained: bool | None = None  # None: no drain ran

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.watchdog.arm(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without raising the captured signal again afterwards: after a graceful
        shutdown the process exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original_handlers = {sig: signal.signal(sig, self.handle_exit) for sig in self.signals}
        try:
            yield
        finally:
            for sig, handler in original_handlers.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        plan = self.watchdog.plan
        started = self.watchdog.started_at if self.watchdog.started_at is not None else time.monotonic()
        drain_deadline = started + plan.drain
        for server in self.servers:  # stop accepting first (uvicorn closes them again, harmlessly)
            server.close()
        drained = await self.drain.drain(drain_deadline - time.monotonic(), lambda: self.force_exit)
        # The closing handshakes: each protocol closes its TCP connection at the client's close frame.
        while (
            self.drain.closed & self.server_state.connections
            and time.monotonic() < drain_deadline
            and not self.force_exit
        ):
            await asyncio.sleep(0.05)
        self.drained = drained and not self.drain.closed & self.server_state.connections
        if not self.drained:
            log.warning(
                "connections not closed at the end of the drain; closing them now",
                extra={
                    "busy_connections": self.drain.busy,
                    "closing_connections": len(self.drain.closed & self.server_state.connections),
                },
            )
        # uvicorn's shutdown: 1012 to the connections left, then its wait (bounded by the rest of
        # the connections' share; uvicorn awaits it with asyncio.wait_for, which takes float seconds).
        self.config.timeout_graceful_shutdown = max(started + plan.connections - time.monotonic(), 0.0)  # type: ignore[assignment]
        await super().shutdown(sockets)


def run(
    config: uvicorn.Config,
    drain: ConnectionDrain,
    shutdown_timeout: float,
    *,
    sockets: list[socket] | None = None,
    signals: Sequence[int] = HANDLED_SIGNALS,
    on_started: Callable[[], None] | None = None,
    make_server: Callable[[ShutdownWatchdog], GracefulServer] | None = None,
) -> None:
    """Run ``config`` (whose app is ``drain``) until one of ``signals``, then shut down within
    the bound. ``sockets``: listening sockets bound by the caller; without them uvicorn binds
    the config's host and port. ``make_server``: the server for the watchdog, when it is not a
    :class:`GracefulServer` of these arguments (a worker's, fed by its supervisor:
    :mod:`canaryws.adapters.server.handoff`)."""
    watchdog = ShutdownWatchdog(ShutdownPlan.for_bound(shutdown_timeout))
    watchdog.start()
    server = make_server(watchdog) if make_server is not None else \
        GracefulServer(config, drain, watchdog, signals=signals, on_started=on_started)
    server.run(sockets)
    if watchdog.started_at is not None:
        log.info(
            "shutdown complete",
            extra={
                "signal": watchdog.signal_name,
                "seconds": round(time.monotonic() - watchdog.started_at, 3),
                "connections_drained": server.drained,
            },
        )
    exit_without_collecting()


def exit_without_collecting() -> None:
    """Let the interpreter exit without scanning what the service leaves behind.

    At exit, CPython's finalization runs full garbage collections while it tears the modules
    down, and each one walks every object still tracked: after a drain of 5,000 connections
    that took about 5 s of CPU between ``shutdown complete`` and the end of the process, with
    nothing left to do (measured with ``perf``: ``gc_collect_main``). Moved to the permanent
    generation (``gc.freeze``), those objects are not scanned; the process still runs its exit
    handlers and flushes its streams, and the memory goes back to the system with it.
    """
    gc.disable()
    gc.freeze()
