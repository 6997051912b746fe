"""``canaryws serve --workers 2`` spreads connections evenly (issue 26, item 4): the supervisor
accepts every connection and hands it to the worker that holds the fewest
(:mod:`canaryws.adapters.server.supervisor`, :mod:`canaryws.adapters.server.handoff`).

Who holds a connection is read from the kernel, not from the service: the ESTABLISHED TCP
sockets on the service's port that each worker process has open (psutil), the supervisor
holding none."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection

from canaryws.adapters.server import handoff
from harness import Service, flags_doc, send_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WORKERS = 2
MAX_RATIO = 1.2  # largest / smallest worker
Client = tuple[ClientConnection, dict[str, Any]]


def established(pid: int, port: int) -> list[Any]:
    """The ESTABLISHED TCP connections on the service's ``port`` that process ``pid`` has open."""
    return [c for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port]


def worker_pids(service: Service, gone: int | None = None) -> dict[int, int]:
    """{worker: pid} once ``WORKERS`` workers are serving (each a child of the supervisor),
    none of them the process ``gone``."""
    assert service.proc is not None
    deadline = time.monotonic() + 30
    while True:
        serving = {r["worker"]: r["pid"] for r in service.log_records()
                   if r.get("logger") == "canaryws.workers" and r["message"] == "worker serving"}
        children = {p.pid for p in psutil.Process(service.proc.pid).children()}
        if len(serving) == WORKERS and set(serving.values()) <= children and gone not in serving.values():
            return serving
        assert time.monotonic() < deadline, service.logs()[-3000:]
        time.sleep(0.05)


def spread(service: Service, pids: list[int], expected: int) -> dict[int, int]:
    """{pid: connections held}, once they add up to ``expected`` (a connection a client sees
    open may take a moment to reach its worker's count, and one closed a moment to leave it)."""
    deadline = time.monotonic() + 10
    while True:
        counts = {pid: len(established(pid, service.port)) for pid in pids}
        if sum(counts.values()) == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def balanced(counts: dict[int, int]) -> bool:
    largest, smallest = max(counts.values()), min(counts.values())
    return smallest > 0 and largest / smallest <= MAX_RATIO


async def open_clients(service: Service, stack: contextlib.AsyncExitStack, prefix: str, count: int) -> list[Client]:
    """``count`` connections opened at once (a burst of handshakes), kept open by ``stack``;
    a distinct client id each (the service caps the connections of one client id)."""
    return list(await asyncio.gather(*(stack.enter_async_context(service.client(f"{prefix}-{n}"))
                                       for n in range(count))))


def holder(service: Service, pids: list[int], clients: list[Client]) -> dict[int, list[Client]]:
    """{pid: the clients whose connection that worker holds}, by the clients' local ports."""
    ports = {pid: {c.raddr.port for c in established(pid, service.port)} for pid in pids}
    return {pid: [c for c in clients if c[0].local_address[1] in ports[pid]] for pid in pids}


