"""The load client of ``bench/run.py``: picows (Cython WebSocket client) on uvloop, one process.

    .venv/bin/python bench/load.py run URL --connections 50 --duration 5 [--tokens FILE] [--welcome]
    .venv/bin/python bench/load.py idle URL --connections 5000 [--tokens FILE] [--welcome]
    .venv/bin/python bench/load.py connect URL --concurrency 50 --duration 5 [--tokens FILE] [--welcome]

``run``: every connection sends a batch, waits for its answer and sends the next (closed
loop); after ``--warmup`` seconds it counts answers and their latencies (send → answer)
for ``--duration`` seconds. ``idle``: opens the connections, prints ``ready N`` and holds
them until a line arrives on stdin. ``connect``: loops of handshake (and, with
``--welcome``, the welcome frame) then close, for ``--duration`` seconds. Each prints
one JSON object. ``--tokens`` is a file of bearer tokens, one per line, used in turn.
With ``--marks``, ``run`` and ``connect`` also print a line ``mark start`` when the
measured window opens and ``mark stop`` when it closes (before the JSON), so that a
caller can sample the server's CPU time over exactly that window. ``--id-prefix P`` starts
every batch id with ``P`` (``run``): a service that persists batches keeps each
``(client id, batch id)`` once, so load processes that reuse client ids (the rounds of
``bench/run.py``) give each its own prefix, and every batch is new, never a replay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from picows import WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

RESULT_PREFIX = b'{"type":"result"'


def batch_records(n: int) -> list[Any]:
    """A realistic mix: mostly clean text with edge whitespace, one blank, one control char, one non-string."""
    records: list[Any] = [f"  record {i}: some text of a typical length  " for i in range(n)]
    if n >= 3:
        records[n // 3] = "   "
        records[n // 2] = "bad\x01value"
        records[-1] = 42
    return records


class Phase:
    measuring = False
    stopped = False


class Loop(WSListener):  # type: ignore[misc]
    """One closed-loop connection."""

    def __init__(self, state: Phase, prefix: bytes, suffix: bytes, welcome: bool, latencies: list[int],
                 ready: asyncio.Future[None], window: int = 1) -> None:
        self.state = state
        self.prefix = prefix
        self.suffix = suffix
        self.expect_welcome = welcome
        self.latencies = latencies
        self.ready = ready
        self.n = 0
        self.sent = 0
        self.bad = 0
        self.transport: WSTransport | None = None
        self.window = window  # batches in flight (answers come in order: each matches the oldest send)
        self.sends: collections.deque[int] = collections.deque()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if not self.expect_welcome:
            self.ready.set_result(None)

    def go(self) -> None:
        for _ in range(self.window):
            self._send(time.perf_counter_ns())

    def _send(self, now: int) -> None:
        self.n += 1
        self.sent = now
        self.sends.append(now)
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, self.prefix + str(self.n).encode() + self.suffix)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        if self.expect_welcome:
            self.expect_welcome = False
            self.ready.set_result(None)
            return
        now = time.perf_counter_ns()
        sent = self.sends.popleft() if self.sends else now
        if self.state.measuring:
            self.latencies.append(now - sent)
            if self.check and not frame.get_payload_as_bytes().startswith(RESULT_PREFIX):
                self.bad += 1
        if not self.state.stopped:
            self._send(now)

    check = True


def _mark(args: argparse.Namespace, what: str) -> None:
    if args.marks:
        print(f"mark {what}", flush=True)


def _tokens(path: str | None) -> list[str | None]:
    if path is None:
        return [None]
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _headers(token: str | None) -> dict[str, str] | None:
    return None if token is None else {"Authorization": f"Bearer {token}"}


async def _open(url: str, make: Any, token: str | None) -> tuple[WSTransport, Any]:
    transport, listener = await ws_connect(make, url, extra_headers=_headers(token), websocket_handshake_timeout=60)
    return transport, listener


async def _window(args: argparse.Namespace, state: Phase) -> float:
    """Warm up, then measure for ``--duration`` seconds (``state.measuring``); then stop the
    loops (``state.stopped``). Returns the measured seconds."""
    await asyncio.sleep(args.warmup)
    state.measuring = True
    _mark(args, "start")
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    state.measuring = False
    seconds = time.perf_counter() - started
    _mark(args, "stop")
    state.stopped = True
    return seconds


def _percentiles(latencies_ns: list[int], **named: float) -> dict[str, float | None]:
    """``{name: percentile in ms}``; None for every name when nothing was measured."""
    lat = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    return {name: float(np.percentile(lat, q)) if len(lat) else None for name, q in named.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tokens = _tokens(args.tokens)
    records = json.dumps(batch_records(args.records), separators=(",", ":")).encode()
    prefix = b'{"type":"batch","id":"' + args.id_prefix.encode()
    suffix = b'","records":' + records + b"}"
    state = Phase()
    latencies: list[int] = []
    loop = asyncio.get_running_loop()
    listeners: list[Loop] = []
    gate = asyncio.Semaphore(100)

    async def one(i: int) -> Loop:
        ready: asyncio.Future[None] = loop.create_future()
        async with gate:
            _, listener = await _open(
                args.url,
                lambda: Loop(state, prefix, suffix, args.welcome, latencies, ready, args.window),
                tokens[i % len(tokens)],
            )
            await ready
        listener.check = not args.echo
        return listener

    listeners = list(await asyncio.gather(*(one(i) for i in range(args.connections))))
    for listener in listeners:
        listener.go()
    seconds = await _window(args, state)
    count = len(latencies)
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect()
    await asyncio.sleep(0.2)
    return {
        "messages": count,
        "seconds": seconds,
        "rate": count / seconds,
        **_percentiles(latencies, p50_ms=50, p99_ms=99, p999_ms=99.9),
        "bad_answers": sum(listener.bad for listener in listeners),
        "connections": len(listeners),
    }


class Idle(WSListener):  # type: ignore[misc]
    """Ready at connect, or at the server's first frame with ``--welcome`` (idle and connect modes)."""

    def __init__(self, ready: asyncio.Future[None], welcome: bool) -> None:
        self.ready = ready
        self.welcome = welcome
        self.closed_by_server = False

    def on_ws_connected(self, transport: WSTransport) -> None:  # noqa: ARG002 (picows' listener interface)
        if not self.welcome:
            self.ready.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.closed_by_server = True
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT and not self.ready.done():
            self.ready.set_result(None)


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    tokens = _tokens(args.tokens)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(200)
    transports: list[WSTransport] = []
    listeners: list[Idle] = []
    started = time.perf_counter()

    async def one(i: int) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        async with gate:
            transport, listener = await _open(args.url, lambda: Idle(ready, args.welcome), tokens[i % len(tokens)])
            await ready
        transports.append(transport)
        listeners.append(listener)

    await asyncio.gather(*(one(i) for i in range(args.connections)))
    opened_in = time.perf_counter() - started
    print(f"ready {len(transports)}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    dropped = sum(listener.closed_by_server for listener in listeners)
    for transport in transports:
        transport.disconnect()
    await asyncio.sleep(0.5)
    return {"connections": len(transports), "opened_seconds": opened_in, "closed_by_server": dropped}


async def connect(args: argparse.Namespace) -> dict[str, Any]:
    tokens = _tokens(args.tokens)
    loop = asyncio.get_running_loop()
    state = Phase()
    counts = {"handshakes": 0, "errors": 0}
    latencies: list[int] = []

    async def worker(k: int) -> None:
        i = k
        while not state.stopped:
            ready: asyncio.Future[None] = loop.create_future()
            begun = time.perf_counter_ns()
            try:
                transport, _ = await _open(
                    args.url, lambda r=ready: Idle(r, args.welcome), tokens[i % len(tokens)]
                )
                await asyncio.wait_for(ready, 30)
            except (OSError, TimeoutError, WSError):  # a refused or failed handshake: counted, the loop goes on
                counts["errors"] += 1
                i += args.concurrency
                await asyncio.sleep(0.01)
                continue
            if state.measuring:
                counts["handshakes"] += 1
                latencies.append(time.perf_counter_ns() - begun)
            transport.send_close()
            transport.disconnect()
            await transport.wait_disconnected()
            i += args.concurrency

    workers = [asyncio.create_task(worker(k)) for k in range(args.concurrency)]
    seconds = await _window(args, state)
    await asyncio.gather(*workers, return_exceptions=True)
    n = counts["handshakes"]
    return {
        "handshakes": n,
        "seconds": seconds,
        "rate": n / seconds,
        **_percentiles(latencies, p50_ms=50, p99_ms=99),
        "errors": counts["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("run", "idle", "connect"))
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--records", type=int, default=30)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--tokens", default=None)
    parser.add_argument("--welcome", action="store_true", help="the server greets first (canaryws)")
    parser.add_argument("--echo", action="store_true", help="answers are echoes, not results")
    parser.add_argument("--marks", action="store_true", help="print 'mark start'/'mark stop' around the window")
    parser.add_argument("--id-prefix", default="", help="the start of every batch id (run)")
    parser.add_argument("--window", type=int, default=1, help="batches in flight per connection (run)")
    args = parser.parse_args()
    mode = {"run": run, "idle": idle, "connect": connect}[args.mode]
    result = uvloop.run(mode(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
