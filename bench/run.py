"""The canaryws benchmark: canaryws against the servers that bound it, on one machine, one command.

    make bench                                   # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py [--rounds 5] [--duration 5] [--warmup 1] [--connections 50]
        [--records 30] [--idle 5000] [--active 1000] [--connect-duration 5] [--no-scale]
        [--quick] [--check] [--json PATH] [--markdown PATH] [--keep] [--servers lean,canaryws,...]
        [--no-realistic] [--realistic-connections 1000] [--seed 2026]
        [--postgres postgresql://postgres@127.0.0.1:5432/postgres]

What it does, in order:

1. Set-up. A temp dir with the flags files (from ``flags/features.json``: "strict pinned" =
   ``records.strict`` at 100 %, "shadow" = that plus ``records.shadow`` enabled), one data dir
   per canaryws process with bearer tokens issued into it (one client id per connection: the
   service caps 16 connections per client id), and the servers' logs. RLIMIT_NOFILE's soft
   limit is raised to the hard limit (the servers and load clients inherit it). Every server
   starts at once on a free port, each in a process group of its own; the run waits until
   each answers (``/healthz`` for canaryws, a TCP connection for the others).

   ========================  ==============================================================
   ``echo``                  bare FastAPI WebSocket echo: the stack's ceiling (bench/apps.py)
   ``lean``                  the same strict work as canaryws, nothing else (bench/apps.py)
   ``lean-both``             lean + the lenient strategy inline: the second strategy's own work
   ``lean-stack``            lean's work on canaryws' WebSocket stack (its frame reader and
                             writer, bench/apps.py): canaryws' overhead on its own stack
   ``naive``                 ``is_enabled`` per batch + OTel's default instrumentation
   ``canaryws``              ``canaryws serve``, production settings (below), strict pinned,
                             ``CANARYWS_SINK=none`` (answers without persisting)
   ``canaryws-w8``           canaryws driven with 8 batches in flight per connection (as the
                             SDK keeps up to 32): the persist step's pair is measured that way
   ``canaryws-sqlite``       canaryws-w8 with the default sink: ``CANARYWS_SINK=sqlite``, the
                             file ``sink.sqlite3`` in its own data dir (WAL, synchronous=FULL)
   ``canaryws-postgres``     the same with ``CANARYWS_SINK=postgresql://.../<db>``: a fresh
                             database the run creates on ``--postgres``'s server, and drops
                             at the end (kept with ``--keep``)
   ``canaryws-telemetry-off`` canaryws + ``OTEL_SDK_DISABLED=true`` (sink none)
   ``canaryws-shadow``       the same as canaryws + ``records.shadow`` on (sink none)
   ``canaryws-2workers``     the same as canaryws + ``--workers 2`` (sink none; skipped, with a
                             note, when ``canaryws serve --help`` has no ``--workers``)
   ``canaryws-idle``         a fresh canaryws (production settings, the default sink: idle
                             connections do not touch it) used only by the idle step
   ========================  ==============================================================

   The service persists by default (SQLite); ``canaryws`` and its variants run with
   ``CANARYWS_SINK=none`` so that their ratios keep their meaning (the processing's overhead
   over lean), and the persist step is measured on its own, by the two sink servers against
   ``canaryws``. PostgreSQL must be reachable at ``--postgres`` (default
   ``postgresql://postgres@127.0.0.1:5432/postgres``, a role that may create databases): when
   it is not, the run stops with status 2 before any server starts (``--servers`` without
   ``canaryws-postgres`` leaves it out). Before the rounds, every canaryws server's ``/readyz``
   must show what it was given: a ``sink`` part in state ``ok`` for the sink servers, none
   for the others.

   Production settings: ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``,
   ``OTEL_TRACES_SAMPLER_ARG=0.01`` (1 % of batch spans, to the trace file in the data dir),
   metrics on, ``CANARYWS_MAX_MESSAGES_PER_SECOND=1000000`` (the per-connection limit of
   500/s would bind at 50 connections and measure the limiter; its bucket still runs), and the
   connection cap and handshake rates lifted (the load opens thousands of connections from one
   address in the scale steps; docs/contract.md, "Limits"). Other
   ``OTEL_*``, ``CANARYWS_*`` and ``UNLEASH_*`` variables of the caller are not passed on.

2. Throughput rounds (``--rounds``). Each round drives every server once with a fresh
   ``bench/load.py run`` process (``--connections`` closed-loop connections, each sending a
   ``--records``-record batch and waiting for its answer; ``--warmup`` s, then ``--duration``
   s measured). The order rotates each round, and every other round is reversed, so that
   drift hits every server alike. Over the measured window (the load client prints marks)
   it samples the CPU time of the server's process tree (user + system, psutil) and of the
   load client: CPU µs per message, and how busy each was (100 % = one core). Every load
   process gets its own batch-id prefix (``load.py --id-prefix``): a sink keeps each
   ``(client id, batch id)`` once, and a reused id would be a replay, not a new batch.

   The realistic workload (issue 26; ``--no-realistic`` skips it): right after its fixed-shape
   run, every server of the round gets a second load process, ``bench/load.py realistic``, with
   the same warm-up, window and CPU sampling: ``--realistic-connections`` connections (1,000),
   10 % of them closed-loop senders (``--window`` in flight, as the server's fixed-shape run),
   the others idle with bursts (an exponential wait of 5 s on average, then 3 batches on average
   in a closed loop; bench/load.py's docstring), 20 % of those reconnecting after each burst (a
   fresh handshake). The
   batches come from one pool that ``bench/workload.py write`` makes at the start from ``--seed``
   (its docstring: Faker text in nine locales, Zipf batch sizes 1..10,000, defects per strict
   reason), in its seeded order. Every answer in the window must be a ``result`` for its batch
   with one outcome per record, and the rejections per code in the answers must equal the
   pool's (an echo: as long as its frame); a batch lost or a connection closed by the server
   stops the run. For canaryws servers the bench also reads ``canaryws_frames_throttled_total``
   around the pass (``throttled``: frames a limit held back).

   Around each run against a sink server the bench counts the rows of ``canaryws_batches``
   and reads the sink's metrics on ``/metrics``. The run fails (status 2) when the rows did
   not grow by at least the answers counted (every result is sent only after its batch is
   committed, so fewer rows means the sink was off or lost batches). From the metrics'
   differences: group commits, batches per commit, the mean commit time and its p50/p99
   (bucket bounds), and how busy the commits kept the sink (commit seconds per second: at
   most 2 for SQLite: one group writing, one queued on its thread; 4 for PostgreSQL's four
   connections).

3. Ratios, per round (paired within the round), then the median over rounds:
   canaryws / lean (goal >= 0.95), telemetry on / off = canaryws / canaryws-telemetry-off
   (goal >= 0.95), canaryws / echo (goal >= 0.50), p99.9 canaryws / lean (p99.9 latencies,
   goal <= 1.5), postgresql sink / none = canaryws-postgres / canaryws-w8 (goal >= 0.7),
   sqlite sink / none = canaryws-sqlite / canaryws-w8 (goal >= 0.5), lean / echo,
   naive / canaryws, 2workers / canaryws (no goals), CPU per msg 2workers / canaryws (CPU
   µs/msg, goal <= 1.1), and the
   shadow cost = (CPU µs/msg canaryws-shadow - canaryws) / (CPU µs/msg lean-both - lean)
   (goal <= 1.0: the shadow costs no more than the second strategy's own work; a round in
   which lean-both - lean is not positive has no value, rather than a negative one).
   Every ratio is computed on both workloads, each paired within its round, and shown side by
   side ("fixed shape", "realistic"); the goals (and ``--check``) apply to the fixed shape.

4. Scale (``--no-scale`` skips it). (a) ``--idle`` idle connections on ``canaryws-idle``:
   warm-up (50 connections sending batches for a moment, then closed), RSS baseline, open
   the idle connections (``load.py idle``), wait 2 s, RSS again: (RSS - baseline) / N in
   KiB (goal <= 30 KiB), and all N open, by the client's count and by the server's
   ``canaryws_connections_active`` on ``/metrics`` (goal: both N); then they are released.
   (b) throughput with ``--active`` connections against canaryws and lean (sink none, as in
   the rounds). (c) connect rate
   (``load.py connect --concurrency 50`` for ``--connect-duration`` s) against canaryws
   (handshake + token check + cohort decision + welcome frame) and lean (handshake only),
   ``--connect-rounds`` rounds (5) in alternating order: the server CPU per handshake,
   canaryws / lean per round and its median (goal <= 1.5).

5. Output: the tables on stdout; ``--json PATH`` all raw numbers (every round), the machine
   and the settings; ``--markdown PATH`` the tables in Markdown. The exit status is 0 even
   when a goal is missed, unless ``--check`` is given (then 1). A failure (a server that
   dies, a load client that errors) stops the run with status 2 and keeps the temp dir.

6. ``--quick`` is a smoke run (1 round of 1 s after 0.3 s, 300 idle, 100 active, 1 s connect
   in 1 round, 200 realistic connections);
   tests/integration/test_bench.py runs it.

Everything started is stopped at the end, also on failure, Ctrl-C or SIGTERM (each server's
process group gets SIGTERM, then SIGKILL after 10 s), and the PostgreSQL database is dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import queue
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from canaryws.adapters.auth import TokenAuthority
from canaryws.core.flagdoc import encode_flags_document, parse_flags_document, with_enabled, with_rollout

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
LOAD = BENCH / "load.py"
WORKLOAD = BENCH / "workload.py"
APPS = BENCH / "apps.py"
FLAGS = ROOT / "flags" / "features.json"
PACKAGES = ("canaryws", "uvicorn", "fastapi", "starlette", "websockets", "uvloop", "picows",
            "opentelemetry-sdk", "opentelemetry-instrumentation-fastapi", "psutil", "numpy")

PRODUCTION_ENV = {
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
    "CANARYWS_MAX_MESSAGES_PER_SECOND": "1000000",
    # The load comes from one address and opens thousands of connections at once (the idle,
    # active and connect steps): the door's caps would measure themselves, as the rate would.
    "CANARYWS_MAX_CONNECTIONS": "1000000",
    "CANARYWS_MAX_HANDSHAKES_PER_SECOND": "0",
    "CANARYWS_MAX_SOURCE_HANDSHAKES_PER_SECOND": "0",
}
DROPPED_PREFIXES = ("OTEL_", "CANARYWS_", "UNLEASH_")
# canaryws and its variants answer without persisting: their ratios measure the processing (the
# service's default, an SQLite sink, is measured by canaryws-sqlite against canaryws).
NO_SINK = {"CANARYWS_SINK": "none"}
SQLITE_FILE = "sink.sqlite3"  # the default sink's file in the data dir
BATCHES_TABLE = "canaryws_batches"  # one row per batch committed the first time
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The order of a round before rotation: the servers compared with each other sit side by side.
SINK_WINDOW = 8
"""Batches in flight per connection in the sink comparison: the persist step's pair
(``canaryws-w8`` without a sink, ``canaryws-sqlite`` and ``canaryws-postgres``) is measured with
a load client that keeps 8 batches in flight on each connection, as the SDK does (up to 32),
since with one in flight each connection waits a whole commit per batch and the throughput
measures the commit's latency, not the service's work (docs/benchmarks.md)."""
PIPELINED = f"canaryws-w{SINK_WINDOW}"
ROUND_ORDER = ("echo", "lean", "canaryws", "lean-stack", PIPELINED, "canaryws-postgres", "canaryws-sqlite",
               "canaryws-telemetry-off", "canaryws-shadow", "lean-both", "naive", "canaryws-2workers")


@dataclass(frozen=True)
class Ratio:
    name: str
    numerator: str
    denominator: str
    goal: str | None = None  # ">= x" or "<= x"
    kind: str = "throughput"  # msg/s; "cpu": CPU µs/msg; "tail": p99.9 ms; "shadow": CPU µs/msg differences

    def met(self, value: float | None) -> bool | None:
        if self.goal is None:
            return None
        if value is None or not math.isfinite(value):
            return False
        op, bound = self.goal.split()
        return value >= float(bound) if op == ">=" else value <= float(bound)


RATIOS = (
    Ratio("canaryws / lean", "canaryws", "lean", ">= 0.95"),
    Ratio("telemetry on / off", "canaryws", "canaryws-telemetry-off", ">= 0.95"),
    Ratio("canaryws / echo", "canaryws", "echo", ">= 0.50"),
    Ratio("p99.9 canaryws / lean", "canaryws", "lean", "<= 1.5", kind="tail"),
    Ratio("postgresql sink / none", "canaryws-postgres", PIPELINED, ">= 0.7"),
    Ratio("sqlite sink / none", "canaryws-sqlite", PIPELINED, ">= 0.5"),
    Ratio("lean / echo", "lean", "echo"),
    Ratio("canaryws / lean-stack", "canaryws", "lean-stack"),
    Ratio("naive / canaryws", "naive", "canaryws"),
    Ratio("2workers / canaryws", "canaryws-2workers", "canaryws"),
    Ratio("CPU per msg 2workers / canaryws", "canaryws-2workers", "canaryws", "<= 1.1", kind="cpu"),
    Ratio("shadow cost", "canaryws-shadow - canaryws", "lean-both - lean", "<= 1.0", kind="shadow"),
)
IDLE_KIB_GOAL = 30.0
HANDSHAKE_GOAL = 1.5  # canaryws' CPU per connection lifecycle (connect, welcome, close) / lean's, at most
THROTTLED_METRIC = "canaryws_frames_throttled_total"  # frames a canaryws limit held back (the realistic pass)
WORKLOADS = ("fixed shape", "realistic")
BUSY_MACHINE = 0.5  # cores used by the rest of the machine during a measurement that make it suspect


class BenchError(RuntimeError):
    """A server or load client failed: the run stops (exit status 2)."""


# -- processes ------------------------------------------------------------------------------

# Server ports come from below the kernel's ephemeral range (32768-60999 by default): a port the
# kernel hands out (port 0) can be taken, before the server binds it, by any outgoing connection on
# the machine, the load clients' thousands included.
PORT_RANGE = (20000, 32000)
PORT = "{port}"  # the placeholder in a server's argv
_ports_taken: set[int] = set()


def free_port() -> int:
    for _ in range(1000):
        port = random.randrange(*PORT_RANGE)
        if port in _ports_taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_taken.add(port)
        return port
    raise BenchError(f"no free port in {PORT_RANGE}")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (uvicorn workers)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine was busy (all cores: user, nice, system, irq, softirq), and stolen."""
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    return float(busy), float(getattr(times, "steal", 0.0))