def test_two_workers_hold_an_even_share_of_50_and_of_1000_connections(tmp_path: Path) -> None:
    """Also after the clients of one worker leave: the next connections go to it."""
    service = Service(tmp_path, flags_doc(), extra_args=["--workers", str(WORKERS)])
    seen: dict[str, dict[int, int]] = {}

    async def scenario(pids: list[int]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_clients(service, stack, "fifty", 50)
            seen["50"] = spread(service, pids, 50)
            clients += await open_clients(service, stack, "more", 950)
            seen["1000"] = spread(service, pids, 1000)
            # Every connection is served where it landed.
            answers = await asyncio.gather(*(send_batch(ws, f"b-{n}", [" a "]) for n, (ws, _) in enumerate(clients)))
            assert all(frames[-1]["accepted"] == [{"index": 0, "value": "a"}] for frames in answers)
            # 300 clients of the first worker leave; the next 300 connections all go to it.
            leaving = holder(service, pids, clients)[pids[0]][:300]
            await asyncio.gather(*(ws.close() for ws, _ in leaving))
            seen["700 after 300 of one worker left"] = spread(service, pids, 700)
            await open_clients(service, stack, "back", 300)
            seen["1000 again"] = spread(service, pids, 1000)

    with service:
        pids = sorted(worker_pids(service).values())
        asyncio.run(scenario(pids))
        assert service.proc is not None
        supervisor_held = len(established(service.proc.pid, service.port))
        status = service.stop()

    assert status == 0, service.logs()[-3000:]
    assert supervisor_held == 0, "the supervisor kept a copy of connections it handed over"
    assert min(seen["700 after 300 of one worker left"].values()) <= 201, seen
    for step, counts in seen.items():
        assert sum(counts.values()) == int(step.split()[0]), f"{step}: the workers hold {counts}"
        if step != "700 after 300 of one worker left":
            ratio = max(counts.values()) / max(min(counts.values()), 1)
            assert balanced(counts), f"{step} connections: {counts} (largest / smallest {ratio:.2f})"
    assert max(seen["1000 again"].values()) - min(seen["1000 again"].values()) <= 2, seen  # (a probe's connection)


def test_connections_queued_for_a_worker_that_dies_are_served_by_the_other_and_none_leaks(tmp_path: Path) -> None:
    """A stopped worker takes nothing from its channel; killed, what was queued for it goes to
    the other worker (the clients only wait), the replacement then gets the next connections
    until the two are even, and the supervisor holds no descriptor more than before."""
    service = Service(tmp_path, flags_doc(), extra_args=["--workers", str(WORKERS)])

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            before = worker_pids(service)
            assert service.proc is not None
            supervisor = psutil.Process(service.proc.pid)
            supervisor_fds = supervisor.num_fds()
            os.kill(before[1], signal.SIGSTOP)
            opening = asyncio.ensure_future(open_clients(service, stack, "queued", 20))
            await asyncio.sleep(1.0)
            assert not opening.done()  # half of them wait in worker 1's channel
            os.kill(before[1], signal.SIGKILL)
            clients = await opening
            assert spread(service, [before[2]], 20) == {before[2]: 20}
            answers = await asyncio.gather(*(send_batch(ws, f"q-{n}", ["x"]) for n, (ws, _) in enumerate(clients)))
            assert all(frames[-1]["accepted"] == [{"index": 0, "value": "x"}] for frames in answers)
            after = worker_pids(service, gone=before[1])
            assert after[2] == before[2]
            await open_clients(service, stack, "fresh", 40)
            fresh = spread(service, list(after.values()), 60)
            assert abs(fresh[after[1]] - fresh[after[2]]) <= 2, fresh  # 20 to the replacement, then 10 each
            assert supervisor.num_fds() == supervisor_fds  # the replacement's channel took the dead one's place

    with service:
        asyncio.run(scenario())
        status = service.stop()
    assert status == 0, service.logs()[-3000:]
    (died,) = [r for r in service.log_records() if r["message"].startswith("worker exited unexpectedly")]
    assert died["worker"] == 1 and died["exit_status"] == -signal.SIGKILL
    assert died["connections_taken_back"] == 10, died


def test_the_worker_builds_each_connection_s_protocol_as_uvicorn_does_for_its_own_listener() -> None:
    """:func:`handoff.protocol_factory` copies uvicorn's ``Server.startup`` (its
    ``create_protocol``): pinned against the installed uvicorn by capturing the factory it
    gives ``loop.create_server`` and comparing what both build."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("no request is served")

    async def scenario() -> None:
        config = uvicorn.Config(app, http="httptools", ws="websockets-sansio", lifespan="off", log_config=None)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        loop = asyncio.get_running_loop()
        captured: list[Any] = []
        create_server = loop.create_server

        async def capturing(factory: Any, *args: Any, **kwargs: Any) -> Any:
            captured.append(factory)
            return await create_server(factory, *args, **kwargs)

        loop.create_server = capturing  # type: ignore[method-assign,assignment]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            await server.startup(sockets=[sock])
            try:
                (uvicorns,) = captured
                theirs, ours = uvicorns(), handoff.protocol_factory(server)()
                assert type(ours) is type(theirs) is config.http_protocol_class
                assert vars(ours).keys() == vars(theirs).keys()
                for name in ("config", "server_state", "app_state", "connections", "tasks"):
                    assert getattr(ours, name) is getattr(theirs, name), name
            finally:
                for listener in server.servers:
                    listener.close()

    asyncio.run(scenario())


def test_a_worker_s_published_count_follows_uvicorn_s_connections() -> None:
    """uvicorn's protocols add themselves to ``server_state.connections`` and discard or
    remove themselves: every change reaches the shared counter."""
    published: list[int] = []
    connections = handoff.PublishedConnections(published.append)
    first, second = object(), object()
    connections.add(first)
    connections.add(second)
    connections.discard(first)
    connections.remove(second)
    connections.discard(second)
    assert published == [1, 2, 1, 0, 0] and not connections
    taken: list[int] = []
    connections = handoff.PublishedConnections(published.append, taken.append)
    arriving, failing = object(), object()
    connections.arriving(arriving)
    connections.arriving(failing)
    connections.add(arriving)  # its connection is made: counted after the size
    connections.add(arriving)
    assert published[-2:] == [1, 1] and taken == [1]
    assert connections.abandon(failing) and not connections.abandon(failing) and not connections.abandon(arriving)
    assert taken == [1]


class _Counters:
    """A worker's counters that records the supervisor's estimate (``sent - taken + live``)
    after every write, ``sent`` being what the test sent."""

    def __init__(self, sent: list[int]) -> None:
        self.values = [0, 0]
        self.sent = sent
        self.estimates: list[int] = []

    def __getitem__(self, slot: int) -> int:
        return self.values[slot]

    def __setitem__(self, slot: int, value: int) -> None:
        self.values[slot] = value
        self.estimates.append(self.sent[0] - self.values[handoff.TAKEN] + self.values[handoff.LIVE])


class _Held(asyncio.Protocol):
    """Adds itself to the connections when its connection is made, as uvicorn's protocols do."""

    def __init__(self, connections: set[Any]) -> None:
        self.connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)


