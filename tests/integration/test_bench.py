"""The benchmark (``bench/run.py``) runs end to end: a ``--quick`` smoke run against real servers.

It checks the structure of what the benchmark measured, never its goals: the machine is shared
and noisy, and the goals are the benchmark's own ``--check``. The sink servers need the
machine's PostgreSQL (``CANARYWS_TEST_PG_HOST``/``_PORT``/``_USER``, as the other sink tests):
the benchmark creates its database there and drops it at the end.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harness import Service, flags_doc, metric_value

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"
BUDGET_SECONDS = 180  # the realistic pass adds ~40 s to the smoke run
SERVERS = {"echo", "lean", "lean-both", "lean-stack", "naive", "canaryws", "canaryws-telemetry-off", "canaryws-shadow",
           "canaryws-w8", "canaryws-sqlite", "canaryws-postgres"}
SINK_SERVERS = ("canaryws-sqlite", "canaryws-postgres")
RATIOS = {"canaryws / lean", "telemetry on / off", "lean / echo", "canaryws / lean-stack", "naive / canaryws",
          "shadow cost", "postgresql sink / none", "sqlite sink / none"}
POSTGRES = (f"postgresql://{os.environ.get('CANARYWS_TEST_PG_USER', 'postgres')}@"
            f"{os.environ.get('CANARYWS_TEST_PG_HOST', '127.0.0.1')}:{os.environ.get('CANARYWS_TEST_PG_PORT', '5432')}"
            "/postgres")
PACKAGES = ("uvicorn", "fastapi", "websockets", "picows", "opentelemetry-sdk")


def run_quick(tmp_path: Path) -> tuple[dict[str, Any], str, float]:
    out = tmp_path / "bench.json"
    markdown = tmp_path / "bench.md"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(RUN), "--quick", "--json", str(out), "--markdown", str(markdown),
                             "--postgres", POSTGRES],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=BUDGET_SECONDS)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the benchmark tears its servers down on SIGTERM
        stdout, _ = proc.communicate(timeout=30)
        pytest.fail(f"bench/run.py --quick took more than {BUDGET_SECONDS} s:\n{stdout}")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, stdout
    assert markdown.read_text().count("### ") >= 6
    assert "### Sink group commits" in markdown.read_text()
    assert "### Throughput, realistic workload" in markdown.read_text()
    return json.loads(out.read_text()), stdout, elapsed


def databases() -> set[str]:
    async def names() -> set[str]:
        conn = await asyncpg.connect(POSTGRES)
        try:
            return {row["datname"] for row in await conn.fetch("SELECT datname FROM pg_database")}
        finally:
            await conn.close()

    return asyncio.run(names())


def test_quick_benchmark_measures_every_server_and_step(tmp_path: Path) -> None:
    result, stdout, elapsed = run_quick(tmp_path)
    assert elapsed < BUDGET_SECONDS

    # every server produced answers, all of them results (or echoes), in the one round
    assert len(result["rounds"]) == 1
    runs = {run["server"]: run for run in result["rounds"][0]}
    assert set(runs) >= SERVERS, stdout
    for name, run in runs.items():
        assert run["messages"] > 0, (name, run)
        assert run["bad_answers"] == 0, (name, run)
        assert run["connections"] == 50, (name, run)
        assert run["cpu_us_per_msg"] > 0, (name, run)

    # canaryws and its variants answer without a sink; the sink servers persisted every answered batch
    # (the benchmark counts the rows of canaryws_batches around each run, and fails when they fall short)
    env = {name: server["env"] for name, server in result["settings"]["servers"].items()}
    for name in ("canaryws", "canaryws-telemetry-off", "canaryws-shadow", "canaryws-w8"):
        assert env[name]["CANARYWS_SINK"] == "none", name
    # the persist step's pair runs with 8 batches in flight per connection, the rest with 1
    windows = {name: server["window"] for name, server in result["settings"]["servers"].items()}
    assert {name for name, window in windows.items() if window != 1} == {"canaryws-w8", *SINK_SERVERS}
    assert {windows[name] for name in ("canaryws-w8", *SINK_SERVERS)} == {8}
    assert env["canaryws-sqlite"]["CANARYWS_SINK"] == "sqlite"
    assert env["canaryws-postgres"]["CANARYWS_SINK"].startswith("postgresql://")
    assert "sink" not in runs["canaryws"]
    for name in SINK_SERVERS:
        sink = runs[name]["sink"]
        assert sink["rows"] >= runs[name]["messages"] > 0, (name, sink)
        assert sink["commits"] > 0 and sink["commits_failed"] == 0, (name, sink)
        assert sink["batches_committed"] == sink["rows"], (name, sink)  # each batch once, none a replay
        assert sink["batches_replayed"] == 0 and sink["batches_unavailable"] == 0, (name, sink)
        assert sink["batches_per_commit"] >= 1 and sink["commit_ms_mean"] > 0, (name, sink)
        assert result["summary"]["servers"][name]["sink"]["rows_per_answer_min"] >= 1, name
    # the benchmark's database is gone
    database = env["canaryws-postgres"]["CANARYWS_SINK"].rsplit("/", 1)[1]
    assert database.startswith("canaryws_bench_")
    assert database not in databases()

    # every throughput ratio is a finite positive number (goals are not asserted). The shadow
    # cost divides two differences of CPU measurements of 1 s each: in one smoke round either
    # sign is noise, and a round whose denominator is not positive has no value (that rule is
    # tested deterministically in tests/unit/test_bench_ratios.py).
    ratios = result["summary"]["ratios"]
    assert set(ratios) >= RATIOS, ratios
    for name, ratio in ratios.items():
        value = ratio["median"]
        if name == "shadow cost":
            assert value is None or (isinstance(value, float) and math.isfinite(value)), (name, ratio)
            assert value is not None or ratio["met"] is False, (name, ratio)
        else:
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, ratio)

    # the realistic workload (bench/workload.py, bench/load.py realistic) ran on every server of the round,
    # right after its fixed-shape run: every answer a result for its batch with one outcome per record, the
    # rejections per code those the pool was built with, no batch lost, no connection closed by a server
    realistic = result["realistic"]
    pool = realistic["workload"]
    assert pool["seed"] == 2026 and pool["batch_size"]["min"] == 1 and pool["batch_size"]["max"] == 10_000, pool
    assert set(pool["defects"]) == {"missing", "not_a_string", "empty", "blank", "control_character", "too_long"}
    assert len(pool["scripts"]) >= 8, pool["scripts"]
    assert len(realistic["rounds"]) == 1
    real = {run["server"]: run for run in realistic["rounds"][0]}
    assert set(real) == set(runs), stdout
    for name, run in real.items():
        assert run["workload"] == "realistic", (name, run)
        assert run["connections"] == 200 and run["busy_connections"] == 20, (name, run)
        assert run["messages"] > 0 and run["records"] >= run["messages"], (name, run)
        assert run["bad_answers"] == 0 and run["lost"] == 0 and run["closed_by_server"] == 0, (name, run)
        assert run["handshake_errors"] == 0, (name, run)
        assert run["busy_messages"] + run["burst_messages"] == run["messages"], (name, run)
        assert run["cpu_us_per_msg"] > 0 and run["cpu_us_per_record"] > 0, (name, run)
        if name != "echo":  # results: every record's outcome counted, per code as the pool built it
            assert run["outcomes"] == run["expected"], (name, run)
            assert sum(run["outcomes"].values()) == run["records"], (name, run)
    for name in SINK_SERVERS:
        assert real[name]["sink"]["rows"] >= real[name]["messages"], name
    assert real["canaryws"]["throttled"] is not None, real["canaryws"]
    real_ratios = realistic["summary"]["ratios"]
    assert set(real_ratios) == set(ratios), real_ratios
    for name, ratio in real_ratios.items():
        value = ratio["median"]
        if name != "shadow cost":
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, ratio)

    # scale: every idle connection opened (client and server agree) and stayed open
    idle = result["scale"]["idle"]
    assert idle["opened"] == idle["connections"] == 300, idle
    assert idle["metric_active"] == idle["connections"], idle
    assert idle["closed_by_server"] == 0, idle
    assert idle["rss_bytes"] > 0 and math.isfinite(idle["kib_per_connection"]), idle
    for name in ("canaryws", "lean"):
        active = result["scale"]["active"][name]
        assert active["connections"] == 100 and active["messages"] > 0 and active["bad_answers"] == 0, active
        connect = result["scale"]["connect"][name]
        assert connect["handshakes"] > 0 and connect["errors"] == 0, connect
    # the handshake goal: canaryws' CPU per connection lifecycle over lean's, per connect round
    handshake = result["scale"]["handshake_cpu_ratio"]
    assert len(handshake["per_round"]) == len(result["scale"]["connect_rounds"]) == 1, handshake
    assert handshake["median"] > 0 and handshake["goal"] == "<= 1.5", handshake

    # the machine block
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["ram_bytes"] > 0
    assert machine["kernel"] and machine["python"] and machine["cpu_model"]
    for package in PACKAGES:
        assert machine["packages"][package], package
    assert result["settings"]["quick"] is True


@pytest.mark.parametrize("sink", ["sqlite", "postgresql"])
def test_the_in_process_sink_benchmark_commits_every_batch_it_counts(sink: str) -> None:
    """bench/sink_inprocess.py (docs/benchmarks.md, "The persist step"): a short run on each real
    sink reports a positive cost per batch and as many new rows as batches it counted (it exits
    2 otherwise); its PostgreSQL database is dropped at the end. The event loop's CPU per batch
    includes the strategy's, both measured as CPU time."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "sink_inprocess.py"), "--sink", sink, "--seconds",
                           "1", "--tasks", "20", "--json", "--postgres", POSTGRES],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sink"] == sink and result["batches"] > 0
    assert result["rows_added"] >= result["batches"]
    assert result["loop_us_per_batch"] > result["strategy_us_per_batch"] > 0
    assert (result["postgres_us_per_batch"] is not None) == (sink == "postgresql")
    assert not [name for name in databases() if name.startswith("canaryws_sink_bench_")]  # others come and go


def test_the_connect_step_ends_each_connection_as_the_sdk_does(tmp_path: Path) -> None:
    """bench/load.py connect (the handshake goal's load) closes every connection with 1000, as
    the SDK does: the lifecycle it measures is a normal one, not a protocol error's (picows'
    default close code, 0, is invalid: the server answered every close with 1002)."""
    service = Service(tmp_path, flags_doc(strict_rollout=100))
    with service:
        tokens = tmp_path / "tokens.txt"
        tokens.write_text("".join(service.token(f"client-{n}") + "\n" for n in range(10)))
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "connect", service.ws_url,
                               "--concurrency", "5", "--duration", "1", "--warmup", "0.2", "--welcome",
                               "--tokens", str(tokens)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["handshakes"] > 0 and result["errors"] == 0, result
        deadline = time.monotonic() + 10
        while True:  # the last connections' closes may still be on their way
            metrics = service.get("/metrics").text
            closed = metric_value(metrics, "canaryws_connections_closed_total")
            if closed >= result["handshakes"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert closed >= result["handshakes"], (closed, result)
    assert metric_value(metrics, "canaryws_connections_closed_total", code="1000") == closed, metrics
