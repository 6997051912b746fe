"""hold_writes: the handshake's 101 and the welcome frame leave in one write, under uvicorn's
websockets-sansio protocol as served; nothing is held where there is no such protocol."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets
from starlette.types import Message, Receive, Scope, Send

from canaryws.adapters.asgi.frame_writer import text_writer
from canaryws.adapters.asgi.held_writes import HeldWrites, hold_writes
from harness import CountingTransport, uvicorn_serving


def serve(hold: bool, writer: bool = False) -> tuple[list[bytes], list[str], bool]:
    """One connection: accept, a welcome (with ``writer``: by the frame writer, as the endpoint
    sends it), a close; the server's writes, what the client got, and whether the protocol had
    its transport back after the release."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        protocol: Any = getattr(send, "__self__", None)
        counting = protocol.transport = CountingTransport(protocol.transport)
        seen["writes"] = counting.writes
        assert (await receive())["type"] == "websocket.connect"
        held = hold_writes(send) if hold else HeldWrites()
        assert held.holding is hold
        await send({"type": "websocket.accept"})
        write = text_writer(send) if writer else None
        if write is None or not write(b"welcome"):
            await send({"type": "websocket.send", "text": "welcome"})
        seen["written"] = write is not None
        held.release()
        held.release()  # idempotent
        seen["restored"] = protocol.transport is counting
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def scenario() -> list[str]:
        async with (uvicorn_serving(app) as port,
                    websockets.connect(f"ws://127.0.0.1:{port}/", compression=None) as client):
            got = [str(await client.recv())]
            await client.close()
            return got

    received = asyncio.run(scenario())
    assert seen["written"] is writer
    return seen["writes"], received, seen["restored"]


def test_the_101_and_the_welcome_leave_in_one_write() -> None:
    writes, received, restored = serve(hold=True)
    assert received == ["welcome"]
    assert restored
    first = writes[0]
    assert first.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert first.endswith(b"\r\n\r\n\x81\x07welcome")  # the welcome frame right after the headers


def test_the_frame_writer_s_welcome_is_held_with_the_101_alike() -> None:
    """The endpoint writes its welcome with the batch loop's frame writer, into the held transport."""
    writes, received, restored = serve(hold=True, writer=True)
    assert received == ["welcome"]
    assert restored
    assert writes[0].startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert writes[0].endswith(b"\r\n\r\n\x81\x07welcome")
    assert len(writes) == 2  # the 101 and the welcome, then the close frame


def test_without_holding_they_are_two() -> None:
    writes, received, restored = serve(hold=False)
    assert received == ["welcome"]
    assert restored
    assert writes[0].startswith(b"HTTP/1.1 101") and writes[0].endswith(b"\r\n\r\n")
    assert writes[1] == b"\x81\x07welcome"


def test_nothing_is_held_without_a_server_protocol_behind_send() -> None:
    async def plain_send(_message: Message) -> None:
        return None

    for send in (None, plain_send):
        held = hold_writes(send)
        assert not held.holding
        held.release()


class FakeTransport:
    def __init__(self, closing: bool = False) -> None:
        self.closing = closing
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeProtocol:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport: Any = transport

    async def send(self, _message: Message) -> None:
        self.transport.write(b"a")
        self.transport.writelines([b"b", b"c"])


def test_a_closing_transport_gets_nothing_and_the_protocol_its_transport_back() -> None:
    transport = FakeTransport(closing=True)
    protocol = FakeProtocol(transport)
    held = hold_writes(protocol.send)
    assert held.holding and protocol.transport is held
    assert held.is_closing()  # the rest is the real transport's
    asyncio.run(protocol.send({}))
    held.release()
    restored: object = protocol.transport
    assert restored is transport and transport.writes == []


def test_a_second_hold_of_the_same_protocol_holds_nothing_and_the_first_writes_all() -> None:
    transport = FakeTransport()
    protocol = FakeProtocol(transport)
    first = hold_writes(protocol.send)
    second = hold_writes(protocol.send)
    assert first.holding and not second.holding
    asyncio.run(protocol.send({}))
    second.release()
    assert transport.writes == []
    first.release()
    assert transport.writes == [b"abc"]
