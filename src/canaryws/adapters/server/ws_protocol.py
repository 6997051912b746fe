"""uvicorn's sans-I/O WebSocket protocol, reading the common frame itself.

Every frame a client sends went through websockets' parser: the bytes appended to its
``StreamReader``'s buffer, a generator resumed through ``at_eof``, ``Frame.parse`` and three
``read_exact`` steps, a ``Frame`` dataclass and its checks, the protocol's event list, then
uvicorn's dispatch on the event's type: about 3 µs of Python per frame at the socket, for a
frame whose header is two to fourteen bytes (docs/benchmarks.md).

:class:`WebSocketProtocol` is that protocol (``canaryws serve`` runs it in place of
``ws="websockets-sansio"``) with one change: when bytes arrive while websockets' parser is
waiting at a frame boundary with nothing buffered, it reads the complete frames at their start
that are **final, masked text frames with no reserved bit, within the size limit** itself
(RFC 6455 §5.2: header, 16- or 64-bit length, the 4-byte mask, the payload, unmasked with
websockets' own C ``apply_mask``) and hands each to uvicorn's own
``send_receive_event_to_app``, exactly as uvicorn's ``handle_text`` does for such a frame
(the UTF-8 decode, a 1007 close for invalid text, the queue, the read pause). The first byte
that is anything else (a ping, a pong, a close, a binary or fragmented frame, an unmasked
frame, reserved bits, a frame over the limit, a frame not complete yet) and everything after it
go to websockets' parser as before, which then starts at a frame boundary, as it expects.
Nothing else is taken over: the fast path applies only while

- the connection is open (websockets' state ``OPEN``; not before the handshake's answer, nor
  once a close was sent or received, by uvicorn or by websockets on a protocol error);
- no extension was negotiated (per-message deflate sets a reserved bit and transforms the
  payload) and no fragmented message is in progress (``current_size``);
- websockets' parser waits in ``StreamReader.at_eof`` with an empty buffer (read from its
  generator's ``gi_yieldfrom`` chain), and its debug logging is off (it would log each frame).

One difference to uvicorn's own protocol remains, on the error path only: when a read holds valid
messages and then a frame the protocol refuses (unmasked, a reserved bit, over the size limit),
uvicorn drops the valid ones that websockets parsed in the same read, so what it delivers depends
on where TCP cut the stream; this protocol delivers every message before the refused frame.

tests/unit/test_ws_protocol.py feeds the same byte streams, cut at random places, to this
protocol and to uvicorn's and checks that the application receives the same messages and the
client the same bytes, and pins the internals read here.
"""

from __future__ import annotations

from typing import Any, Final

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import frames
from websockets.protocol import OPEN
from websockets.streams import StreamReader

__all__ = ["WebSocketProtocol", "at_frame_boundary"]

# websockets' own unmasking: its C speedup where built (what Frame.parse calls), else its Python one
apply_mask: Final = frames.apply_mask  # type: ignore[attr-defined]

_AT_EOF: Final = StreamReader.at_eof.__code__
_FIN_TEXT: Final = 0x81  # FIN, no reserved bit, opcode 1 (text)
_MASKED: Final = 0x80


def at_frame_boundary(conn: Any) -> bool:
    """websockets' parser is waiting for the first byte of a frame, with nothing buffered."""
    if conn.reader.buffer:
        return False
    generator = conn.parser
    for _ in range(4):  # ServerProtocol.parse -> Protocol.parse -> StreamReader.at_eof
        inner = generator.gi_yieldfrom
        if inner is None:
            return False
        if inner.gi_code is _AT_EOF:
            return True
        generator = inner
    return False


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, reading complete final text frames at a frame
    boundary itself (see the module)."""

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if (
            conn._state is not OPEN  # the property's own field (pinned by a test)
            or conn.current_size is not None
            or conn.extensions
            or conn.debug
            or not at_frame_boundary(conn)
        ):
            super().data_received(data)
            return
        limit = conn.max_message_size
        size = len(data)
        at = 0
        while size - at >= 6:  # the smallest masked frame: 2 header bytes and the mask
            second = data[at + 1]
            if data[at] != _FIN_TEXT or second < _MASKED:
                break
            length = second & 0x7F
            start = at + 2
            if length == 126:
                length = int.from_bytes(data[start:start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(data[start:start + 8], "big")
                start += 8
            end = start + 4 + length
            if end > size or (limit is not None and length > limit):
                break
            self.curr_msg_data_type = "text"
            self.frames = [apply_mask(data[start + 4:end], data[start:start + 4])]
            at = end
            self.send_receive_event_to_app()
            if self.close_sent or conn._state is not OPEN:  # invalid UTF-8: closed with 1007, the rest dropped
                return
        if at < size:
            super().data_received(data[at:] if at else data)
