"""A Prometheus registry served at ``/metrics`` by prometheus_client's HTTP server thread: the
commands that run beside the service (``guard``, ``rollout``, ``probe``) each serve their own
registry this way (the service's metrics are served by its own ``/metrics`` route)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


class MetricsEndpoint:
    """``/metrics`` of one registry on ``host:port``, until :meth:`close`."""

    def __init__(self, server: WSGIServer) -> None:
        self._server: WSGIServer | None = server
        bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
        self.address = f"http://{url_host(bound_host)}:{bound_port}/metrics"

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int, log: logging.Logger,
              what: str) -> MetricsEndpoint:
        """Serve ``registry`` (OSError when the address cannot be bound); logs ``<what> metrics served``."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=registry)
        endpoint = cls(server)
        log.info(f"{what} metrics served", extra={"metrics_url": endpoint.address})
        return endpoint

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
