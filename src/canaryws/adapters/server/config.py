"""The uvicorn configuration canaryws runs with (every worker alike)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import uvicorn

from canaryws.adapters.asgi.drain import ConnectionDrain
from canaryws.adapters.server.door import (
    PROBE_HEADROOM,
    effective_max_connections,
    guarded_http_protocol,
    raise_open_files_limit,
)
from canaryws.adapters.server.ws_protocol import WebSocketProtocol
from canaryws.settings import Settings

log = logging.getLogger("canaryws.server")


def check_shutdown_timeout(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"the shutdown timeout must be a positive number of seconds, not {seconds!r}")


def max_connections_for(settings: Settings) -> int:
    """``CANARYWS_MAX_CONNECTIONS``, lowered (with a warning) to what the process may open
    after lifting its soft limit on open files to the hard one."""
    open_files = raise_open_files_limit()
    max_connections = effective_max_connections(settings.max_connections, open_files)
    if max_connections < settings.max_connections:
        log.warning("CANARYWS_MAX_CONNECTIONS=%d is above what the process may open (%d files): %d connections",
                    settings.max_connections, open_files, max_connections)
    return max_connections


def uvicorn_config(app: ConnectionDrain, settings: Settings,
                   on_refused: Callable[[str], None] | None = None) -> uvicorn.Config:
    """The uvicorn configuration ``canaryws serve`` runs ``app`` with (every worker alike):
    the door's HTTP protocol (:mod:`canaryws.adapters.server.door`) with its refusals counted by
    ``on_refused``, and uvicorn's sans-I/O WebSocket protocol with its fast path for complete text
    frames (:mod:`canaryws.adapters.server.ws_protocol`)."""
    max_connections = max_connections_for(settings)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_http_protocol(header_timeout=settings.header_timeout,
                                   max_sockets=max_connections + PROBE_HEADROOM, on_refused=on_refused),
        ws=WebSocketProtocol,  # uvicorn's websockets-sansio, reading the common frame itself
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.per_message_deflate,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
    )
