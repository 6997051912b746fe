"""N worker processes serving one listening socket (``canaryws serve --workers N``).

The supervisor (the ``canaryws serve`` process):

1. binds and listens on the socket (:func:`listen`), then starts the workers with the
   *spawn* start method: fresh interpreters that inherit no threads, locks, OpenTelemetry
   providers, flag client or event loop. The supervisor builds none of these (no service,
   no telemetry, no thread); the composition (:mod:`canaryws.serve`) prepares the state
   the workers share on disk before;
2. **accepts every connection itself and hands it to the worker that holds the fewest**
   (ties go round-robin), like Node's cluster module: the descriptor goes over the worker's
   channel (:mod:`canaryws.adapters.server.handoff`: an ``AF_UNIX`` socket pair,
   ``SCM_RIGHTS``), then the supervisor closes its copy; the worker serves it from there
   on, the supervisor never sees a byte of it. Only workers that are serving get
   connections (until one is, they wait in the listening socket's backlog). A worker's
   count is what it publishes in shared memory (connections it holds, descriptors it has
   taken) plus what was sent to it and not taken yet, so a worker that stops reading its
   channel stops getting connections. Accepting is cheap and never blocks: the socket is
   non-blocking, each wake-up accepts until ``EAGAIN`` (:data:`ACCEPT_BATCH` at most) and
   sends each worker its share in one message; it pauses (the connections wait in the
   backlog) while :data:`MAX_PENDING` accepted connections wait for a full channel, and
   for a moment when the process runs out of descriptors.
   (The kernel spreading connections among workers that all accept on a shared socket, or
   with ``SO_REUSEPORT``, has no notion of load: a burst of 50 often landed 36 / 14.)
3. restarts a worker that exits (immediately if it had started serving, else after a
   back-off from 1 s to 30 s), with a warning in the log. The connections it held are gone
   with it; those still queued in its channel, which it never read, are taken back and
   handed to the other workers. A worker that cannot start in the first place (the app,
   the telemetry or the socket is broken: every restart would fail the same way) stops the
   service, exit status 1;
4. on SIGTERM or SIGINT stops accepting (closes the socket; connections accepted and not
   yet handed over are closed) and sends SIGTERM to every worker.
   Each worker drains and exits on its own, within ``CANARYWS_SHUTDOWN_TIMEOUT``
   (:mod:`canaryws.adapters.server.graceful`: answers, 1012, telemetry flush, watchdog;
   closing its channel first, which closes what was still queued in it).
   The supervisor exits 0 when every worker did, 1 when one was forced or crashed (a
   worker still starting that the signal ended counts as clean: it served nothing). It
   kills a worker still there a second after the bound, which only a worker its watchdog
   could not end can be.

uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) is not used: it hard-codes
the worker (a plain ``uvicorn.Server`` that re-raises the signal, so no drain and no exit
status), cannot give a worker its index (the trace file ``traces-<k>.jsonl`` needs one
writer), starts a second worker with the same index on SIGHUP, polls for signals every
0.5 s, waits for its workers without a bound, and leaves the balance to the kernel.

Each worker runs the ``target`` the composition gives (:func:`canaryws.serve.run_worker`:
it builds the whole service itself, with ``CANARYWS_WORKER=<k>`` and
``service.instance.id=<base>-<k>`` in its environment mapping, :func:`worker_environ`;
``<base>``: the ``service.instance.id`` of ``OTEL_RESOURCE_ATTRIBUTES``, else
``<hostname>-<supervisor pid>``; it serves what comes through its
:class:`~canaryws.adapters.server.handoff.Inbox`), after :func:`become_worker`: its log
records carry ``worker`` and ``pid``, it handles SIGTERM only (Ctrl+C in a terminal
reaches the whole process group, and the supervisor turns it into one SIGTERM per worker),
and a worker whose supervisor disappears (``kill -9``) shuts itself down.

``canaryws serve`` with one worker (the default) runs no supervisor: the process serves its
own listening socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from urllib.parse import quote, unquote

from canaryws.adapters.server import handoff
from canaryws.adapters.telemetry.environment import WORKER_VAR
from canaryws.settings import Settings

log = logging.getLogger("canaryws.workers")

STARTUP_FAILURE = 3  # a worker's exit status when it could not start (uvicorn's too)
BACKLOG = 4096  # connections the kernel queues for the supervisor (capped by net.core.somaxconn)
RESTART_BACKOFF = (1.0, 30.0)  # seconds before restarting a worker that died before it served
KILL_GRACE = 1.0  # seconds after the bound before the supervisor kills a worker still there
SERVICE_INSTANCE_ID = "service.instance.id"
ACCEPT_BATCH = 1024  # connections accepted per wake-up, at most, before the supervisor looks at the rest
MAX_PENDING = 4096  # accepted connections waiting for a worker's channel, beyond which accepting pauses
OUT_OF_FILES_PAUSE = 0.1  # seconds without accepting after the process ran out of descriptors
SEND_PAUSE = 0.01  # seconds before sending again after the kernel refused (too many descriptors in flight)
_OUT_OF_FILES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

WorkerTarget = Callable[[Settings, int, handoff.Inbox, Connection, int, str], None]
"""A worker's entry point: (settings, index, its inbox (channel and counters), ready pipe,
supervisor pid, instance id base); a module-level function, since *spawn* imports it by name."""


def listen(settings: Settings) -> socket.socket:
    """The listening socket the supervisor accepts on (OSError when it cannot be bound)."""
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
    channel: socket.socket  # the supervisor's end of its channel
    peer: socket.socket | None  # a copy of the worker's end: what it never read can be taken back
    counters: handoff.SharedCounters  # [taken, live], written by the worker
    sent: int = 0  # descriptors sent over the channel
    outbox: list[int] = field(default_factory=list)  # accepted for it, not sent yet (the channel was full)
    send_after: float = 0.0  # monotonic time before which sending waits (the kernel refused more in flight)
    ready: bool = False
    stopped: bool = False  # the supervisor sent it SIGTERM

    def load(self) -> int:
        """The connections it holds or will hold: published, in flight, and waiting here."""
        return self.sent - int(self.counters[handoff.TAKEN]) + int(self.counters[handoff.LIVE]) + len(self.outbox)


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: connections wait here between
    accept and hand-over (a reconnect storm), and the workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class Supervisor:
    """Runs ``settings.workers`` workers (each ``target``) and hands them the connections of
    ``sock`` until SIGTERM/SIGINT (see the module doc)."""

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
        self._orphans: list[int] = []  # accepted connections whose worker died before taking them
        self._next = 0  # where the round-robin among equally loaded workers resumes
        self._accept_after = 0.0  # monotonic time before which accepting waits (out of descriptors)
        self._warned_at = float("-inf")  # monotonic time of the last warning about accepting or handing over

    def _on_signal(self, sig: int, _frame: object) -> None:
        if self._signal is None:
            self._signal, self._signalled_at = sig, time.monotonic()

    def run(self) -> int:
        """Supervise until a signal (or a worker that cannot start); the exit status."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self.sock.setblocking(False)
        _raise_open_files_limit()
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            host, port = self.sock.getsockname()[:2]
            log.info(
                "canaryws listening; starting workers",
                extra={"host": host, "port": port, "workers": self.settings.workers, "supervisor_pid": os.getpid(),
                       "balance": "fewest connections"},
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
            _close_all(self._orphans)
            for worker in self._workers.values():
                self._close_channel(worker)

    def _start(self, index: int) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        ours, theirs = handoff.channel_pair()
        counters = handoff.new_counters(self._context.RawArray)
        process = self._context.Process(
            target=self.target,
            args=(self.settings, index, handoff.Inbox(theirs, counters), writer, os.getpid(), self.instance_base),
            name=f"canaryws-worker-{index}",
        )
        # The worker starts with SIGINT blocked (inherited through exec): see become_worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            writer.close()
        self._workers[index] = _Worker(index, process, reader, ours, theirs, counters)

    # -- the loop ------------------------------------------------------------------

    def _pending(self) -> int:
        return len(self._orphans) + sum(len(w.outbox) for w in self._workers.values())

    def _supervise(self, wake: socket.socket) -> None:
        while self._signal is None and not self._failed:
            now = time.monotonic()
            workers = list(self._workers.values())
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            wakeups = [*self._due.values()]
            pending = len(self._orphans)
            serving = False
            for worker in workers:
                poller.register(worker.process.sentinel, select.POLLIN)
                if not worker.ready:
                    poller.register(worker.ready_pipe, select.POLLIN)
                    continue
                serving = True
                if worker.outbox:
                    pending += len(worker.outbox)
                    if worker.send_after > now:
                        wakeups.append(worker.send_after)
                    else:
                        poller.register(worker.channel, select.POLLOUT)
            accepting = serving and pending < MAX_PENDING
            if accepting and self._accept_after > now:
                accepting = False
                wakeups.append(self._accept_after)
            if accepting:
                poller.register(self.sock, select.POLLIN)
            timeout = None if not wakeups else max(min(wakeups) - now, 0.0) * 1000 + 1
            events = dict(poller.poll(timeout))
            if wake.fileno() in events:
                with contextlib.suppress(OSError):
                    while wake.recv(512):
                        pass
            if self._signal is not None:
                return
            now = time.monotonic()
            if accepting and self.sock.fileno() in events:
                self._accept(now)
            for worker in workers:
                if worker.process.sentinel in events or (not worker.ready and worker.ready_pipe.fileno() in events):
                    self._check(worker)
            if self._orphans:
                self._hand_out(self._orphans, now)
            for worker in self._workers.values():
                if worker.ready and worker.outbox:
                    self._send(worker, now)
            for index, due in sorted(self._due.items()):
                if due <= now and not self._failed:
                    del self._due[index]
                    self._start(index)

    def _accept(self, now: float) -> None:
        """Accept until EAGAIN (or :data:`ACCEPT_BATCH`), each connection into the outbox of
        the worker that holds the fewest; their sending follows."""
        accepted: list[int] = []
        for _ in range(ACCEPT_BATCH):
            try:
                # socket.accept()'s own first step: the descriptor, without the socket object it
                # then builds (whose family and type lookups cost as much as the system call)
                fd, _address = self.sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                break
            except ConnectionAbortedError:  # the client gave up while it waited in the backlog
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_FILES:  # that connection's own error (EPROTO, EPERM, ...): the next
                    self._warn(now, f"a connection failed before it was accepted: {exc.strerror or exc}")
                    continue
                self._accept_after = now + OUT_OF_FILES_PAUSE
                self._warn(now, f"cannot accept connections: {exc.strerror}; pausing",
                           pause_seconds=OUT_OF_FILES_PAUSE, pending=self._pending())
                break
            accepted.append(fd)
        if accepted:
            self._hand_out(accepted, now)
            self._orphans.extend(accepted)  # (none: accepting waits for a serving worker)

    def _hand_out(self, fds: list[int], now: float) -> None:
        """Put ``fds`` into the outboxes of the serving workers, each to the one with the
        fewest connections (ties: round-robin); ``fds`` is emptied. Nothing when none serves."""
        ready = [w for w in self._workers.values() if w.ready]
        if not ready:
            return
        loads = [w.load() for w in ready]
        count = len(ready)
        for fd in fds:
            start = self._next % count
            best = start
            for step in range(1, count):
                k = (start + step) % count
                if loads[k] < loads[best]:
                    best = k
            ready[best].outbox.append(fd)
            loads[best] += 1
            self._next = best + 1
        fds.clear()
        for worker in ready:
            self._send(worker, now)

    def _send(self, worker: _Worker, now: float) -> None:
        """Send ``worker``'s outbox, a message per :data:`~handoff.MAX_FDS_PER_MESSAGE`
        descriptors, closing the supervisor's copies; what a full channel refuses waits."""
        while worker.outbox and worker.send_after <= now:
            chunk = worker.outbox[:handoff.MAX_FDS_PER_MESSAGE]
            try:
                handoff.send_fds(worker.channel, chunk)
            except BlockingIOError:  # the channel is full: POLLOUT says when to go on
                return
            except OSError as exc:  # ETOOMANYREFS: too many descriptors in flight for this user; ENOBUFS, ...
                worker.send_after = now + SEND_PAUSE
                if exc.errno != errno.ETOOMANYREFS:
                    self._warn(now, f"cannot hand connections to a worker: {exc.strerror or exc}; retrying",
                               worker=worker.index, waiting=len(worker.outbox))
                return
            del worker.outbox[:len(chunk)]
            worker.sent += len(chunk)
            for fd in chunk:
                os.close(fd)

    def _warn(self, now: float, message: str, **details: object) -> None:
        """A warning about accepting or handing over, at most one every 10 s."""
        if now - self._warned_at > 10:
            self._warned_at = now
            log.warning(message, extra=details)

    def _take_back(self, worker: _Worker) -> list[int]:
        """The connections a dead worker never took: its outbox, and what is still queued in
        its channel (read from the supervisor's copy of the worker's end)."""
        fds = list(worker.outbox)
        worker.outbox.clear()
        if worker.peer is not None:
            while received := handoff.receive_fds(worker.peer):
                fds.extend(received)
        return fds

    def _close_channel(self, worker: _Worker) -> None:
        _close_all(worker.outbox)
        if worker.peer is not None:
            worker.peer.close()
            worker.peer = None
        worker.channel.close()

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
        taken_back = self._take_back(worker)
        self._close_channel(worker)
        self._orphans.extend(taken_back)
        details = {"worker": worker.index, "pid": worker.process.pid, "exit_status": exitcode,
                   "connections_taken_back": len(taken_back)}
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
        # Stop accepting: what waits in the backlog, or here for a channel, is closed. What is
        # queued in a channel is closed when its worker closes its end (the start of its drain).
        self.sock.close()
        _close_all(self._orphans)
        for worker in workers:
            _close_all(worker.outbox)
            if worker.peer is not None:
                worker.peer.close()
                worker.peer = None
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