def tree_rss_bytes(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL when it is still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # The leader may be gone while others of its group (workers) linger.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class Server:
    name: str
    argv: list[str]  # with PORT where the port goes
    env: dict[str, str]
    log: Path
    welcome: bool = False  # canaryws greets first
    tokens: Path | None = None
    echo: bool = False
    health_path: str | None = None  # HTTP readiness probe; None: a TCP connection
    # canaryws' sink as /readyz must show it: "sqlite", "postgresql", "none" (no sink part); None: not checked
    sink: str | None = None
    sink_location: str = ""  # the SQLite file, or the PostgreSQL URL, whose rows are counted
    window: int = 1  # batches the load client keeps in flight per connection
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/records"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, cwd: Path) -> None:
        self.port = free_port()
        self.starts += 1
        argv = [str(self.port) if arg == PORT else arg for arg in self.argv]
        with self.log.open("ab") as log:
            log.write(f"-- start {self.starts}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)

    def lost_its_port(self) -> bool:
        """It exited at start-up because its port was taken meanwhile (it may start again elsewhere)."""
        return (self.proc is not None and self.proc.poll() is not None
                and "address already in use" in tail(self.log, 5))

    def ensure_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"server {self.name} is not running (exit {code}); its log:\n{tail(self.log)}")

    def ready(self) -> bool:
        self.ensure_alive()
        if self.health_path is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.health_path}", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def load_flags(self) -> list[str]:
        flags = ["--welcome"] if self.welcome else []
        flags += ["--tokens", str(self.tokens)] if self.tokens is not None else []
        flags += ["--echo"] if self.echo else []
        return flags

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str) -> float | None:
        """The sum of a Prometheus metric's samples on ``/metrics``, None when absent."""
        values = [value for sample, _, value in parse_metrics(self.metrics_text()) if sample == name]
        return sum(values) if values else None

    def readyz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as response:
            return dict(json.loads(response.read()))

    @property
    def persists(self) -> bool:
        return self.sink in ("sqlite", "postgresql")

    def sink_ready(self) -> bool:
        """Whether ``/readyz`` shows the sink this server was given (False while it is starting);
        a BenchError when it shows another one, or none where one was given (or the reverse)."""
        if self.sink is None:
            return True
        sink = self.readyz().get("sink")
        if self.sink == "none":
            if sink is not None:
                raise BenchError(f"server {self.name} runs with CANARYWS_SINK=none but /readyz shows a sink: {sink}")
            return True
        if sink is None:
            raise BenchError(f"server {self.name} was given the {self.sink} sink but /readyz shows no sink part: "
                             "the service ignored CANARYWS_SINK")
        if sink.get("sink") != self.sink:
            raise BenchError(f"server {self.name} was given the {self.sink} sink but /readyz shows {sink}")
        return bool(sink.get("state") == "ok")

    def sink_rows(self) -> int:
        """The rows of ``canaryws_batches`` in this server's sink."""
        if self.sink == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.sink_location}?mode=ro", uri=True,
                                                    timeout=10)) as db:
                return int(db.execute(f"SELECT count(*) FROM {BATCHES_TABLE}").fetchone()[0])
        if self.sink == "postgresql":
            return int(postgres(self.sink_location, f"SELECT count(*) FROM {BATCHES_TABLE}"))
        raise BenchError(f"server {self.name} has no sink to count rows in")