def test_a_burst_handed_to_a_worker_is_counted_once_at_every_moment() -> None:
    """While a worker turns a burst of descriptors into connections, the supervisor's estimate
    of its connections stays what was sent to it: a descriptor leaves ``sent - taken``
    when it enters ``live`` (counting it as taken only once the whole burst was connected
    counted it twice meanwhile, and the supervisor sent the rest of a burst elsewhere)."""
    sent = [0]
    counters = _Counters(sent)
    ours, theirs = handoff.channel_pair()
    inbox = handoff.Inbox(theirs, counters)
    connections = handoff.PublishedConnections(inbox.live, inbox.taken)
    pairs = [socket.socketpair() for _ in range(300)]

    async def scenario() -> None:
        listener = handoff.HandoffListener(inbox, lambda: _Held(connections), connections)
        for start in range(0, len(pairs), 100):
            handoff.send_fds(ours, [served.fileno() for served, _ in pairs[start:start + 100]])
            sent[0] += 100
        deadline = time.monotonic() + 10
        while counters.values[handoff.TAKEN] < len(pairs):
            assert time.monotonic() < deadline, counters.values
            await asyncio.sleep(0.01)
        listener.close()
        await listener.wait_closed()

    try:
        asyncio.run(scenario())
    finally:
        for served, peer in pairs:
            served.close()
            peer.close()
        ours.close()
    assert counters.values == [300, 300] and len(connections) == 300
    # 300 everywhere, but for the instant between a connection's two writes (``live``, then ``taken``)
    assert set(counters.estimates) == {300, 301}, sorted(set(counters.estimates))
