"""Running the composed service (:mod:`canaryws.app`): in this process, or as N worker
processes to which a supervisor hands the connections of one listening socket.
``canaryws serve`` parses its options into :class:`~canaryws.settings.Settings` and calls
:func:`serve`; nothing else starts a server."""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import replace
from multiprocessing.connection import Connection

from canaryws.adapters.server import graceful, handoff, supervisor
from canaryws.adapters.server.config import uvicorn_config
from canaryws.app import Service, build_service, prepare_shared_state, startup_error
from canaryws.settings import Settings

log = logging.getLogger("canaryws.workers")


class CannotStart(Exception):
    """The service cannot start: its message is the operator's ("cannot start: …")."""


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, with ``settings.workers`` processes; the exit status.
    Logging must be configured already. CannotStart for a bad flags document, revocation
    list, credential or listening address."""
    if settings.workers > 1:
        return serve_workers(settings)
    service = _build(settings)
    _run(service, settings)
    return 0


def serve_workers(settings: Settings) -> int:
    """Prepare the shared state once, listen, and supervise ``settings.workers`` workers
    (:mod:`canaryws.adapters.server.supervisor`), each running :func:`run_worker`."""
    try:
        prepare_shared_state(settings)
    except Exception as exc:
        message = startup_error(exc, settings)
        if message is None:
            raise
        raise CannotStart(message) from None
    try:
        sock = supervisor.listen(settings)
    except OSError as exc:
        raise CannotStart(
            f"cannot start: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    return supervisor.Supervisor(settings, sock, run_worker).run()


def run_worker(
    settings: Settings, index: int, inbox: handoff.Inbox, ready: Connection, supervisor_pid: int, instance_base: str
) -> None:
    """A worker's entry point, in a spawned interpreter: build the service, serve the
    connections the supervisor hands over through ``inbox`` until SIGTERM, tell the
    supervisor through ``ready`` once serving."""
    supervisor.become_worker(index, supervisor_pid, settings.log_level)
    settings = replace(settings, environ=supervisor.worker_environ(settings.environ, index, instance_base))
    try:
        service = _build(settings)
    except CannotStart as exc:
        log.error(str(exc))
        sys.exit(supervisor.STARTUP_FAILURE)
    except Exception:
        log.exception("worker could not start")
        sys.exit(supervisor.STARTUP_FAILURE)
    _run(service, settings, inbox=inbox, ready=ready)


def _build(settings: Settings) -> Service:
    try:
        return build_service(settings)
    except Exception as exc:
        message = startup_error(exc, settings)
        if message is None:
            raise
        raise CannotStart(message) from None


def _run(service: Service, settings: Settings, *, inbox: handoff.Inbox | None = None,
         ready: Connection | None = None) -> None:
    """Serve until the signal: this process's own listening socket, or (a worker: SIGTERM
    only) the connections coming through ``inbox``."""
    config = uvicorn_config(service.drain, settings, service.records.refused)
    on_started = supervisor.ready_signal(ready) if ready is not None else None
    if inbox is not None:
        handoff.run(config, service.drain, settings.shutdown_timeout, inbox, signals=(signal.SIGTERM,),
                    on_started=on_started)
    else:
        graceful.run(config, service.drain, settings.shutdown_timeout, on_started=on_started)
