"""``canaryws serve --workers 2`` spreads connections evenly (issue 26, item 4): the supervisor
accepts every connection and hands it to the worker that holds the fewest
(:mod:`canaryws.adapters.server.supervisor`, :mod:`canaryws.adapters.server.handoff`).

Who holds a connection is read from the kernel, not from the service: the ESTABLISHED TCP
sockets on the service's port that each worker process has open (psutil), the supervisor
holding none."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import ClientConnection

from harness import Service, flags_doc, send_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WORKERS = 2
MAX_RATIO = 1.2  # largest / smallest worker
Client = tuple[ClientConnection, dict[str, Any]]


def held_connections(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections on the service's ``port`` that process ``pid`` has open."""
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def worker_pids(service: Service) -> list[int]:
    """The supervisor's worker processes, once ``WORKERS`` of them say they are serving."""
    assert service.proc is not None
    deadline = time.monotonic() + 30
    while True:
        serving = {r["worker"]: r["pid"] for r in service.log_records()
                   if r.get("logger") == "canaryws.workers" and r["message"] == "worker serving"}
        if len(serving) == WORKERS:
            children = {p.pid for p in psutil.Process(service.proc.pid).children()}
            assert set(serving.values()) <= children, (serving, children)
            return sorted(serving.values())
        assert time.monotonic() < deadline, service.logs()[-3000:]
        time.sleep(0.05)


def spread(service: Service, pids: list[int], expected: int) -> dict[int, int]:
    """{pid: connections held}, once they add up to ``expected`` (a connection a client sees
    open may take a moment to reach its worker's count, and one closed a moment to leave it)."""
    assert service.proc is not None
    deadline = time.monotonic() + 10
    while True:
        counts = {pid: held_connections(pid, service.port) for pid in pids}
        if sum(counts.values()) == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


async def open_clients(service: Service, stack: contextlib.AsyncExitStack, prefix: str, count: int) -> list[Client]:
    """``count`` connections opened at once (a burst of handshakes), kept open by ``stack``;
    a distinct client id each (the service caps the connections of one client id)."""
    return list(await asyncio.gather(*(stack.enter_async_context(service.client(f"{prefix}-{n}"))
                                       for n in range(count))))


def test_two_workers_hold_an_even_share_of_50_and_of_1000_connections(tmp_path: Path) -> None:
    service = Service(tmp_path, flags_doc(), extra_args=["--workers", str(WORKERS)])
    seen: dict[int, dict[int, int]] = {}

    async def scenario(pids: list[int]) -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = await open_clients(service, stack, "fifty", 50)
            seen[50] = spread(service, pids, 50)
            clients += await open_clients(service, stack, "more", 950)
            seen[1000] = spread(service, pids, 1000)
            # Every connection is served where it landed.
            answers = await asyncio.gather(*(send_batch(ws, f"b-{n}", [" a "]) for n, (ws, _) in enumerate(clients)))
            assert all(frames[-1]["accepted"] == [{"index": 0, "value": "a"}] for frames in answers)

    with service:
        pids = worker_pids(service)
        asyncio.run(scenario(pids))
        assert service.proc is not None
        supervisor_held = held_connections(service.proc.pid, service.port)
        status = service.stop()

    assert status == 0, service.logs()[-3000:]
    assert supervisor_held == 0, "the supervisor kept a copy of connections it handed over"
    for total, counts in seen.items():
        assert sum(counts.values()) == total, f"{total} connections open, the workers hold {counts}"
        largest, smallest = max(counts.values()), min(counts.values())
        assert smallest > 0 and largest / smallest <= MAX_RATIO, (
            f"{total} connections: {counts} (largest / smallest {largest / max(smallest, 1):.2f})")
