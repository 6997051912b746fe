"""The ASGI scope keys the service's wrappers set for the ``/records`` endpoint."""

from __future__ import annotations

from typing import Final

ACCESS_TOKEN_SCOPE_KEY: Final = "canaryws.access_token"  # the browser's ?access_token=, moved out of the query
ABORT_SCOPE_KEY: Final = "canaryws.abort"  # the server transport's abort(): drops the TCP connection
CHANNEL_SCOPE_KEY: Final = "canaryws.channel"  # (receive, send) as the server handed them, unwrapped
OWES_ANSWERS_SCOPE_KEY: Final = "canaryws.owes_answers"
"""A callable the batch loop sets: True while batches it read still wait for their answers (on
the sink). The drain closes a connection only once it owes none."""
