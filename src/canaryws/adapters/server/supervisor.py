"""N worker processes serving one listening socket (``canaryws serve --workers N``).

The supervisor (the ``canaryws serve`` process):

1. binds and listens on the socket (:func:`listen`), then starts the workers with the
   *spawn* start method: fresh interpreters that inherit no threads, locks, OpenTelemetry
   providers, flag client or event loop. The supervisor builds none of these (no service,
   no telemetry, no thread); the composition (:mod:`canaryws.serve`) prepares the state
   the workers share on disk before;
2. restarts a worker that exits (immediately if it had started serving, else after a
   back-off from 1 s to 30 s), with a warning in the log. A worker that cannot start in
   the first place (the app, the telemetry or the socket is broken: every restart would
   fail the same way) stops the service, exit status 1;
3. on SIGTERM or SIGINT closes its copy of the socket and sends SIGTERM to every worker.
   Each worker drains and exits on its own, within ``CANARYWS_SHUTDOWN_TIMEOUT``
   (:mod:`canaryws.adapters.server.graceful`: answers, 1012, telemetry flush, watchdog).
   The supervisor exits 0 when every worker did, 1 when one was forced or crashed (a
   worker still starting that the signal ended counts as clean: it served nothing). It
   kills a worker still there a second after the bound, which only a worker its watchdog
   could not end can be.

uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) is not used: it hard-codes
the worker (a plain ``uvicorn.Server`` that re-raises the signal, so no drain and no exit
status), cannot give a worker its index (the trace file ``traces-<k>.jsonl`` needs one
writer), starts a second worker with the same index on SIGHUP, polls for signals every
0.5 s and waits for its workers without a bound.

Each worker runs the ``target`` the composition gives (:func:`canaryws.serve.run_worker`:
it builds the whole service itself, with ``CANARYWS_WORKER=<k>`` and
``service.instance.id=<base>-<k>`` in its environment mapping, :func:`worker_environ`;
``<base>``: the ``service.instance.id`` of ``OTEL_RESOURCE_ATTRIBUTES``, else
``<hostname>-<supervisor pid>``), after :func:`become_worker`: its log records carry
``worker`` and ``pid``, it handles SIGTERM only (Ctrl+C in a terminal reaches the whole
process group, and the supervisor turns it into one SIGTERM per worker), and a worker
whose supervisor disappears (``kill -9``) shuts itself down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from urllib.parse import quote, unquote

from canaryws.adapters.telemetry.environment import WORKER_VAR
from canaryws.settings import Settings

log = logging.getLogger("canaryws.workers")

STARTUP_FAILURE = 3  # a worker's exit status when it could not start (uvicorn's too)
BACKLOG = 2048  # uvicorn's default
RESTART_BACKOFF = (1.0, 30.0)  # seconds before restarting a worker that died before it served
KILL_GRACE = 1.0  # seconds after the bound before the supervisor kills a worker still there
SERVICE_INSTANCE_ID = "service.instance.id"

WorkerTarget = Callable[[Settings, int, socket.socket, Connection, int, str], None]
"""A worker's entry point: (settings, index, listening socket, ready pipe, supervisor pid,
instance id base); a module-level function, since *spawn* imports it by name."""


def listen(settings: Settings) -> socket.socket:
    """The listening socket the workers share (OSError when it cannot be bound)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def instance_id_base(environ: Mapping[str, str]) -> str:
    """``service.instance.id`` from ``OTEL_RESOURCE_ATTRIBUTES`` (the last one, as the
    resource reads it), else ``<hostname>-<this pid>``; worker ``k`` gets ``<base>-<k>``."""
    found: str | None = None
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip() == SERVICE_INSTANCE_ID:
            found = unquote(value.strip())
    return found or f"{socket.gethostname()}-{os.getpid()}"


