"""The handshake's answer and the welcome frame, written to the socket at once.

A connection's first two writes are the server's ``101 Switching Protocols`` (at
``websocket.accept``) and, right after it, the welcome frame. Written one by one they are two
``write`` calls and two TCP segments, each waking the client: about a tenth of a connection's
whole cost at the server (docs/benchmarks.md, "Handshakes"). :func:`hold_writes` puts a
stand-in for the server protocol's transport in its place until :meth:`HeldWrites.release`,
which writes what the protocol wrote meanwhile in one call.

It needs the server protocol behind the ASGI ``send`` (uvicorn's WebSocket protocols hand the
application their bound ``send``, whose ``transport`` attribute they write to; the same
internal as :mod:`canaryws.adapters.asgi.expose_abort`). Under another server it holds
nothing. Only the calls between the two writes may run while it holds: they are synchronous
(uvicorn's ``send`` suspends only while the transport's buffer is full, which a held transport
never reports), so nothing the peer does is read meanwhile.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Send

__all__ = ["HeldWrites", "hold_writes"]


class HeldWrites:
    """What a server protocol wrote while its transport was held (see the module)."""

    __slots__ = ("_chunks", "_protocol", "_transport")

    def __init__(self, protocol: Any = None, transport: Any = None) -> None:
        self._protocol = protocol
        self._transport = transport
        self._chunks: list[bytes] = []

    # -- the transport, as the protocol sees it while held ---------------------------

    def write(self, data: bytes) -> None:
        self._chunks.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self._chunks.extend(bytes(chunk) for chunk in chunks)

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport's
        return getattr(self._transport, name)

    # -- the holder's side -------------------------------------------------------

    @property
    def holding(self) -> bool:
        return self._protocol is not None

    def release(self) -> None:
        """Give the protocol its transport back and write what was held, in one call (nothing
        when the transport is closing: the connection is going). Idempotent."""
        protocol, transport = self._protocol, self._transport
        if protocol is None:
            return
        self._protocol = None
        if getattr(protocol, "transport", None) is self:
            protocol.transport = transport
        chunks, self._chunks = self._chunks, []
        if chunks and not transport.is_closing():
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


_NOT_HELD = HeldWrites()


def hold_writes(send: Send | None) -> HeldWrites:
    """Hold the writes of the server protocol behind ``send`` until ``release()``; a holder
    that holds nothing when there is no such protocol (another server, a test's channel)."""
    protocol: Any = getattr(send, "__self__", None)
    transport = getattr(protocol, "transport", None)
    if transport is None or not callable(getattr(transport, "write", None)) or isinstance(transport, HeldWrites):
        return _NOT_HELD
    held = HeldWrites(protocol, transport)
    protocol.transport = held
    return held
