"""The load client of ``bench/run.py``: picows (Cython WebSocket client) on uvloop, one process.

    .venv/bin/python bench/load.py run URL --connections 50 --duration 5 [--tokens FILE] [--welcome]
    .venv/bin/python bench/load.py idle URL --connections 5000 [--tokens FILE] [--welcome]
    .venv/bin/python bench/load.py connect URL --concurrency 50 --duration 5 [--tokens FILE] [--welcome]
    .venv/bin/python bench/load.py realistic URL --connections 1000 --duration 5 [--pool FILE | --seed 2026]
        [--busy-share 0.1] [--burst-rate 0.2] [--burst-batches 3] [--churn-share 0.2] [--tokens FILE] [--welcome]

``run``: every connection sends a batch, waits for its answer and sends the next (closed
loop); after ``--warmup`` seconds it counts answers and their latencies (send → answer)
for ``--duration`` seconds. ``idle``: opens the connections, prints ``ready N`` and holds
them until a line arrives on stdin. ``connect``: loops of handshake (and, with
``--welcome``, the welcome frame) then close (code 1000, as the SDK), for ``--duration`` seconds. Each prints
one JSON object. ``--tokens`` is a file of bearer tokens, one per line, used in turn.
With ``--marks``, ``run`` and ``connect`` also print a line ``mark start`` when the
measured window opens and ``mark stop`` when it closes (before the JSON), so that a
caller can sample the server's CPU time over exactly that window. ``--id-prefix P`` starts
every batch id with ``P`` (``run``): a service that persists batches keeps each
``(client id, batch id)`` once, so load processes that reuse client ids (the rounds of
``bench/run.py``) give each its own prefix, and every batch is new, never a replay.

``realistic`` (issue 26): the batches of bench/workload.py's seeded pool (``--pool FILE``, as
``workload.py write`` makes it, else generated from ``--seed``), pre-encoded, over
``--connections`` connections: ``--busy-share`` (10 %) of them send in a closed loop
(``--window`` in flight), the others are idle and send bursts: an idle connection waits an
exponential time (mean 1 / ``--burst-rate``, 5 s), sends a burst of a geometric number of
batches (mean ``--burst-batches``, 3) in a closed loop, and waits again, so bursts arrive as a
Poisson process of 0.2 per second per connection while the server answers fast (fewer when
bursts take long). ``--churn-share`` (20 %) of the idle ones close their connection after each
burst and reconnect (a fresh handshake, and the welcome frame with ``--welcome``): with the
defaults, at most 0.9 x 0.2 x 0.2 = 3.6 % of the connections reconnect per second (36/s at
1,000; the JSON's ``handshakes`` counts those of the window). The batches sent, whichever
connection sends them, follow the pool's seeded order (the k-th batch sent is the pool's k-th,
cycling), so the mix answered in the window is the pool's whatever each connection's speed
(with a place per connection, the connections whose batches are cheap would cycle faster and
weigh the mix toward cheap batches); batch ids are unique in the process (``--id-prefix`` +
that counter). Every answer in the window is checked: a ``result`` frame with the batch's id,
as many ``"index":`` as records sent (an echo: as long as the frame), and its rejections are
counted per code against the pool's expected outcomes (``outcomes`` / ``expected`` in the
JSON).
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
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

RESULT_PREFIX = b'{"type":"result"'
DEFAULT_SEED = 2026  # bench/workload.py's


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
            transport.send_close(WSCloseCode.OK)  # 1000, as the SDK ends (picows' default, 0, is invalid: 1002)
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


# -- the realistic workload (bench/workload.py) ------------------------------------------------

REASON_KEYS = tuple(f'"code":"{reason}"'.encode() for reason in ("missing", "not_a_string", "empty", "blank",
                                                                   "control_character", "too_long"))


class Shared:
    """What every connection of a ``realistic`` run shares: the pool, the phase, the counts."""

    def __init__(self, args: argparse.Namespace, pool: list[tuple[bytes, int, dict[str, int]]]) -> None:
        self.prefix = b'{"type":"batch","id":"' + args.id_prefix.encode()
        self.result_prefix = RESULT_PREFIX + b',"id":"' + args.id_prefix.encode()  # + the batch's number + '"'
        self.suffixes = [b'","records":' + records + b"}" for records, _, _ in pool]
        self.sizes = [n for _, n, _ in pool]
        self.expects = [expect for _, _, expect in pool]
        self.echo = args.echo
        self.welcome = args.welcome
        self.window = args.window
        self.state = Phase()
        self.n = 0  # batch ids: unique in this process; and the place in the pool's order of the next batch sent
        self.latencies: list[int] = []
        self.handshake_latencies: list[int] = []
        self.counts = collections.Counter[str]()
        self.outcomes = collections.Counter[str]()
        self.expected = collections.Counter[str]()


class Conn:
    """One logical connection of a ``realistic`` run: busy (closed loop) or bursty; it may reconnect."""

    def __init__(self, shared: Shared, index: int, busy: bool, churns: bool) -> None:
        self.shared = shared
        self.index = index
        self.busy = busy
        self.churns = churns
        self.pending: collections.deque[tuple[int, bytes, int, int]] = collections.deque()  # sent, id, batch, bytes
        self.remaining = 0
        self.done: asyncio.Future[None] | None = None
        self.transport: WSTransport | None = None

    def send(self) -> None:
        shared = self.shared
        batch = shared.n % len(shared.suffixes)  # the next batch of the pool's order, whichever connection sends
        shared.n += 1
        batch_id = str(shared.n).encode()
        frame = shared.prefix + batch_id + shared.suffixes[batch]
        self.pending.append((time.perf_counter_ns(), batch_id, batch, len(frame)))
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, frame)

    def start(self, batches: int | None) -> asyncio.Future[None]:
        """Send ``batches`` (None: until the run stops), ``--window`` in flight; done when all are answered."""
        self.remaining = -1 if batches is None else batches
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(self.shared.window if batches is None else min(self.shared.window, batches)):
            self.send()
            if self.remaining > 0:
                self.remaining -= 1
        return self.done

    def answer(self, payload: bytes) -> None:
        shared = self.shared
        now = time.perf_counter_ns()
        if not self.pending:
            shared.counts["unexpected"] += 1
            return
        sent, batch_id, batch, length = self.pending.popleft()
        if shared.state.measuring:
            shared.latencies.append(now - sent)
            n = shared.sizes[batch]
            shared.counts["records"] += n
            shared.counts["busy_messages" if self.busy else "burst_messages"] += 1
            if shared.echo:
                shared.counts["bad"] += len(payload) != length
            elif not payload.startswith(shared.result_prefix + batch_id + b'"'):
                shared.counts["bad"] += 1
            else:
                indices = payload.count(b'"index":')
                rejected = [payload.count(key) for key in REASON_KEYS]
                shared.counts["bad"] += indices != n
                shared.outcomes["accepted"] += indices - sum(rejected)
                for key, count in zip(REASON_KEYS, rejected, strict=True):
                    shared.outcomes[key[8:-1].decode()] += count
                shared.expected.update(shared.expects[batch])
        if self.remaining != 0 and not shared.state.stopped:
            self.send()
            if self.remaining > 0:
                self.remaining -= 1
        elif not self.pending and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def lost(self) -> None:
        """The connection closed under it: its batches in flight get no answer."""
        self.shared.counts["lost"] += len(self.pending)
        self.pending.clear()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class Realistic(WSListener):  # type: ignore[misc]
    def __init__(self, conn: Conn, ready: asyncio.Future[None]) -> None:
        self.conn = conn
        self.ready = ready
        self.closing = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.conn.transport = transport
        if not self.conn.shared.welcome:
            self.ready.set_result(None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            if not self.closing:
                self.conn.shared.counts["closed_by_server"] += 1
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        if not self.ready.done():
            self.ready.set_result(None)  # the welcome frame
            return
        self.conn.answer(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: WSTransport) -> None:  # noqa: ARG002 (picows' listener interface)
        if not self.closing:
            self.conn.lost()


async def realistic(args: argparse.Namespace) -> dict[str, Any]:
    """N connections: ``--busy-share`` of them closed-loop senders, the others idle with Poisson bursts
    (``--burst-rate`` per second each, ``--burst-batches`` batches on average, a closed loop within the
    burst); ``--churn-share`` of the bursty ones close and reconnect (a fresh handshake) after each burst.
    Batches come from the pool (``--pool`` file, else generated from ``--seed``) in its seeded order."""
    import random

    if args.pool is not None:
        from workload import read_pool

        pool = read_pool(Path(args.pool))
    else:
        from workload import generate

        made = generate(args.seed)
        pool = [(made.batches[i].records, made.batches[i].size, made.batches[i].expect()) for i in made.order]
    shared = Shared(args, pool)
    tokens = _tokens(args.tokens)
    loop = asyncio.get_running_loop()
    rng = random.Random(args.seed)
    n = args.connections
    busy_count = max(1, round(n * args.busy_share)) if args.busy_share > 0 else 0
    conns: list[Conn] = []
    for i in range(n):
        busy = i < busy_count
        conns.append(Conn(shared, i, busy, churns=not busy and rng.random() < args.churn_share))
    gate = asyncio.Semaphore(100)

    async def open_conn(conn: Conn) -> Realistic:
        ready: asyncio.Future[None] = loop.create_future()
        _, listener = await _open(args.url, lambda: Realistic(conn, ready), tokens[conn.index % len(tokens)])
        await asyncio.wait_for(ready, 60)
        return listener

    listeners: dict[int, Realistic] = {}

    async def first(conn: Conn) -> None:
        async with gate:
            listeners[conn.index] = await open_conn(conn)

    started = time.perf_counter()
    await asyncio.gather(*(first(conn) for conn in conns))
    opened_in = time.perf_counter() - started

    async def bursty(conn: Conn) -> None:
        r = random.Random(args.seed * 1_000_003 + conn.index)
        p = 1.0 / args.burst_batches  # geometric number of batches, mean --burst-batches
        while not shared.state.stopped:
            await asyncio.sleep(r.expovariate(args.burst_rate))
            if shared.state.stopped:
                return
            batches = 1
            while r.random() > p:
                batches += 1
            if shared.state.measuring:
                shared.counts["bursts"] += 1
            await conn.start(batches)
            if conn.churns and not shared.state.stopped:
                old = listeners[conn.index]
                old.closing = True
                assert conn.transport is not None
                transport = conn.transport
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
                await transport.wait_disconnected()
                begun = time.perf_counter_ns()
                try:
                    listeners[conn.index] = await open_conn(conn)
                except (OSError, TimeoutError, WSError):
                    shared.counts["handshake_errors"] += 1
                    return
                if shared.state.measuring:
                    shared.counts["handshakes"] += 1
                    shared.handshake_latencies.append(time.perf_counter_ns() - begun)

    for conn in conns:
        if conn.busy:
            conn.start(None)
    tasks = [asyncio.create_task(bursty(conn)) for conn in conns if not conn.busy]
    seconds = await _window(args, shared.state)
    await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for listener in listeners.values():
        listener.closing = True
        if listener.conn.transport is not None:
            listener.conn.transport.disconnect()
    await asyncio.sleep(0.2)
    count = len(shared.latencies)
    counts = shared.counts
    return {
        "workload": "realistic",
        "messages": count,
        "seconds": seconds,
        "rate": count / seconds,
        **_percentiles(shared.latencies, p50_ms=50, p99_ms=99, p999_ms=99.9),
        "bad_answers": counts["bad"] + counts["unexpected"],
        "lost": counts["lost"],
        "closed_by_server": counts["closed_by_server"],
        "connections": len(conns),
        "busy_connections": busy_count,
        "churning_connections": sum(conn.churns for conn in conns),
        "opened_seconds": opened_in,
        "records": counts["records"],
        "records_per_s": counts["records"] / seconds,
        "busy_messages": counts["busy_messages"],
        "burst_messages": counts["burst_messages"],
        "bursts": counts["bursts"],
        "handshakes": counts["handshakes"],
        "handshake_errors": counts["handshake_errors"],
        **{f"handshake_{k}": v for k, v in _percentiles(shared.handshake_latencies, p50_ms=50, p99_ms=99).items()},
        "outcomes": dict(shared.outcomes),
        "expected": dict(shared.expected),
        "pool_batches": len(pool),
        "seed": args.seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("run", "idle", "connect", "realistic"))
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
    parser.add_argument("--pool", default=None, help="the realistic pool file (bench/workload.py write; realistic)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the realistic workload's seed")
    parser.add_argument("--busy-share", type=float, default=0.1, help="closed-loop connections (realistic)")
    parser.add_argument("--burst-rate", type=float, default=0.2, help="bursts per second per idle connection")
    parser.add_argument("--burst-batches", type=float, default=3.0, help="mean batches per burst (realistic)")
    parser.add_argument("--churn-share", type=float, default=0.2,
                        help="idle connections that reconnect after each burst (realistic)")
    args = parser.parse_args()
    mode = {"run": run, "idle": idle, "connect": connect, "realistic": realistic}[args.mode]
    result = uvloop.run(mode(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