# -- the sinks ----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        with contextlib.suppress(ValueError):
            out.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return out


def sink_counters(text: str) -> dict[str, Any]:
    """The sink's counters on ``/metrics`` (zero while absent: a counter appears at its first count)."""
    out: dict[str, Any] = {"commits_ok": 0.0, "commits_failed": 0.0, "commit_seconds": 0.0, "commit_count": 0.0,
                           "buckets": {}, "batches": {}}
    for name, labels, value in parse_metrics(text):
        if name == "canaryws_sink_commits_total":
            key = "commits_ok" if labels.get("result") == "ok" else "commits_failed"
            out[key] += value
        elif name == "canaryws_sink_commit_duration_seconds_sum":
            out["commit_seconds"] += value
        elif name == "canaryws_sink_commit_duration_seconds_count":
            out["commit_count"] += value
        elif name == "canaryws_sink_commit_duration_seconds_bucket" and labels.get("result", "ok") == "ok":
            le = float(labels["le"])  # "+Inf" parses
            out["buckets"][le] = out["buckets"].get(le, 0.0) + value
        elif name == "canaryws_sink_batches_total":
            outcome = labels.get("outcome", "?")
            out["batches"][outcome] = out["batches"].get(outcome, 0.0) + value
    return out


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The upper bound of the (cumulative) bucket that holds quantile ``q``; None without counts."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    return next(le for le in bounds if buckets[le] >= rank)


def sink_window(before: dict[str, Any], after: dict[str, Any], rows: int, wall: float) -> dict[str, Any]:
    """What the sink did between two :func:`sink_counters` (``rows``: new rows of canaryws_batches)."""
    commits = after["commits_ok"] - before["commits_ok"]
    count = after["commit_count"] - before["commit_count"]
    seconds = after["commit_seconds"] - before["commit_seconds"]
    buckets = {le: after["buckets"].get(le, 0.0) - before["buckets"].get(le, 0.0) for le in after["buckets"]}
    batches = {k: v - before["batches"].get(k, 0.0) for k, v in after["batches"].items()}
    committed = batches.get("committed", 0.0)
    p50, p99 = bucket_quantile(buckets, 0.5), bucket_quantile(buckets, 0.99)
    return {
        "rows": rows,
        "commits": commits,
        "commits_failed": after["commits_failed"] - before["commits_failed"],
        "batches_committed": committed,
        "batches_replayed": batches.get("replayed", 0.0),
        "batches_unavailable": batches.get("unavailable", 0.0),
        "batches_per_commit": committed / commits if commits else None,
        "commits_per_s": commits / wall if wall > 0 else None,
        "commit_ms_mean": seconds / count * 1e3 if count else None,
        "commit_ms_p50_le": None if p50 is None else p50 * 1e3,
        "commit_ms_p99_le": None if p99 is None else p99 * 1e3,
        "commit_busy": seconds / wall if wall > 0 else None,  # commit seconds per second (concurrent ones add up)
        "wall_s": wall,
    }


def check_sink_rows(server: str, rows: int, answers: int) -> None:
    """Every result is sent after its batch is committed: fewer new rows than answers counted is a sink
    that was off (or lost batches), and the run stops."""
    if rows <= 0 or rows < answers:
        raise BenchError(f"server {server}: {rows} new rows in {BATCHES_TABLE} for {answers} answers counted: "
                         "the sink did not receive the batches")


def postgres(url: str, *statements: str, timeout: float = 10.0) -> Any:
    """Run ``statements`` on ``url`` (asyncpg), each on its own (outside a transaction: CREATE/DROP
    DATABASE); the last one's first value. A BenchError that says so when the server is unreachable."""
    import asyncpg  # a dependency of canaryws' PostgreSQL sink

    async def go() -> Any:
        conn = await asyncpg.connect(url, timeout=timeout)
        try:
            value = None
            for statement in statements:
                value = await conn.fetchval(statement, timeout=timeout)
            return value
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        where = urllib.parse.urlsplit(url)
        raise BenchError(f"PostgreSQL at {where.hostname}:{where.port or 5432} (database {where.path.lstrip('/')!r}, "
                         f"user {where.username!r}): {type(err).__name__}: {err}") from None


def redact_url(url: str) -> str:
    """``url`` with its password, if any, as ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def database_url(admin: str, database: str) -> str:
    """``admin`` with its database replaced by ``database``."""
    return urllib.parse.urlsplit(admin)._replace(path="/" + database).geturl()


class LoadClient:
    """One ``bench/load.py`` process; its stdout lines arrive on a queue (a reader thread)."""

    live: set[LoadClient] = set()  # noqa: RUF012 (the run's live clients, for teardown)

    def __init__(self, args: Sequence[str], log: Path, stdin: bool = False) -> None:
        self.log_file: IO[bytes] = log.open("ab")
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(LOAD), *args], stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stderr=self.log_file,
                                     start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        LoadClient.live.add(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise BenchError(f"load client: no {prefix!r} line within {timeout:.0f} s; stderr:\n"
                                 f"{tail(self.log)}") from None
            if line is None:
                self.proc.wait()
                raise BenchError(f"load client exited ({self.proc.returncode}) before {prefix!r}; stderr:\n"
                                 f"{tail(self.log)}")
            if line.startswith(prefix):
                return line

    def send_line(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        line = self.expect("{", timeout)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise BenchError("load client did not exit after its result") from None
        if self.proc.returncode != 0:
            raise BenchError(f"load client exited with {self.proc.returncode}; stderr:\n{tail(self.log)}")
        return dict(json.loads(line))

    def close(self) -> None:
        stop_group(self.proc, timeout=5)
        self.log_file.close()
        LoadClient.live.discard(self)


# -- the run ------------------------------------------------------------------------------------

@dataclass
class Settings:
    rounds: int
    duration: float
    warmup: float
    connections: int
    records: int
    idle: int
    active: int
    connect_duration: float
    connect_concurrency: int
    connect_rounds: int
    scale: bool
    quick: bool
    pause: float
    only: frozenset[str] | None = None  # --servers: the throughput servers to run (None: all)
    postgres: str = POSTGRES_ADMIN  # where canaryws-postgres' database is created (and dropped)
    keep: bool = False  # keep the temp dir and the database
    realistic: bool = True  # every server also runs the realistic workload (bench/workload.py) in each round
    realistic_connections: int = 1000
    seed: int = 2026  # the realistic workload's (bench/workload.py's DEFAULT_SEED)

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (``only`` as a sorted list, ``postgres`` without its password)."""
        return {**vars(self), "only": sorted(self.only) if self.only is not None else None,
                "postgres": redact_url(self.postgres)}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = bool(args.quick)

        def pick(value: Any, default: Any, quick_value: Any) -> Any:
            return value if value is not None else (quick_value if quick else default)

        return cls(
            rounds=pick(args.rounds, 5, 1),
            duration=pick(args.duration, 5.0, 1.0),
            warmup=pick(args.warmup, 1.0, 0.3),
            connections=pick(args.connections, 50, 50),
            records=pick(args.records, 30, 30),
            idle=pick(args.idle, 5000, 300),
            active=pick(args.active, 1000, 100),
            connect_duration=pick(args.connect_duration, 5.0, 1.0),
            connect_concurrency=pick(args.connect_concurrency, 50, 50),
            connect_rounds=pick(args.connect_rounds, 5, 1),
            scale=not args.no_scale and not args.servers,
            quick=quick,
            pause=0.2 if quick else 0.5,
            only=frozenset(args.servers.split(",")) if args.servers else None,
            postgres=args.postgres or POSTGRES_ADMIN,
            keep=bool(args.keep),
            realistic=not args.no_realistic,
            realistic_connections=pick(args.realistic_connections, 1000, 200),
            seed=args.seed if args.seed is not None else 2026,
        )


