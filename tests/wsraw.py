"""A raw WebSocket client for protocol-level abuse: a real HTTP upgrade over a real TCP
socket, then hand-built frames (any opcode, RSV bits, masking, fragmentation, length).

Blocking sockets with timeouts: tests drive one connection at a time, step by step.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One client frame. ``rsv`` is the 3 RSV bits (0–7); ``length`` overrides the
    advertised payload length (to lie about it)."""
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    n = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int | None = None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


@dataclass(frozen=True)
class ServerFrame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (None for an empty one)."""
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


class ConnectionEnded(Exception):
    """The server closed the TCP connection (EOF or reset) without a close frame."""


class RawClient:
    """One upgraded connection; frames go out exactly as the test builds them."""

    def __init__(self, sock: socket.socket, buffered: bytes, response_head: bytes) -> None:
        self.sock = sock
        self._buf = bytearray(buffered)
        self.response_head = response_head

    @classmethod
    def connect(cls, host: str, port: int, path: str = "/records", headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> RawClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionEnded(f"no upgrade response: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise AssertionError(f"upgrade refused: {head!r}")
        return cls(sock, rest, head)

    # -- sending ------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.sock.sendall(frame(opcode, payload, **kwargs))

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(TEXT, text.encode() if isinstance(text, str) else text)

    def send_json(self, value: Any) -> None:
        self.send_text(json.dumps(value))

    # -- receiving ----------------------------------------------------------------
    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as exc:
                raise ConnectionEnded("connection reset") from exc
            if not chunk:
                raise ConnectionEnded("EOF")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def recv_frame(self, timeout: float = 10.0) -> ServerFrame:
        """The next server frame (server frames are never masked)."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._read_exact(2, deadline)
        assert not b1 & 0x80, "the server masked a frame"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8, deadline))
        return ServerFrame(bool(b0 & 0x80), b0 & 0x0F, self._read_exact(n, deadline))

    def recv_message(self, timeout: float = 10.0) -> ServerFrame:
        """The next data or close frame; pings are answered, pongs ignored."""
        while True:
            f = self.recv_frame(timeout)
            if f.opcode == PING:
                self.send_frame(PONG, f.payload)
            elif f.opcode != PONG:
                return f

    def recv_json(self, timeout: float = 10.0) -> Any:
        f = self.recv_message(timeout)
        if f.opcode != TEXT:
            detail = f"close {f.close_code} {f.close_reason!r}" if f.opcode == CLOSE else f"opcode {f.opcode}"
            raise AssertionError(f"expected a text frame, got {detail}")
        return json.loads(f.payload)

    def expect_close(self, timeout: float = 10.0) -> ServerFrame:
        """The server's close frame, which must be the next data or close frame. The client
        echoes it (RFC 6455 §5.5.1; the server may already have dropped the TCP connection,
        as it does after a protocol error) and checks that the server then ends the TCP
        connection."""
        deadline = time.monotonic() + timeout
        f = self.recv_message(timeout)
        if f.opcode != CLOSE:
            raise AssertionError(f"expected a close frame, got opcode {f.opcode}: {f.payload[:200]!r}")
        with contextlib.suppress(OSError):
            self.send_frame(CLOSE, f.payload[:2])
        self.assert_eof(max(0.5, deadline - time.monotonic()))
        return f

    def close_normally(self, code: int = 1000, timeout: float = 10.0) -> ServerFrame:
        """The closing handshake started by the client: the server echoes ``code`` and ends
        the TCP connection. Text frames that arrive first are an error (unread answers)."""
        self.send_frame(CLOSE, close_payload(code))
        f = self.recv_message(timeout)
        if f.opcode != CLOSE:
            raise AssertionError(f"expected the close echo, got opcode {f.opcode}: {f.payload[:200]!r}")
        self.assert_eof(timeout)
        return f

    def assert_eof(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            except TimeoutError:
                raise AssertionError("the server kept the TCP connection open after its close frame") from None
            if not chunk:
                assert not self._buf, f"bytes after the close frame: {bytes(self._buf)!r}"
                return
            self._buf += chunk

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
