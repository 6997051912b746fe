"""text_writer: the batch loop's answers written straight to the transport, under uvicorn's
websockets-sansio protocol as served, only while the protocol's own ``send`` would write them at
once; the bytes are the ones websockets' ``Frame.serialize`` makes, for every length class."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import websockets
from hypothesis import given
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send
from websockets.frames import Frame, Opcode

from canaryws.adapters.asgi.frame_writer import frame_header, text_writer
from harness import CountingTransport, uvicorn_serving


def serialized(payload: bytes) -> bytes:
    """What websockets writes for a server's final text frame with ``payload``."""
    return bytes(Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[]))


@pytest.mark.parametrize("length", [0, 1, 2, 125, 126, 127, 255, 256, 65535, 65536, 65537, 700_000])
def test_the_header_is_websockets_own_at_every_length_class(length: int) -> None:
    payload = b"x" * length
    assert frame_header(length) + payload == serialized(payload)


@given(st.text(max_size=300))
def test_any_text_frames_as_websockets_frames_it(text: str) -> None:
    payload = text.encode("utf-8", "surrogatepass")
    assert frame_header(len(payload)) + payload == serialized(payload)


def run(app: Any, client_side: Any, compression: str | None = None) -> Any:
    async def scenario() -> Any:
        async with (uvicorn_serving(app) as port,
                    websockets.connect(f"ws://127.0.0.1:{port}/", compression=compression) as client):
            return await client_side(client)

    return asyncio.run(scenario())


def test_frames_go_straight_to_the_transport_in_order_with_the_protocols_own() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        protocol: Any = getattr(send, "__self__", None)
        counting = protocol.transport = CountingTransport(protocol.transport)
        write = text_writer(send)
        assert write is not None
        seen["first"] = write(b"one")
        await send({"type": "websocket.send", "text": "two"})
        seen["third"] = write("drei \N{SNOWMAN}".encode())
        seen["long"] = write(b"y" * 70_000)
        seen["writes"] = counting.writes
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def client_side(client: Any) -> list[Any]:
        return [await client.recv() for _ in range(4)]

    received = run(app, client_side)
    assert received == ["one", "two", "drei \N{SNOWMAN}", "y" * 70_000]
    assert seen["first"] and seen["third"] and seen["long"]
    assert seen["writes"][0] == b"\x81\x03one"  # one write: header and payload together
    assert seen["writes"][1] == b"\x81\x03two"  # the protocol's own, the same bytes
    assert seen["writes"][3] == b"\x81\x7f" + (70_000).to_bytes(8, "big") + b"y" * 70_000


def test_nothing_is_written_while_the_transport_is_paused_or_writes_are_pending() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        protocol: Any = getattr(send, "__self__", None)
        write = text_writer(send)
        assert write is not None
        protocol.pause_writing()  # the transport's buffer is above its high-water mark
        seen["paused"] = write(b"not now")
        protocol.resume_writing()
        protocol.conn.send_ping(b"p")  # a frame the protocol has not written out yet
        seen["pending"] = write(b"not before the ping")
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        seen["after"] = write(b"now")
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def client_side(client: Any) -> Any:
        return await client.recv()

    assert run(app, client_side) == "now"
    assert seen == {"paused": False, "pending": False, "after": True}


def test_nothing_is_written_once_the_close_is_sent() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        write = text_writer(send)
        assert write is not None
        await send({"type": "websocket.close", "code": 1012})
        seen["after close"] = write(b"too late")
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def client_side(client: Any) -> Any:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert run(app, client_side) == 1012
    assert seen == {"after close": False}


def test_nothing_is_written_once_the_peer_left() -> None:
    seen: dict[str, Any] = {}
    left = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        write = text_writer(send)
        assert write is not None
        protocol: Any = getattr(send, "__self__", None)
        protocol.transport.abort()  # the TCP connection is gone (as when the peer vanished)
        while (await receive())["type"] != "websocket.disconnect":
            pass
        seen["disconnected"] = protocol.disconnected
        seen["after"] = write(b"nobody reads this")
        left.set()

    async def client_side(client: Any) -> None:
        with pytest.raises(websockets.ConnectionClosed):
            await client.recv()
        await asyncio.wait_for(left.wait(), 5)

    run(app, client_side)
    assert seen == {"disconnected": True, "after": False}


def test_no_writer_with_per_message_deflate_or_without_uvicorns_protocol() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        seen["writer"] = text_writer(send)
        await send({"type": "websocket.send", "text": "compressed"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def client_side(client: Any) -> Any:
        return await client.recv()

    assert run(app, client_side, compression="deflate") == "compressed"
    assert seen["writer"] is None

    async def plain_send(_message: Message) -> None:
        return None

    assert text_writer(plain_send) is None