@dataclass
class Bench:
    settings: Settings
    workdir: Path
    servers: dict[str, Server] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    database: str = field(default_factory=lambda: f"canaryws_bench_{os.getpid()}_{secrets.token_hex(3)}")
    database_created: bool = False
    load_processes: int = 0  # each run-mode load process gets its own batch-id prefix
    pool_file: Path | None = None  # the realistic workload's pool (bench/workload.py write)
    workload: dict[str, Any] | None = None  # its summary
    realistic_rounds: list[list[dict[str, Any]]] = field(default_factory=list)

    # -- set-up ---------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def canaryws_command(self) -> list[str]:
        script = Path(sys.executable).parent / "canaryws"
        return [str(script)] if script.exists() else [sys.executable, "-m", "canaryws"]

    def has_workers_option(self) -> bool:
        done = subprocess.run([*self.canaryws_command(), "serve", "--help"], capture_output=True, text=True,
                              timeout=60, check=False)
        return "--workers" in done.stdout

    def plan(self) -> None:
        s = self.settings
        flags_dir = self.workdir / "flags"
        flags_dir.mkdir()
        doc = with_rollout(parse_flags_document(FLAGS.read_bytes()), "records.strict", 100)
        strict_flags = flags_dir / "strict.json"
        strict_flags.write_bytes(encode_flags_document(doc))
        shadow_flags = flags_dir / "shadow.json"
        shadow_flags.write_bytes(encode_flags_document(with_enabled(doc, "records.shadow", True)))
        n_tokens = max(s.connections, s.idle if s.scale else 0, s.active if s.scale else 0,
                       s.realistic_connections if s.realistic else 0, 1)

        base_env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_PREFIXES)}
        base_env["PYTHONUNBUFFERED"] = "1"
        production = {**base_env, **PRODUCTION_ENV}
        logs = self.workdir / "logs"
        logs.mkdir()

        def app(kind: str, *extra: str, echo: bool = False) -> None:
            self.servers[kind] = Server(kind, [sys.executable, str(APPS), kind, PORT, *extra], base_env,
                                        logs / f"{kind}.log", echo=echo)

        def canaryws(name: str, flags: Path, env: dict[str, str], *extra: str, window: int = 1) -> None:
            data = self.workdir / "data" / name
            data.mkdir(parents=True)
            authority = TokenAuthority.from_data_dir(data)
            tokens = self.workdir / "tokens" / f"{name}.txt"
            tokens.parent.mkdir(exist_ok=True)
            tokens.write_text("".join(authority.issue(f"client-{i}") + "\n" for i in range(n_tokens)))
            argv = [*self.canaryws_command(), "serve", "--port", PORT, "--flags", str(flags), "--data-dir",
                    str(data), "--log-level", "WARNING", *extra]
            sink = env.get("CANARYWS_SINK")
            self.servers[name] = Server(
                name, argv, env, logs / f"{name}.log", welcome=True, tokens=tokens, health_path="/healthz",
                sink=None if sink is None else sink.split(":", 1)[0],
                sink_location=str(data / SQLITE_FILE) if sink == "sqlite" else (sink or ""), window=window)

        app("echo", echo=True)
        app("lean")
        app("lean-both")
        app("lean-stack")
        app("naive", str(strict_flags))
        without_sink = {**production, **NO_SINK}
        canaryws("canaryws", strict_flags, without_sink)
        canaryws(PIPELINED, strict_flags, without_sink, window=SINK_WINDOW)
        canaryws("canaryws-sqlite", strict_flags, {**production, "CANARYWS_SINK": "sqlite"}, window=SINK_WINDOW)
        canaryws("canaryws-postgres", strict_flags,
                 {**production, "CANARYWS_SINK": database_url(s.postgres, self.database)}, window=SINK_WINDOW)
        canaryws("canaryws-telemetry-off", strict_flags, {**without_sink, "OTEL_SDK_DISABLED": "true"})
        canaryws("canaryws-shadow", shadow_flags, without_sink)
        if self.has_workers_option():
            canaryws("canaryws-2workers", strict_flags, without_sink, "--workers", "2")
        else:
            self.note("canaryws serve has no --workers option: canaryws-2workers is skipped")
        if s.scale:
            canaryws("canaryws-idle", strict_flags, production)  # the service's default sink (SQLite)
        if s.only is not None:
            unknown = s.only - set(ROUND_ORDER)
            if unknown:
                raise BenchError(f"--servers: unknown {', '.join(sorted(unknown))}; known: {', '.join(ROUND_ORDER)}")
            self.servers = {name: server for name, server in self.servers.items()
                            if name in s.only or name == "canaryws-idle"}

    def create_database(self) -> None:
        """canaryws-postgres' fresh database (the service migrates its schema up at start)."""
        admin = self.settings.postgres
        print(f"creating database {self.database} on {redact_url(admin)}", flush=True)
        try:
            postgres(admin, f'CREATE DATABASE "{self.database}"')
        except BenchError as err:
            raise BenchError(f"canaryws-postgres needs PostgreSQL, and it is not reachable or refused to create "
                             f"the database: {err}. Start it, name another with --postgres URL, or leave "
                             "canaryws-postgres out with --servers") from None
        self.database_created = True

    def drop_database(self) -> None:
        if not self.database_created:
            return
        if self.settings.keep:
            print(f"database kept: {redact_url(database_url(self.settings.postgres, self.database))}",
                  file=sys.stderr, flush=True)
            return
        try:
            postgres(self.settings.postgres, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database_created = False
        except BenchError as err:
            print(f"could not drop database {self.database}: {err}", file=sys.stderr, flush=True)

    def start(self, timeout: float = 120.0) -> None:
        if "canaryws-postgres" in self.servers:
            self.create_database()
        for server in self.servers.values():
            server.start(self.workdir)
        waiting = dict(self.servers)
        deadline = time.monotonic() + timeout
        while waiting:
            for name, server in list(waiting.items()):
                if server.lost_its_port() and server.starts < 3:
                    server.start(self.workdir)
                elif server.ready() and server.sink_ready():
                    del waiting[name]
            if time.monotonic() > deadline:
                sinks = []
                for name, server in waiting.items():
                    with contextlib.suppress(OSError, ValueError):
                        if server.persists:
                            sinks.append(f"{name}'s /readyz sink part: {server.readyz().get('sink')}")
                raise BenchError(f"not ready after {timeout:.0f} s: {', '.join(waiting)}"
                                 + "".join(f"; {line}" for line in sinks))
            time.sleep(0.1)

    def stop(self) -> None:
        for client in list(LoadClient.live):
            client.close()
        running = [s.proc for s in self.servers.values() if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            stop_group(proc)
        self.drop_database()

    # -- measurements ---------------------------------------------------------------------------
    def client(self, server: Server, mode: str, *args: str, stdin: bool = False) -> LoadClient:
        server.ensure_alive()
        if mode in ("run", "realistic"):  # own batch ids: a sink answers a reused (client id, batch id) as a replay
            self.load_processes += 1
            args = (*args, "--id-prefix", f"{self.load_processes:05d}-")
        return LoadClient([mode, server.url, *server.load_flags(), *args], self.workdir / "logs" / "load.log",
                          stdin=stdin)

    def windowed(self, server: Server, mode: str, args: Sequence[str], setup_timeout: float,
                 duration: float) -> dict[str, Any]:
        """One ``run``/``connect`` load process; server and client CPU over the measured window."""
        client = self.client(server, mode, *args, "--marks")
        try:
            client.expect("mark start", setup_timeout)
            busy, steal = machine_cpu_seconds()
            server_cpu, client_cpu, wall = tree_cpu_seconds(server.pid), client.cpu_seconds(), time.perf_counter()
            client.expect("mark stop", duration + 60)
            server_cpu = tree_cpu_seconds(server.pid) - server_cpu
            client_cpu = client.cpu_seconds() - client_cpu
            wall = time.perf_counter() - wall
            busy_after, steal_after = machine_cpu_seconds()
            result = client.result(60)
        finally:
            client.close()
        server.ensure_alive()
        count = result.get("messages", result.get("handshakes", 0))
        result.update(
            server=server.name,
            server_cpu_s=server_cpu,
            server_cpu_util=server_cpu / wall,
            client_cpu_s=client_cpu,
            client_cpu_util=client_cpu / wall,
            # the rest of the machine: other processes, and kernel work (loopback softirqs) no process is charged
            other_cpu_util=max(busy_after - busy - server_cpu - client_cpu, 0.0) / wall,
            steal_util=(steal_after - steal) / wall,
            cpu_us_per_msg=server_cpu / count * 1e6 if count else None,
        )
        return result

    def throughput(self, server: Server, connections: int) -> dict[str, Any]:
        s = self.settings
        args = ["--connections", str(connections), "--duration", str(s.duration), "--warmup", str(s.warmup),
                "--records", str(s.records), "--window", str(server.window)]
        return self.measured(server, "run", args, connections)

    def write_pool(self) -> None:
        """The realistic workload's pool, once for the whole run (every load process reads it)."""
        self.pool_file = self.workdir / "pool.jsonl"
        print(f"realistic workload: writing the pool (seed {self.settings.seed})", flush=True)
        done = subprocess.run([sys.executable, str(WORKLOAD), "write", str(self.pool_file), "--seed",
                               str(self.settings.seed)], capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise BenchError(f"bench/workload.py write failed ({done.returncode}):\n{done.stderr[-2000:]}")
        self.workload = dict(json.loads(done.stdout))

    def realistic(self, server: Server) -> dict[str, Any]:
        """One pass of the realistic workload (``load.py realistic``) on ``server``; with canaryws, the
        frames its limits held back over the pass (``throttled``: 0 unless a limit bound)."""
        s = self.settings
        assert self.pool_file is not None
        args = ["--connections", str(s.realistic_connections), "--duration", str(s.duration), "--warmup",
                str(s.warmup), "--pool", str(self.pool_file), "--seed", str(s.seed), "--window", str(server.window)]
        throttled = self.throttled(server)
        result = self.measured(server, "realistic", args, s.realistic_connections)
        after = self.throttled(server)
        result["throttled"] = None if after is None or throttled is None else after - throttled
        records = result.get("records") or 0
        result["cpu_us_per_record"] = result["server_cpu_s"] / records * 1e6 if records else None
        if result.get("lost") or result.get("closed_by_server") or result.get("handshake_errors"):
            raise BenchError(f"server {server.name}, realistic workload: {result.get('lost')} batches lost, "
                             f"{result.get('closed_by_server')} connections closed by the server, "
                             f"{result.get('handshake_errors')} reconnects failed")
        return result

    @staticmethod
    def throttled(server: Server) -> float | None:
        """canaryws' frames held back by a limit so far (a counter is absent until its first count); None
        for a server without canaryws' metrics (the comparison servers, telemetry off)."""
        if not server.welcome:
            return None
        samples = parse_metrics(server.metrics_text())
        if not any(name.startswith("canaryws_") for name, _, _ in samples):
            return None
        return sum(value for name, _, value in samples if name == THROTTLED_METRIC)

    def measured(self, server: Server, mode: str, args: list[str], connections: int) -> dict[str, Any]:
        s = self.settings
        if not server.persists:
            return self.windowed(server, mode, args, setup_timeout=120 + connections / 20, duration=s.duration)
        # the sink's side, read before the load client starts and after it exited (outside the window)
        rows, counters, wall = server.sink_rows(), sink_counters(server.metrics_text()), time.perf_counter()
        result = self.windowed(server, mode, args, setup_timeout=120 + connections / 20, duration=s.duration)
        counters_after, wall = sink_counters(server.metrics_text()), time.perf_counter() - wall
        rows = server.sink_rows() - rows
        result["sink"] = sink_window(counters, counters_after, rows, wall)
        check_sink_rows(server.name, rows, result["messages"])
        return result

    def rounds(self) -> list[list[dict[str, Any]]]:
        s = self.settings
        names = [name for name in ROUND_ORDER if name in self.servers]
        out: list[list[dict[str, Any]]] = []
        if s.realistic and self.pool_file is None:
            self.write_pool()
        for r in range(s.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            if r % 2:
                order.reverse()
            print(f"round {r + 1}/{s.rounds}: {' '.join(order)}", flush=True)
            results = []
            realistic: list[dict[str, Any]] = []
            for position, name in enumerate(order):
                result = self.throughput(self.servers[name], s.connections)
                result.update(round=r + 1, position=position)
                results.append(result)
                sink = result.get("sink")
                print(f"  {name:<24} {result['rate']:>9.0f} msg/s  p99 {fmt(result['p99_ms'], 2):>6} ms  "
                      f"{fmt(result['cpu_us_per_msg'], 1):>6} µs/msg  client {result['client_cpu_util']:.0%}"
                      + ("" if sink is None else
                         f"  sink: {fmt(sink['batches_per_commit'], 1)} batches/commit, "
                         f"{fmt(sink['commit_ms_mean'], 2)} ms/commit, busy {fmt(sink['commit_busy'], 2)}"),
                      flush=True)
                time.sleep(s.pause)
                if s.realistic:  # the same server, right after: the second workload of the pair
                    real = self.realistic(self.servers[name])
                    real.update(round=r + 1, position=position)
                    realistic.append(real)
                    print(f"  {'':<24} {real['rate']:>9.0f} msg/s  p99 {fmt(real['p99_ms'], 2):>6} ms  "
                          f"{fmt(real['cpu_us_per_msg'], 1):>6} µs/msg  client {real['client_cpu_util']:.0%}  "
                          f"realistic: {fmt(real['records_per_s'])} records/s, {real['handshakes']} reconnects"
                          + ("" if not real.get("throttled") else f", {real['throttled']:.0f} frames throttled"),
                          flush=True)
                    time.sleep(s.pause)
            out.append(results)
            if s.realistic:
                self.realistic_rounds.append(realistic)
        return out

    def idle(self) -> dict[str, Any]:
        s = self.settings
        server = self.servers["canaryws-idle"]
        print(f"scale: {s.idle} idle connections on canaryws-idle", flush=True)
        # Warm-up: connections that send batches, then close, so lazy imports and caches are done.
        warm = self.client(server, "run", "--connections", "50", "--duration", "0.5", "--warmup", "0.2")
        try:
            warm.result(120)
        finally:
            warm.close()
        time.sleep(1.5)
        baseline = tree_rss_bytes(server.pid)
        active_before = server.metric("canaryws_connections_active")
        client = self.client(server, "idle", "--connections", str(s.idle), stdin=True)
        try:
            opened = int(client.expect("ready ", 120 + s.idle / 50).split()[1])
            time.sleep(2.0)
            rss = tree_rss_bytes(server.pid)
            active = server.metric("canaryws_connections_active")
            client.send_line()
            result = client.result(120)
        finally:
            client.close()
        deadline = time.monotonic() + 10
        active_after = server.metric("canaryws_connections_active")
        while active_after and time.monotonic() < deadline:
            time.sleep(0.2)
            active_after = server.metric("canaryws_connections_active")
        server.ensure_alive()
        return {
            "connections": s.idle,
            "opened": opened,
            "opened_seconds": result["opened_seconds"],
            "closed_by_server": result["closed_by_server"],
            "rss_baseline_bytes": baseline,
            "rss_bytes": rss,
            "kib_per_connection": (rss - baseline) / max(opened, 1) / 1024,
            "metric_active_before": active_before,
            "metric_active": active,
            "metric_active_after_release": active_after,
        }

    def scale(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"idle": self.idle(), "active": {}, "connect": {}}
        for name in ("canaryws", "lean"):
            print(f"scale: {s.active} active connections on {name}", flush=True)
            out["active"][name] = self.throughput(self.servers[name], s.active)
            time.sleep(s.pause)
        # The connect step in rounds, the order alternating: the handshake goal is a paired ratio.
        out["connect_rounds"] = []
        for r in range(s.connect_rounds):
            results: dict[str, dict[str, Any]] = {}
            for name in ("canaryws", "lean") if r % 2 == 0 else ("lean", "canaryws"):
                print(f"scale: connect rate on {name} (round {r + 1}/{s.connect_rounds})", flush=True)
                args = ["--concurrency", str(s.connect_concurrency), "--duration", str(s.connect_duration),
                        "--warmup", str(min(s.warmup, 1.0))]
                results[name] = self.windowed(self.servers[name], "connect", args, setup_timeout=60,
                                              duration=s.connect_duration)
                time.sleep(s.pause)
            out["connect_rounds"].append(results)
        for name in ("canaryws", "lean"):
            runs = [results[name] for results in out["connect_rounds"]]
            out["connect"][name] = {key: median([run.get(key) for run in runs])
                                    for key in ("rate", "p50_ms", "p99_ms", "cpu_us_per_msg", "server_cpu_util",
                                                "client_cpu_util", "other_cpu_util")}
            out["connect"][name]["errors"] = sum(run.get("errors", 0) for run in runs)
            out["connect"][name]["handshakes"] = sum(run.get("handshakes", 0) for run in runs)
        per_round = [results["canaryws"]["cpu_us_per_msg"] / results["lean"]["cpu_us_per_msg"]
                     if results["lean"].get("cpu_us_per_msg") else None for results in out["connect_rounds"]]
        out["handshake_cpu_ratio"] = {"median": median(per_round), "per_round": per_round,
                                      "goal": f"<= {HANDSHAKE_GOAL:g}"}
        return out


# -- analysis ------------------------------------------------------------------------------------

def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(present) if present else None


def ratio_value(ratio: Ratio, by_server: dict[str, dict[str, Any]]) -> float | None:
    """One round's value of a ratio; None when a server of it is missing or the division is undefined.

    The shadow cost's denominator is a difference of two CPU measurements (lean-both - lean):
    in a round where noise makes it zero or negative, the round has no ratio (a negative one
    would read as a goal met)."""
    try:
        if ratio.kind in ("throughput", "cpu", "tail"):
            key = {"throughput": "rate", "cpu": "cpu_us_per_msg", "tail": "p999_ms"}[ratio.kind]
            num, den = by_server[ratio.numerator][key], by_server[ratio.denominator][key]
        else:
            num = by_server["canaryws-shadow"]["cpu_us_per_msg"] - by_server["canaryws"]["cpu_us_per_msg"]
            den = by_server["lean-both"]["cpu_us_per_msg"] - by_server["lean"]["cpu_us_per_msg"]
    except (KeyError, TypeError):
        return None
    return num / den if den > 0 else None


def shadow_parts(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The shadow cost's two CPU differences (µs/msg) per round, their medians and the ratio of the medians."""
    def diff(results: list[dict[str, Any]], a: str, b: str) -> float | None:
        by = {r["server"]: r["cpu_us_per_msg"] for r in results}
        return by[a] - by[b] if by.get(a) is not None and by.get(b) is not None else None

    shadow = [diff(results, "canaryws-shadow", "canaryws") for results in rounds]
    second = [diff(results, "lean-both", "lean") for results in rounds]
    shadow_median, second_median = median(shadow), median(second)
    return {
        "shadow_us_per_round": shadow,
        "second_strategy_us_per_round": second,
        "shadow_us": shadow_median,
        "second_strategy_us": second_median,
        "ratio_of_medians": shadow_median / second_median
        if shadow_median is not None and second_median else None,
    }


def summarize(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    per_server: dict[str, list[dict[str, Any]]] = {}
    for results in rounds:
        for result in results:
            per_server.setdefault(result["server"], []).append(result)
    servers: dict[str, dict[str, Any]] = {}
    for name in ROUND_ORDER:
        if name not in per_server:
            continue
        runs = per_server[name]
        servers[name] = {
            key: median([run[key] for run in runs])
            for key in ("rate", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_msg", "server_cpu_util", "client_cpu_util",
                        "other_cpu_util", "steal_util")
        }
        servers[name]["messages_min"] = min(run["messages"] for run in runs)
        servers[name]["bad_answers"] = sum(run["bad_answers"] for run in runs)
        for key in REALISTIC_KEYS:  # the realistic workload's own figures
            if all(key in run for run in runs):
                servers[name][key] = median([run[key] for run in runs])
        for key in ("lost", "closed_by_server", "handshake_errors"):
            if all(key in run for run in runs):
                servers[name][key] = sum(run[key] for run in runs)
        if all("outcomes" in run for run in runs):
            servers[name]["outcomes_match"] = all(run["outcomes"] == run["expected"] for run in runs)
        with_sink = [run for run in runs if run.get("sink") is not None]
        if with_sink:
            sink: dict[str, Any] = {key: median([run["sink"][key] for run in with_sink]) for key in SINK_KEYS}
            sink["rows_per_answer_min"] = min((run["sink"]["rows"] / run["messages"] for run in with_sink
                                               if run["messages"]), default=None)
            servers[name]["sink"] = sink
    ratios = {}
    for ratio in RATIOS:
        values = [ratio_value(ratio, {r["server"]: r for r in results}) for results in rounds]
        needed = {"canaryws-shadow", "canaryws", "lean-both", "lean"} if ratio.kind == "shadow" \
            else {ratio.numerator, ratio.denominator}
        if not needed <= per_server.keys():
            continue  # e.g. 2workers skipped, or left out by --servers
        value = median(values)
        ratios[ratio.name] = {"median": value, "per_round": values, "goal": ratio.goal, "met": ratio.met(value),
                              "of": {"throughput": f"{ratio.numerator} / {ratio.denominator}",
                                     "cpu": f"{ratio.numerator} / {ratio.denominator}, CPU µs/msg",
                                     "tail": f"{ratio.numerator} / {ratio.denominator}, p99.9 ms"}.get(
                                  ratio.kind, f"({ratio.numerator}) / ({ratio.denominator}), CPU µs/msg")}
        if ratio.kind == "shadow":
            ratios[ratio.name].update(shadow_parts(rounds))
    return {"servers": servers, "ratios": ratios}


REALISTIC_KEYS = ("records_per_s", "cpu_us_per_record", "handshakes", "handshake_p50_ms", "handshake_p99_ms",
                  "throttled", "busy_messages", "burst_messages")
SINK_KEYS = ("batches_per_commit", "commits_per_s", "commit_ms_mean", "commit_ms_p50_le", "commit_ms_p99_le",
             "commit_busy", "commits_failed", "batches_unavailable", "batches_replayed")


def goals(summary: dict[str, Any], scale: dict[str, Any] | None) -> list[tuple[str, bool]]:
    out = [(name, bool(r["met"])) for name, r in summary["ratios"].items() if r["met"] is not None]
    if scale is not None:
        idle = scale["idle"]
        out.append((f"idle KiB/connection <= {IDLE_KIB_GOAL:g}", idle["kib_per_connection"] <= IDLE_KIB_GOAL))
        out.append(("idle connections all open", idle["opened"] == idle["connections"]
                    and idle["metric_active"] is not None and idle["metric_active"] >= idle["connections"]))
        handshake = scale["handshake_cpu_ratio"]["median"]
        out.append((f"handshake CPU canaryws / lean <= {HANDSHAKE_GOAL:g}",
                    handshake is not None and handshake <= HANDSHAKE_GOAL))
    return out


# -- output ------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


Table = tuple[str, list[str], list[list[str]], list[str]]  # title, header, rows, notes


def tables(summary: dict[str, Any], scale: dict[str, Any] | None,
           realistic: dict[str, Any] | None = None) -> list[Table]:
    """The result tables; with ``realistic`` (its ``summary`` and ``workload``), the realistic pass's table,
    and every ratio on both workloads side by side."""
    servers = summary["servers"]
    out: list[Table] = [(
        "Throughput, fixed shape (medians over rounds)",
        ["server", "msg/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/msg", "server CPU", "client CPU", "other CPU",
         "bad"],
        [[name, fmt(s["rate"]), fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2), fmt(s["p999_ms"], 2),
          fmt(s["cpu_us_per_msg"], 1), pct(s["server_cpu_util"]), pct(s["client_cpu_util"]), pct(s["other_cpu_util"]),
          str(s["bad_answers"])]
         for name, s in servers.items()],
        ["CPU: share of one core over the measured window (server: its process tree; client: the load process; "
         "other: the rest of the machine, incl. kernel network work)."],
    )]
    def verdict(r: dict[str, Any] | None) -> str:
        return "-" if r is None or r["met"] is None else ("PASS" if r["met"] else "FAIL")

    real = realistic["summary"] if realistic is not None else None
    if real is not None:
        workload = realistic["workload"] if realistic is not None else None
        rs = real["servers"]
        out.append((
            "Throughput, realistic workload (medians over rounds)",
            ["server", "msg/s", "records/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/msg", "CPU µs/record",
             "reconnects", "server CPU", "client CPU", "other CPU", "bad", "outcomes"],
            [[name, fmt(x["rate"]), fmt(x.get("records_per_s")), fmt(x["p50_ms"], 2), fmt(x["p99_ms"], 2),
              fmt(x["p999_ms"], 2), fmt(x["cpu_us_per_msg"], 1), fmt(x.get("cpu_us_per_record"), 2),
              fmt(x.get("handshakes")), pct(x["server_cpu_util"]), pct(x["client_cpu_util"]),
              pct(x["other_cpu_util"]), str(x["bad_answers"] + x.get("lost", 0)),
              "-" if "outcomes_match" not in x else ("as built" if x["outcomes_match"] else "DIFFER")]
             for name, x in rs.items()],
            ["bench/workload.py's seeded pool (Faker text in nine locales, Zipf batch sizes 1..10,000, defects per "
             "strict reason); busy closed-loop connections and idle ones with Poisson bursts, some reconnecting "
             "after each burst (bench/load.py realistic). reconnects: handshakes in the window. outcomes: the "
             "rejections per code in the answers against the pool's (an echo has none)."]
            + ([] if workload is None else [
                f"pool: {workload['batches']:,} batches, {workload['records']:,} records, seed {workload['seed']}; "
                f"batch size p50 {workload['batch_size']['p50']:.0f}, p99 {workload['batch_size']['p99']:.0f}, "
                f"max {workload['batch_size']['max']:.0f}; record length p50 {workload['record_length']['p50']:.0f}, "
                f"p99 {workload['record_length']['p99']:.0f} code points; defective {workload['defective']:.1%}"]),
        ))
    rows = []
    for name, r in summary["ratios"].items():
        row = [name, fmt(r["median"], 3), " ".join(fmt(v, 2) for v in r["per_round"])]
        if real is not None:
            other = real["ratios"].get(name)
            row += ["-" if other is None else fmt(other["median"], 3),
                    "-" if other is None else " ".join(fmt(v, 2) for v in other["per_round"])]
        row += [r["goal"] or "-", verdict(r)]
        if real is not None:
            row.append(verdict(real["ratios"].get(name)))
        rows.append(row)
    notes = []
    if real is not None:
        notes.append("Each ratio on both workloads, paired within each round: 'fixed shape' (load.py run, the same "
                     "batch every time) and 'realistic'. --check and the goals count the fixed shape only.")
    shadow = summary["ratios"].get("shadow cost")
    if shadow is not None:
        notes.append(f"shadow cost: canaryws-shadow - canaryws = {fmt(shadow['shadow_us'], 1)} µs/msg, "
                     f"lean-both - lean = {fmt(shadow['second_strategy_us'], 1)} µs/msg "
                     "(medians of the per-round differences; ratio of these medians "
                     f"{fmt(shadow['ratio_of_medians'], 2)})")
    header = (["ratio", "median", "rounds", "goal", "verdict"] if real is None else
              ["ratio", "fixed shape", "rounds", "realistic", "rounds", "goal", "verdict fixed", "verdict realistic"])
    out.append(("Ratios (per round, paired; median)", header, rows, notes))
    sinks = {name: s["sink"] for name, s in servers.items() if s.get("sink") is not None}
    if sinks:
        out.append(("Sink group commits (medians over rounds)",
                    ["server", "msg/s", "batches/commit", "commits/s", "commit ms mean", "p50 ms <=", "p99 ms <=",
                     "commit busy", "failed", "rows/answers (min)"],
                    [[name, fmt(servers[name]["rate"]), fmt(k["batches_per_commit"], 1), fmt(k["commits_per_s"]),
                      fmt(k["commit_ms_mean"], 2), fmt(k["commit_ms_p50_le"], 1), fmt(k["commit_ms_p99_le"], 1),
                      fmt(k["commit_busy"], 2), fmt(k["commits_failed"]), fmt(k["rows_per_answer_min"], 2)]
                     for name, k in sinks.items()],
                    ["From the sink's metrics over each run (warm-up included): group commits that succeeded, the "
                     "batches committed per commit, the mean commit time and the bucket bounds of its p50/p99, and "
                     "commit busy = commit seconds per second, a queued group's wait included (SQLite writes one group "
                     "at a time with one more queued, PostgreSQL up to four at once). "
                     "rows/answers: new rows of canaryws_batches over the answers counted in the window (at "
                     "least 1: the warm-up's batches are committed too)."]))
    if scale is not None:
        idle = scale["idle"]
        kib = idle["kib_per_connection"]
        all_open = idle["opened"] == idle["connections"] and (idle["metric_active"] or 0) >= idle["connections"]
        out.append(("Idle connections (canaryws, production settings)", ["measure", "value", "goal", "verdict"], [
            ["connections opened (client / server metric)",
             f"{fmt(idle['opened'])} / {fmt(idle['metric_active'])} of {fmt(idle['connections'])}", "all",
             "PASS" if all_open else "FAIL"],
            ["opened in", f"{idle['opened_seconds']:.2f} s", "-", "-"],
            ["RSS baseline -> with connections",
             f"{idle['rss_baseline_bytes'] / 2**20:.1f} -> {idle['rss_bytes'] / 2**20:.1f} MiB", "-", "-"],
            ["per connection", f"{kib:.1f} KiB", f"<= {IDLE_KIB_GOAL:g} KiB",
             "PASS" if kib <= IDLE_KIB_GOAL else "FAIL"],
            ["closed by server while idle", str(idle["closed_by_server"]), "0", "-"],
        ], []))
        out.append((f"Many active connections ({next(iter(scale['active'].values()))['connections']} each)",
                    ["server", "msg/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU µs/msg", "server CPU", "client CPU",
                     "other CPU", "bad"],
                    [[name, fmt(a["rate"]), fmt(a["p50_ms"], 2), fmt(a["p99_ms"], 2), fmt(a["p999_ms"], 2),
                      fmt(a["cpu_us_per_msg"], 1), pct(a["server_cpu_util"]), pct(a["client_cpu_util"]),
                      pct(a["other_cpu_util"]), str(a["bad_answers"])]
                     for name, a in scale["active"].items()], []))
        out.append(("Connect rate (50 concurrent handshake loops)",
                    ["server", "handshakes/s", "p50 ms", "p99 ms", "CPU µs/handshake", "server CPU", "client CPU",
                     "other CPU", "errors"],
                    [[name, fmt(c["rate"]), fmt(c["p50_ms"], 2), fmt(c["p99_ms"], 2), fmt(c["cpu_us_per_msg"], 1),
                      pct(c["server_cpu_util"]), pct(c["client_cpu_util"]), pct(c["other_cpu_util"]),
                      str(c.get("errors", 0))]
                     for name, c in scale["connect"].items()],
                    ["canaryws: handshake + token check + cohort decision + welcome frame; lean: handshake only.",
                     f"medians of {len(scale['connect_rounds'])} rounds, the order alternating; CPU per handshake "
                     f"canaryws / lean: {fmt(scale['handshake_cpu_ratio']['median'], 2)} (rounds "
                     + " ".join(fmt(v, 2) for v in scale["handshake_cpu_ratio"]["per_round"])
                     + f"; goal <= {HANDSHAKE_GOAL:g})."]))
    return out


def text_table(title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join

    def render(cells: list[str]) -> str:
        return line(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([title, render(header), line("-" * w for w in widths), *(render(r) for r in rows), *notes])


def markdown_table(title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    def render(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return "\n".join([f"### {title}", "", render(header), align, *(render(r) for r in rows),
                      *(["", *notes] if notes else [])])


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or None
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True,
                           check=False).stdout.strip() != ""
    return {
        "cpu_model": model or platform.processor() or None,
        "cores": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['cpu_model']}, {m['cores']} cores, {m['ram_bytes'] / 2**30:.1f} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v))


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so that teardown runs."""
    def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], Any] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 5)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 1)")
    parser.add_argument("--connections", type=int, help="closed-loop connections per run (default 50)")
    parser.add_argument("--records", type=int, help="records per batch (default 30)")
    parser.add_argument("--idle", type=int, help="idle connections of the scale step (default 5000)")
    parser.add_argument("--active", type=int, help="active connections of the scale step (default 1000)")
    parser.add_argument("--connect-duration", type=float, help="seconds of the connect-rate step (default 5)")
    parser.add_argument("--connect-concurrency", type=int, help="handshake loops in parallel (default 50)")
    parser.add_argument("--connect-rounds", type=int, help="rounds of the connect step (default 5; --quick 1)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale steps")
    parser.add_argument("--servers", help="comma-separated throughput servers to run (default: all; implies "
                                          "--no-scale); ratios whose servers are left out are not reported")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 1 s after 0.3 s, 300 idle, 100 active, 1 s connect")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--json", type=Path, help="write all raw numbers, the machine and the settings")
    parser.add_argument("--markdown", type=Path, help="write the result tables in Markdown")
    parser.add_argument("--no-realistic", action="store_true", help="skip the realistic workload's pass")
    parser.add_argument("--realistic-connections", type=int,
                        help="connections of the realistic workload (default 1000; --quick 200)")
    parser.add_argument("--seed", type=int, help="the realistic workload's seed (default 2026)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, trace files) and the "
                                                             "PostgreSQL database")
    parser.add_argument("--postgres", help="PostgreSQL server (a URL, its database: one to connect to) on which "
                                           f"canaryws-postgres' database is created and dropped (default "
                                           f"{POSTGRES_ADMIN})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_args(args)
    nofile = raise_nofile()
    if settings.scale and settings.idle + 1000 > nofile[0]:
        print(f"note: RLIMIT_NOFILE is {nofile[0]}; {settings.idle} idle connections may not fit", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="canaryws-bench-"))
    bench = Bench(settings, workdir)
    failed = True
    started = time.time()
    try:
        with terminate_as_interrupt():
            bench.plan()
            print(f"starting {len(bench.servers)} servers ({', '.join(bench.servers)}) in {workdir}", flush=True)
            bench.start()
            rounds = bench.rounds()
            scale = bench.scale() if settings.scale else None
            failed = False
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr, flush=True)
        return 130
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        bench.stop()
        if failed or args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(rounds)
    realistic = ({"summary": summarize(bench.realistic_rounds), "workload": bench.workload}
                 if settings.realistic else None)
    info = machine()
    other = median([run["other_cpu_util"] for results in rounds for run in results])
    if other is not None and other > BUSY_MACHINE:
        bench.notes.append(f"the machine was busy with other work during the rounds (median {other:.0%} of a core "
                           "outside the server and the load client): the numbers are not clean; run again when "
                           "the machine is quiet")
    results = tables(summary, scale, realistic)
    print()
    print(f"machine: {machine_line(info)}")
    print(f"settings: {settings.rounds} rounds x {settings.duration:g} s (after {settings.warmup:g} s warm-up), "
          f"{settings.connections} connections, {settings.records} records per batch"
          + (f"; realistic workload: {settings.realistic_connections} connections, seed {settings.seed}"
             if settings.realistic else ""))
    if bench.workload is not None:
        print(f"realistic pool (bench/workload.py): {bench.workload['batches']:,} batches, "
              f"{bench.workload['records']:,} records; defects {bench.workload['defects']}")
    for table in results:
        print()
        print(text_table(*table))
    for note in bench.notes:
        print(f"note: {note}")
    checked = goals(summary, scale)
    missed = [name for name, ok in checked if not ok]
    print()
    print(f"goals: {len(checked) - len(missed)}/{len(checked)} met" + (f"; missed: {', '.join(missed)}" if missed
                                                                          else ""))

    if args.json is not None:
        document = {
            "started": started,
            "finished": time.time(),
            "machine": info,
            "settings": {**settings.to_json(), "production_env": PRODUCTION_ENV, "rlimit_nofile": list(nofile),
                         "servers": {name: {"port": s.port, "window": s.window,
                                            "argv": s.argv[1:] if s.argv[0] == sys.executable else s.argv,
                                            "env": {k: redact_url(v) if k == "CANARYWS_SINK" else v
                                                    for k, v in s.env.items() if k.startswith(DROPPED_PREFIXES)}}
                                     for name, s in bench.servers.items()}},
            "rounds": rounds,
            "summary": summary,
            "scale": scale,
            "realistic": None if realistic is None else {**realistic, "rounds": bench.realistic_rounds},
            "goals": {name: ok for name, ok in checked},
            "notes": bench.notes,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.markdown is not None:
        parts = [f"Machine: {machine_line(info)}.",
                 f"Settings: {settings.rounds} rounds of {settings.duration:g} s after {settings.warmup:g} s warm-up, "
                 f"{settings.connections} closed-loop connections, {settings.records} records per batch; "
                 f"`{' '.join(f'{k}={v}' for k, v in PRODUCTION_ENV.items())}` for canaryws; "
                 "`CANARYWS_SINK=none` for canaryws and its variants, `sqlite` (the default) for canaryws-sqlite and "
                 "a fresh PostgreSQL database for canaryws-postgres."
                 + (f" Realistic workload (bench/workload.py, seed {settings.seed}): "
                    f"{settings.realistic_connections} connections, 10 % closed-loop, the rest idle with Poisson "
                    "bursts, 20 % of those reconnecting after each burst; a pass right after each fixed-shape run."
                    if settings.realistic else ""),
                 *(markdown_table(*table) for table in results), *(f"Note: {n}" for n in bench.notes)]
        args.markdown.write_text("\n\n".join(parts) + "\n")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