def worker_environ(environ: Mapping[str, str], index: int, instance_base: str) -> dict[str, str]:
    """Worker ``index``'s environment mapping: its number (the trace file's name) and its
    own ``service.instance.id`` (appended to ``OTEL_RESOURCE_ATTRIBUTES``, where it wins)."""
    env = dict(environ)
    env[WORKER_VAR] = str(index)
    instance = f"{SERVICE_INSTANCE_ID}={quote(f'{instance_base}-{index}', safe='')}"
    attributes = env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    env["OTEL_RESOURCE_ATTRIBUTES"] = f"{attributes},{instance}" if attributes else instance
    return env


# -- the worker process --------------------------------------------------------------


class _WorkerFields(logging.Filter):
    """Adds ``worker`` and ``pid`` to every record a worker logs (they share stderr)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        record.pid = self.pid
        return True


def _exit_with_supervisor(supervisor_pid: int) -> None:
    """Shut the worker down (gracefully) once its supervisor is gone."""
    while os.getppid() == supervisor_pid:
        time.sleep(0.5)
    log.warning("the supervisor process is gone; shutting down", extra={"supervisor_pid": supervisor_pid})
    os.kill(os.getpid(), signal.SIGTERM)


def become_worker(index: int, supervisor_pid: int, log_level: str) -> None:
    """What every worker does first, in its spawned interpreter: leave Ctrl+C to the
    supervisor (it started us with SIGINT blocked), log as JSON with ``worker`` and ``pid``,
    and watch for the supervisor's disappearance."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    from canaryws.adapters.telemetry.logs import configure_logging

    configure_logging(level=log_level)
    fields = _WorkerFields(index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(fields)
    threading.Thread(
        target=_exit_with_supervisor, args=(supervisor_pid,), name="canaryws-supervisor-watch", daemon=True
    ).start()


def ready_signal(ready: Connection) -> Callable[[], None]:
    """The callback a worker's server calls once serving: tells the supervisor."""

    def started() -> None:
        with contextlib.suppress(OSError):
            ready.send_bytes(b"ready")
            ready.close()

    return started


# -- the supervisor ------------------------------------------------------------------


@dataclass
class _Worker:
    index: int  # 1..N: the slot it fills
    process: BaseProcess
    ready_pipe: Connection  # the worker writes to it once serving
    ready: bool = False
    stopped: bool = False  # the supervisor sent it SIGTERM


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


class Supervisor:
    """Runs ``settings.workers`` workers (each ``target``) on ``sock`` until SIGTERM/SIGINT
    (see the module doc)."""

    def __init__(self, settings: Settings, sock: socket.socket, target: WorkerTarget) -> None:
        self.settings = settings
        self.sock = sock
        self.target = target
        self.instance_base = instance_id_base(settings.environ)
        self._context = get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._established: set[int] = set()  # slots whose worker served at least once
        self._backoff: dict[int, float] = {}  # slot -> the last restart delay
        self._due: dict[int, float] = {}  # slot -> monotonic time of its delayed restart
        self._signal: int | None = None
        self._signalled_at: float | None = None
        self._failed = False  # a worker could not start

    def _on_signal(self, sig: int, _frame: object) -> None:
        if self._signal is None:
            self._signal, self._signalled_at = sig, time.monotonic()

    def run(self) -> int:
        """Supervise until a signal (or a worker that cannot start); the exit status."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            host, port = self.sock.getsockname()[:2]
            log.info(
                "canaryws listening; starting workers",
                extra={"host": host, "port": port, "workers": self.settings.workers, "supervisor_pid": os.getpid()},
            )
            for index in range(1, self.settings.workers + 1):
                self._start(index)
            self._supervise(wake_r)
            return self._stop()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
            self.sock.close()

    def _start(self, index: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=self.target,
            args=(self.settings, index, self.sock, writer, os.getpid(), self.instance_base),
            name=f"canaryws-worker-{index}",
        )
        # The worker starts with SIGINT blocked (inherited through exec): see become_worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            writer.close()
        self._workers[index] = _Worker(index, process, reader)

    def _supervise(self, wake: socket.socket) -> None:
        while self._signal is None and not self._failed:
            timeout = max(min(self._due.values()) - time.monotonic(), 0.0) if self._due else None
            workers = list(self._workers.values())
            wait(
                [wake, *(w.process.sentinel for w in workers), *(w.ready_pipe for w in workers if not w.ready)],
                timeout,
            )
            with contextlib.suppress(OSError):
                while wake.recv(512):
                    pass
            if self._signal is not None:
                return
            for worker in workers:
                self._check(worker)
            now = time.monotonic()
            for index, due in sorted(self._due.items()):
                if due <= now and not self._failed:
                    del self._due[index]
                    self._start(index)

    def _check(self, worker: _Worker) -> None:
        if not worker.ready and worker.ready_pipe.poll():
            try:
                worker.ready_pipe.recv_bytes()
            except (EOFError, OSError):
                pass  # it died before it served: see below
            else:
                worker.ready = True
                self._established.add(worker.index)
                self._backoff.pop(worker.index, None)
                log.info("worker serving", extra={"worker": worker.index, "pid": worker.process.pid})
        exitcode = worker.process.exitcode
        if exitcode is None:
            return
        worker.ready_pipe.close()
        del self._workers[worker.index]
        details = {"worker": worker.index, "pid": worker.process.pid, "exit_status": exitcode}
        if not worker.ready and worker.index not in self._established:
            log.error(f"worker could not start ({_describe(exitcode)}); stopping the service", extra=details)
            self._failed = True
            return
        delay = 0.0
        if not worker.ready:  # it died again before it served: wait longer each time
            low, high = RESTART_BACKOFF
            delay = min(max(2 * self._backoff.get(worker.index, 0.0), low), high)
            self._backoff[worker.index] = delay
        log.warning(
            f"worker exited unexpectedly ({_describe(exitcode)}); restarting it",
            extra={**details, "restart_in_seconds": delay},
        )
        if delay:
            self._due[worker.index] = time.monotonic() + delay
        else:
            self._start(worker.index)

    def _stop(self) -> int:
        started = self._signalled_at if self._signalled_at is not None else time.monotonic()
        bound = self.settings.shutdown_timeout
        workers = list(self._workers.values())
        log.info(
            "stopping workers",
            extra={
                "signal": signal.Signals(self._signal).name if self._signal is not None else None,
                "shutdown_timeout": bound,
                "workers": {str(w.index): w.process.pid for w in workers},
            },
        )
        self.sock.close()  # new connections queue for no one once the workers close theirs too
        for worker in workers:
            if worker.process.exitcode is None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
                worker.stopped = True
        deadline = started + bound + KILL_GRACE
        for worker in workers:
            worker.process.join(max(deadline - time.monotonic(), 0.0))
        for worker in workers:
            if worker.process.exitcode is None:
                log.error(
                    "worker still running after the shutdown timeout; killing it",
                    extra={"worker": worker.index, "pid": worker.process.pid, "shutdown_timeout": bound},
                )
                worker.process.kill()
                worker.process.join()
        status = 1 if self._failed else 0
        for worker in workers:
            exitcode = worker.process.exitcode
            assert exitcode is not None
            # A worker the signal ended while it was starting served nothing: that is clean.
            if exitcode != 0 and not (exitcode == -signal.SIGTERM and worker.stopped and not worker.ready):
                status = 1
                log.error(
                    f"worker did not stop cleanly ({_describe(exitcode)})",
                    extra={"worker": worker.index, "pid": worker.process.pid, "exit_status": exitcode},
                )
            worker.ready_pipe.close()
        log.info(
            "workers stopped",
            extra={
                "seconds": round(time.monotonic() - started, 3),
                "exit_statuses": {str(w.index): w.process.exitcode for w in workers},
                "exit_status": status,
            },
        )
        return status
