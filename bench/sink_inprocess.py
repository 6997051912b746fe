"""What the persist step costs the event loop and the database, in one process, without sockets.

    .venv/bin/python bench/sink_inprocess.py [--sink sqlite|postgresql] [--tasks 50] [--seconds 5]
                                             [--postgres URL] [--json]

The committer (``canaryws.adapters.sink.committer.Committer``) on a real sink: ``--tasks``
tasks in a closed loop each run the strict strategy on the benchmark's 30-record batch
(``bench/load.py``) and submit the outcome, then wait for its commit, as a connection's batch
loop does. After a second of warm-up it counts the committed batches for ``--seconds`` and
reads, over the same window, the CPU time of the event loop's thread, of the whole process
(SQLite's thread included) and of PostgreSQL's processes (all of them on this machine: run it
on a quiet one). It reports per batch: the event loop's µs, with and without the strategy's
own µs (timed alone, first), the process's and PostgreSQL's. The rows of ``canaryws_batches``
must have grown by at least the batches counted (it exits 2 otherwise).

``--sink postgresql`` creates a database on ``--postgres`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and drops it at the end; ``--sink sqlite``
uses a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import uvloop

from canaryws.adapters.sink.committer import Committer
from canaryws.adapters.sink.postgres import PostgresSink
from canaryws.adapters.sink.sqlite import SqliteSink
from canaryws.core.sink import Handoff
from canaryws.core.strategies import STRATEGIES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import batch_records  # bench/load.py: the benchmark's batch

MAX_LENGTH = 10_000


def _postgres_cpu() -> float:
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] and "postgres" in process.info["name"]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def _strategy_us(records: list[Any]) -> float:
    """The strategy's CPU µs per batch alone (the thread's CPU time, like the event loop's below:
    a wall clock would count the time the machine gave to others)."""
    strict = STRATEGIES["strict"].process
    started = time.thread_time()
    for _ in range(5_000):
        strict(records, MAX_LENGTH)
    return (time.thread_time() - started) / 5_000 * 1e6


async def measure(sink: PostgresSink | SqliteSink, tasks: int, seconds: float) -> dict[str, Any]:
    committer = Committer(sink, timeout=5.0, retention=86_400.0)
    await committer.start(5.0)
    running = asyncio.create_task(committer.run())
    records = batch_records(30)
    strict = STRATEGIES["strict"].process
    strategy_us = _strategy_us(records)
    committed = 0
    stop = False

    async def client(i: int) -> None:
        nonlocal committed
        n = 0
        while not stop:
            n += 1
            outcome = strict(records, MAX_LENGTH)
            await committer.submit(Handoff(f"client-{i}", f"batch-{n}", f"connection-{i}", "r1", False, outcome))
            committed += 1

    clients = [asyncio.create_task(client(i)) for i in range(tasks)]
    await asyncio.sleep(1.0)
    process = psutil.Process()
    rows_before = (await sink.row_counts())["canaryws_batches"]
    count0, cpu0, loop0, pg0, wall0 = (committed, sum(process.cpu_times()[:2]), time.thread_time(),
                                       _postgres_cpu(), time.perf_counter())
    await asyncio.sleep(seconds)
    count1, cpu1, loop1, pg1, wall1 = (committed, sum(process.cpu_times()[:2]), time.thread_time(),
                                       _postgres_cpu(), time.perf_counter())
    stop = True
    await asyncio.gather(*clients)
    rows_after = (await sink.row_counts())["canaryws_batches"]
    running.cancel()
    await committer.close(5.0)
    n = count1 - count0
    return {"sink": sink.name, "tasks": tasks, "batches": n, "batches_per_s": n / (wall1 - wall0),
            "loop_us_per_batch": (loop1 - loop0) / n * 1e6, "strategy_us_per_batch": strategy_us,
            "loop_us_per_batch_without_strategy": (loop1 - loop0) / n * 1e6 - strategy_us,
            "process_us_per_batch": (cpu1 - cpu0) / n * 1e6,
            "postgres_us_per_batch": (pg1 - pg0) / n * 1e6 if sink.name == "postgresql" else None,
            "rows_added": rows_after - rows_before}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.sink == "sqlite":
        with tempfile.TemporaryDirectory(prefix="canaryws-sink-bench-") as directory:
            return await measure(SqliteSink(Path(directory) / "sink.sqlite3"), args.tasks, args.seconds)
    database = f"canaryws_sink_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    try:
        await admin.execute(f"CREATE DATABASE {database}")
        url = args.postgres.rsplit("/", 1)[0] + "/" + database
        try:
            return await measure(PostgresSink(url), args.tasks, args.seconds)
        finally:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    finally:
        await admin.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sink", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=50, help="batch loops in a closed loop (default 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds (default 5)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL server to create the run's database on")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args()
    result = uvloop.run(main(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['sink']}: {result['batches_per_s']:,.0f} batches/s with {result['tasks']} tasks; per batch: "
              f"event loop {result['loop_us_per_batch']:.1f} µs ({result['loop_us_per_batch_without_strategy']:.1f} "
              f"without the strategy's {result['strategy_us_per_batch']:.1f}), process "
              f"{result['process_us_per_batch']:.1f} µs"
              + (f", PostgreSQL {result['postgres_us_per_batch']:.1f} µs" if result["postgres_us_per_batch"] else ""))
    if result["rows_added"] < result["batches"]:
        print(f"only {result['rows_added']} rows for {result['batches']} committed batches", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
