"""WebSocketProtocol: uvicorn's sans-I/O protocol reading complete final text frames itself. The same
byte streams, cut at random places, give the application the same messages and the client the
same bytes as uvicorn's own protocol does (one documented difference: before a frame the
protocol refuses, it delivers the valid messages uvicorn drops when they arrived in the same
read); the fast path is taken; the internals it reads are pinned."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.server import ServerProtocol

from canaryws.adapters.server.ws_protocol import WebSocketProtocol, apply_mask, at_frame_boundary
from harness import uvicorn_serving

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
MAX_SIZE = 70_000  # the servers' ws_max_size: a frame above it is closed with 1009
SCRIPTS = "abc xyz 0123 é ü 東京 Здравствуйте 🎉\t"
STREAMS = 60


def frame(rng: random.Random, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    """A client's frame (RFC 6455 §5.2), masked with a key from ``rng`` unless ``mask`` is False."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = rng.randbytes(4)
    return head + key + apply_mask(payload, key)


def text(rng: random.Random) -> bytes:
    length = rng.choice([0, 1, 5, 60, 125, 126, 127, 300, 4000, 65_535, 66_000])
    return "".join(rng.choice(SCRIPTS) for _ in range(length)).encode()[:length]  # may cut a character: see below


def stream(rng: random.Random) -> list[bytes]:
    """Mostly text frames, with control frames, binary and fragmented messages among them; it
    ends with a close, or with one frame the protocol must refuse (nothing is sent after it, so
    that the server's close cannot race unread bytes)."""
    pieces: list[bytes] = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.choices(["text", "ping", "pong", "binary", "fragmented"], [12, 2, 1, 1, 1])[0]
        if kind == "text":
            payload = text(rng)
            try:
                payload.decode()
            except UnicodeDecodeError:
                payload = payload.decode(errors="ignore").encode()
            pieces.append(frame(rng, TEXT, payload))
        elif kind == "ping":
            pieces.append(frame(rng, PING, rng.randbytes(rng.randint(0, 20))))
        elif kind == "pong":
            pieces.append(frame(rng, PONG, b"unsolicited"))
        elif kind == "binary":
            pieces.append(frame(rng, BINARY, rng.randbytes(rng.randint(0, 300))))
        else:
            pieces += [frame(rng, TEXT, b"part one, ", fin=False), frame(rng, PING, b"between"),
                       frame(rng, CONT, "part two \N{SNOWMAN}".encode())]
    ending = rng.choices(["close", "bad utf-8", "unmasked", "reserved bit", "too big", "interleaved"],
                         [8, 1, 1, 1, 1, 1])[0]
    if ending == "close":
        pieces.append(frame(rng, CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    elif ending == "bad utf-8":
        pieces.append(frame(rng, TEXT, b"valid then \xff\xfe"))
    elif ending == "unmasked":
        pieces.append(frame(rng, TEXT, b"not masked", mask=False)[:2])  # refused at its header: no more
    elif ending == "interleaved":  # a new message while a fragmented one is in progress
        pieces += [frame(rng, TEXT, b"first part", fin=False), frame(rng, TEXT, b"a whole one")]
    elif ending == "reserved bit":
        pieces.append(frame(rng, TEXT, b"rsv1", rsv=0x40))
    else:  # the header of a frame over the limit: refused at its length, before its mask is read
        pieces.append(frame(rng, TEXT, b"x" * (MAX_SIZE + 1))[:10])
    return pieces


def chunks(rng: random.Random, pieces: list[bytes]) -> list[bytes]:
    """The stream's frames written one by one, in groups of whole frames, or cut at random places
    (a few, or many: every few bytes of a short stream)."""
    how = rng.choices(["frames", "groups", "whole", "few", "tiny"], [3, 3, 1, 2, 1])[0]
    if how == "frames":
        return pieces
    data = b"".join(pieces)
    if how == "whole":
        return [data]
    if how == "groups":
        cuts = sorted(rng.sample(range(1, len(pieces)), rng.randint(0, len(pieces) - 1))) if len(pieces) > 1 else []
        return [b"".join(pieces[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pieces)], strict=True)]
    count = rng.randint(1, 6) if how == "few" else min(len(data) // rng.randint(2, 9), 150)
    cuts = sorted(rng.sample(range(1, len(data)), min(count, len(data) - 1))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class SlowPathCounter(WebSocketsSansIOProtocol):
    """uvicorn's protocol, counting the reads that reach websockets' parser and the text frames
    uvicorn handles from its events."""

    slow_calls = 0
    slow_texts = 0

    def data_received(self, data: bytes) -> None:
        SlowPathCounter.slow_calls += 1
        super().data_received(data)

    def handle_text(self, event: Any) -> None:
        SlowPathCounter.slow_texts += 1
        super().handle_text(event)


class Probe(WebSocketProtocol, SlowPathCounter):
    """WebSocketProtocol, counting all its calls; its fallback goes through SlowPathCounter."""

    calls = 0

    def data_received(self, data: bytes) -> None:
        Probe.calls += 1
        super().data_received(data)


def serve_streams(ws: Any, streams: list[list[bytes]]) -> dict[int, tuple[list[Any], bytes]]:
    """Each stream on its own connection to ``app`` under ``ws``: what the application received,
    and the bytes the client got after the handshake's answer."""
    received: dict[int, list[Any]] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got = received.setdefault(int(scope["path"].strip("/")), [])
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            got.append((message["type"], message.get("text"), message.get("bytes"), message.get("code")))
            if message["type"] == "websocket.disconnect":
                return

    async def client(port: int, index: int, pieces: list[bytes]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /{index} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            try:
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):  # the server closed after an error frame
                break
            await asyncio.sleep(0.001)  # mostly one read per piece on the server
        try:
            got = await asyncio.wait_for(reader.read(), 10)
        except (ConnectionResetError, BrokenPipeError):  # the server closed with bytes unread (a test's frame)
            got = b"reset"
        writer.close()
        return got

    async def scenario() -> dict[int, bytes]:
        async with uvicorn_serving(app, ws=ws, ws_max_size=MAX_SIZE, ws_ping_interval=None) as port:
            answers = await asyncio.gather(*(client(port, i, pieces) for i, pieces in enumerate(streams)))
            for _ in range(500):  # every application has seen its disconnect
                if len(received) == len(streams) and all(got and got[-1][0] == "websocket.disconnect"
                                                         for got in received.values()):
                    break
                await asyncio.sleep(0.01)
            return dict(enumerate(answers))

    answers = asyncio.run(scenario())
    return {i: (received.get(i, []), answers[i]) for i in range(len(streams))}


def test_the_same_streams_give_the_same_messages_and_bytes_as_uvicorns_protocol() -> None:
    rng = random.Random(2026)
    streams = [chunks(rng, stream(rng)) for _ in range(STREAMS)]
    SlowPathCounter.slow_texts = 0
    ours = serve_streams(Probe, streams)
    slow_texts = SlowPathCounter.slow_texts
    theirs = serve_streams(SlowPathCounter, streams)
    for index in range(STREAMS):
        (got, sent), (want, want_sent) = ours[index], theirs[index]
        assert sent == want_sent, f"stream {index}: the client's bytes"
        assert got[-1] == want[-1], f"stream {index}: the close"
        if got != want:
            # uvicorn drops the messages websockets parsed in the same read as a frame it refuses
            # (so what it delivers depends on where TCP cut the stream); this protocol delivers
            # every message before the refused frame, wherever the cuts fell
            assert want[-1][3] != 1000 and got[:len(want) - 1] == want[:-1], f"stream {index}"
    texts = sum(kind == "websocket.receive" and t is not None for got, _ in theirs.values() for kind, t, _, _ in got)
    closes = {got[-1][3] for got, _ in theirs.values()}
    assert texts > 200 and {1000, 1002, 1007, 1009} <= closes  # the streams cover what they should
    assert 0 < slow_texts < texts * 2 / 3  # both read text frames: the fast path a good share of them


def test_whole_text_frames_never_reach_websockets_parser() -> None:
    rng = random.Random(7)
    streams = [[frame(rng, TEXT, f"batch {i} of {n}".encode()) for i in range(10)]
               + [frame(rng, CLOSE, (1000).to_bytes(2, "big"))] for n in range(20)]
    Probe.calls = SlowPathCounter.slow_calls = SlowPathCounter.slow_texts = 0
    served = serve_streams(Probe, streams)
    assert all(len(got) == 11 and got[-1][3] == 1000 for got, _ in served.values())
    # websockets' parser read the handshake's request and the close frame of each connection, no text
    assert SlowPathCounter.slow_calls == 2 * 20 and SlowPathCounter.slow_texts == 0
    assert Probe.calls > 2 * 20  # the texts came in reads of their own (one or more)


def handshaken() -> ServerProtocol:
    conn = ServerProtocol()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    conn.send_response(conn.accept(conn.events_received()[0]))
    conn.data_to_send()
    return conn


def test_the_parser_is_seen_at_a_frame_boundary_only_when_it_is_at_one() -> None:
    rng = random.Random(1)
    conn = handshaken()
    assert at_frame_boundary(conn)
    whole = frame(rng, TEXT, b"hello")
    conn.receive_data(whole[:2])  # the header: the parser waits for the mask
    assert not at_frame_boundary(conn)
    conn.receive_data(whole[2:])
    assert at_frame_boundary(conn)
    assert [event.data for event in conn.events_received()] == [b"hello"]
    conn.receive_data(whole[:1])  # one byte: buffered, the parser still at the boundary's read
    assert not at_frame_boundary(conn)
    unopened = ServerProtocol()
    assert not at_frame_boundary(unopened)  # still reading the handshake's request


def received_by_app(pieces: list[bytes]) -> list[Any]:
    """What the application got from one connection that wrote ``pieces``, each a read of its own."""
    return serve_streams(WebSocketProtocol, [pieces])[0][0]


def test_a_complete_frame_over_the_limit_is_refused_not_read() -> None:
    rng = random.Random(3)
    got = received_by_app([frame(rng, TEXT, b"ok"), frame(rng, TEXT, b"x" * (MAX_SIZE + 1))])
    assert got == [("websocket.receive", "ok", None, None), ("websocket.disconnect", None, None, 1009)]


def test_a_read_in_the_middle_of_a_frame_is_left_to_the_parser() -> None:
    """A binary frame's payload holds the bytes of a whole text frame, and the read boundary falls
    right before them: they are payload, not a frame (the key 0 leaves the payload as it is)."""
    rng = random.Random(4)
    inner = frame(rng, TEXT, b"not a frame")
    outer = bytes((0x82, 0x80 | len(inner))) + b"\0\0\0\0" + inner
    got = received_by_app([outer[:6], outer[6:], frame(rng, CLOSE, (1000).to_bytes(2, "big"))])
    assert got == [("websocket.receive", None, inner, None), ("websocket.disconnect", None, None, 1000)]


def test_a_whole_text_frame_during_a_fragmented_message_is_a_protocol_error() -> None:
    rng = random.Random(5)
    got = received_by_app([frame(rng, TEXT, b"first part", fin=False), frame(rng, TEXT, b"a whole one")])
    assert got == [("websocket.disconnect", None, None, 1002)]
