"""A text frame written straight to the connection's transport, when nothing else can be in its way.

Every answer the batch loop sends went through uvicorn's ``send`` (an ``asyncio.Event`` wait,
its state checks, ``str.encode``), websockets' ``send_text`` (a ``Frame`` object, its
``serialize`` into a ``BytesIO``, the protocol's list of pending writes) and a ``b"".join``
before the transport's ``write``: about 2 µs of Python per answer at the socket, a
sixth of what canaryws adds to lean's work per message (docs/benchmarks.md). The frame itself
is two to ten bytes of header and the payload the encoder already produced as bytes.

:func:`text_writer` gives the batch loop a function that writes an unfragmented, unmasked text
frame (RFC 6455 §5.2: FIN and opcode 1, the payload length in 7, 7+16 or 7+64 bits, no mask
from a server) with the transport's ``write`` and returns True, **only** while the protocol is
exactly where uvicorn's own ``send`` would do the same at once:

- the WebSocket is open (websockets' state ``OPEN``: no close frame sent or received, so
  uvicorn has not sent its close either) and the peer is connected (uvicorn's
  ``disconnected``: the TCP connection can be lost while the state is still ``OPEN``);
- the transport accepts writes (uvicorn's ``writable`` event: set unless the transport's
  buffer is above its high-water mark, when uvicorn's ``send`` waits);
- nothing is pending in websockets' outgoing buffer (uvicorn writes it out after every event,
  so it is always empty between them), and no fragmented message is in progress;
- no extension was negotiated (per-message deflate would transform the payload): then there
  is no writer at all.

Otherwise it returns False and writes nothing, and the caller sends the frame through the
ASGI ``send`` as before (which then waits, raises or closes as uvicorn decides). The protocol
stays the only owner of the connection's state: the writer reads it and changes nothing but
the bytes on the wire, in the order the protocol would have written them.

It needs uvicorn's sans-I/O WebSocket protocol behind ``send`` (``canaryws serve`` runs it, as
:class:`canaryws.adapters.server.ws_protocol.WebSocketProtocol`), whose bound ``send``, ``conn``
(a websockets ``ServerProtocol``), ``transport``, ``writable`` and ``disconnected`` it reads;
under another server or protocol there is no writer. tests/unit/test_frame_writer.py pins those internals
and checks the bytes against websockets' own ``Frame.serialize`` for every length class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from starlette.types import Send
from websockets.protocol import OPEN, Protocol

__all__ = ["frame_header", "text_writer"]

_FIN_TEXT: Final = 0x81  # FIN set, opcode 1 (text)
_SHORT: Final = tuple(bytes((_FIN_TEXT, n)) for n in range(126))  # lengths 0..125: two bytes
_MEDIUM: Final = bytes((_FIN_TEXT, 126))  # then the length in 16 bits (126..65,535)
_LONG: Final = bytes((_FIN_TEXT, 127))  # then the length in 64 bits


def frame_header(length: int) -> bytes:
    """The header of an unmasked, final text frame carrying ``length`` bytes (RFC 6455 §5.2)."""
    if length < 126:
        return _SHORT[length]
    if length < 65536:
        return _MEDIUM + length.to_bytes(2, "big")
    return _LONG + length.to_bytes(8, "big")


def text_writer(send: Send) -> Callable[[bytes], bool] | None:
    """A writer of text frames for the connection behind ``send`` (see the module), or None when
    ``send`` is not uvicorn's sans-I/O protocol's, or an extension was negotiated. Call it only
    after the handshake (``websocket.accept``)."""
    protocol: Any = getattr(send, "__self__", None)
    conn = getattr(protocol, "conn", None)
    if (
        not isinstance(conn, Protocol)
        or conn.extensions
        or not hasattr(protocol, "writable")
        or not hasattr(protocol, "disconnected")
        or getattr(protocol, "transport", None) is None
    ):
        return None
    writable = protocol.writable

    def write(payload: bytes) -> bool:
        """Write ``payload`` (UTF-8 text) as one text frame and return True; or write nothing and
        return False when the protocol's own ``send`` must handle it."""
        if (
            conn._state is not OPEN  # the property's own field (pinned by a test)
            or protocol.disconnected
            or not writable.is_set()
            or conn.writes
            or conn.expect_continuation_frame
        ):
            return False
        length = len(payload)
        header = _SHORT[length] if length < 126 else frame_header(length)
        protocol.transport.write(header + payload)
        return True

    return write
