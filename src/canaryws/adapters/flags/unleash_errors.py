"""What can go wrong when canaryws talks to an Unleash server (Admin API and client API).

Raised by the HTTP session (:mod:`~canaryws.adapters.flags.unleash_http`), the projection
of its answers (:mod:`~canaryws.adapters.flags.unleash_projection`), the Admin API client
(:mod:`~canaryws.adapters.flags.unleash_admin`) and the export
(:mod:`~canaryws.adapters.flags.unleash_export`). No message ever contains a token.
"""

from __future__ import annotations


class UnleashError(Exception):
    """Unleash cannot be used: bad settings, an unexpected answer. Never holds a token.

    ``status`` is the HTTP status of the answer that caused it, if any.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnleashUnreachable(UnleashError):
    """No HTTP answer: connection refused, DNS failure, timeout."""


class UnleashAuthError(UnleashError):
    """Unleash answered 401 or 403 to the token."""
