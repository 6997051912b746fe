"""``canaryws report --sink``: the spans' counts against what a real sink committed.

The sinks are real: an SQLite file and a PostgreSQL database (127.0.0.1:5432), each written
through the service's own sink adapter (``open_sink``, ``commit``), with the connection summaries
written by the service's own span exporter; the report is the ``canaryws`` command, run as an
operator runs it. Then a real service with its SQLite sink, real clients (one of them resending a
batch after reconnecting: a replay), and docs/report.md's block run as written in its directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from canaryws.adapters.sink.counts import committed_counts
from canaryws.adapters.sink.url import open_sink
from canaryws.core.sink import Handoff
from canaryws.core.strategies import STRATEGIES
from canaryws.core.summary import END_CLOSED, ConnectionSummary
from harness import REPO, Service, flags_doc, free_port, run_cli, send_batch

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pw"  # in the PostgreSQL URL (trust auth ignores it): it must never be printed
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# lenient skips the last four, strict rejects them; both accept two
RECORDS: list[Any] = ["ok", " v ", "", "  ", None, 5]
LOOSE = ("--min-connections", "1", "--min-batches", "1")


# -- a sink and its spans, written as the service writes them ---------------------------------


@dataclass
class Conn:
    """One connection: its batches (id -> records) and which of them the test lets reach only
    one side (``not_committed``: counted but never committed; ``not_counted``: the reverse)."""

    id: str
    client: str
    strategy: str
    batches: dict[str, list[Any]]
    synthetic: bool = False
    not_committed: set[str] = field(default_factory=set)
    not_counted: set[str] = field(default_factory=set)


def commit_and_count(value: str, data_dir: Path, conns: list[Conn]) -> list[ConnectionSummary]:
    """Commit each connection's batches to the sink as the service does, one at a time, and
    count them on its summary once answered (a replay is answered from the sink, not counted
    again)."""

    async def run() -> list[ConnectionSummary]:
        sink = open_sink(value, data_dir)
        assert sink is not None
        await sink.open()
        summaries = []
        try:
            for conn in conns:
                strategy = STRATEGIES[conn.strategy]
                summary = ConnectionSummary(conn.id, conn.client, strategy.name, strategy.version, False, "rev-1",
                                            0.5, end=END_CLOSED, close_code=1000, synthetic=conn.synthetic)
                for batch_id, records in conn.batches.items():
                    outcome = strategy.process(records, None)
                    replay = False
                    if batch_id not in conn.not_committed:
                        handoff = Handoff(conn.client, batch_id, conn.id, "rev-1", conn.synthetic, outcome)
                        [committed] = await sink.commit([handoff])
                        replay = committed.replay
                    if not replay and batch_id not in conn.not_counted:
                        summary.add(outcome, 0.001)
                summaries.append(summary)
        finally:
            await sink.close()
        return summaries

    return asyncio.run(run())


def emit(path: Path, summaries: list[ConnectionSummary], start: int, end: int) -> None:
    """The summaries as ``records.connection`` spans from ``start`` to ``end``, written by the
    service's exporter."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
    from canaryws.adapters.telemetry.records import RecordsTelemetry

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(path)))
    telemetry = RecordsTelemetry(provider, MeterProvider())
    for summary in summaries:
        telemetry.emit_summary(summary, start, end, None)
    provider.shutdown()


def serve(value: str, data_dir: Path, traces: Path, conns: list[Conn]) -> None:
    """The connections' batches committed and counted, their summaries over the time it took."""
    start = time.time_ns()
    summaries = commit_and_count(value, data_dir, conns)
    emit(traces, summaries, start, time.time_ns())


def traffic(prefix: str = "") -> list[Conn]:
    """Two clients per cohort, three batches each, a probe's connection, and a client that
    reconnects and resends its last batch (a replay: no new row, not counted again)."""
    conns = [Conn(f"{prefix}c-{strategy}-{n}", f"{prefix}client-{strategy}-{n}", strategy,
                  {f"b{i}": RECORDS[: 2 + i] for i in range(3)})
             for strategy in ("strict", "lenient") for n in range(2)]
    conns.append(Conn(f"{prefix}probe", f"{prefix}probe-strict-1", "strict", {"g1": RECORDS}, synthetic=True))
    conns.append(Conn(f"{prefix}c-strict-0-again", f"{prefix}client-strict-0", "strict", {"b2": RECORDS[:4],
                                                                                        "b3": ["x"]}))
    return conns


def report(traces: Path | str, sink: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``canaryws report --sink`` as an operator runs it (80 columns)."""
    return run_cli("report", "--traces", str(traces), "--sink", sink, "--data-dir", str(data_dir), *LOOSE, *args,
                   env={"COLUMNS": "80"})


def report_json(traces: Path | str, sink: str, data_dir: Path, *args: str) -> tuple[dict[str, Any], int]:
    done = report(traces, sink, data_dir, "--json", *args)
    assert done.returncode in (0, 1, 2), done.stderr
    return json.loads(done.stdout), done.returncode


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


# -- the sinks ----------------------------------------------------------------------------------


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_sink() -> Iterator[str]:
    """A fresh PostgreSQL database for the test; its URL carries a password."""
    name = f"canaryws_report_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", "postgresql"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The service's default (``sqlite``: <data-dir>/sink.sqlite3) or a PostgreSQL URL."""
    if request.param == "sqlite":
        return "sqlite"
    value: str = request.getfixturevalue("postgres_sink")
    return value


# -- the cross-check ----------------------------------------------------------------------------


def test_what_the_sink_committed_matches_the_spans_and_the_verdict_is_unchanged(tmp_path: Path, sink: str) -> None:
    """Every cohort's batches and records, the clients' and the probe's apart, equal on both
    sides (a replayed batch is on neither), in the JSON and the terminal."""
    data_dir, traces = tmp_path / "data", tmp_path / "data" / "traces.jsonl"
    serve(sink, data_dir, traces, traffic())
    result, code = report_json(traces, sink, data_dir)
    check = result["sink"]
    assert check["verdict"] == "match", check["mismatches"]
    # strict: 2 connections x batches of 2, 3, 4 records, then b3 (1 record) after the replayed b2
    assert check["cohorts"]["strict"]["sink"] == {"batches": 7, "accepted": 13, "skipped": 0, "rejected": 6}
    assert check["cohorts"]["lenient"]["sink"] == {"batches": 6, "accepted": 12, "skipped": 6, "rejected": 0}
    assert check["synthetic"]["strict"]["sink"] == {"batches": 1, "accepted": 2, "skipped": 0, "rejected": 4}
    assert check["cohorts"]["strict"]["sink"] == check["cohorts"]["strict"]["spans"]
    assert result["cohorts"]["strict"]["batches"] == 7  # the judge's totals: the same spans
    if sink == "sqlite":
        assert check["source"] == f"sqlite://{(data_dir / 'sink.sqlite3').absolute()}"
    else:
        assert check["source"].startswith("postgresql://postgres:***@127.0.0.1:5432/canaryws_report_")

    table = report(traces, sink, data_dir)
    assert table.returncode == code and "Sink: MATCH" in table.stdout, table.stdout
    assert PASSWORD not in table.stdout + table.stderr and PASSWORD not in json.dumps(result)


def test_a_batch_only_one_side_saw_is_a_mismatch_shown_everywhere(tmp_path: Path, sink: str) -> None:
    """A strict batch committed but on no summary, and a lenient one counted but never committed:
    a mismatch in both directions, in the JSON, the terminal (under the verdict) and the page;
    the exit code is still the verdict's."""
    data_dir, traces = tmp_path / "data", tmp_path / "data" / "traces.jsonl"
    conns = traffic()
    conns[0].not_counted.add("b1")  # c-strict-0's b1 (3 records: 2 accepted, 1 rejected)
    conns[2].not_committed.add("b0")  # c-lenient-0's b0 (2 records, both accepted)
    serve(sink, data_dir, traces, conns)
    result, code = report_json(traces, sink, data_dir)
    check = result["sink"]
    assert check["verdict"] == "mismatch"
    assert check["cohorts"]["strict"]["difference"] == {"batches": 1, "accepted": 2, "skipped": 0, "rejected": 1}
    assert check["cohorts"]["lenient"]["difference"] == {"batches": -1, "accepted": -2, "skipped": 0, "rejected": 0}
    assert check["synthetic"]["strict"]["verdict"] == "match"
    assert [m.split(":")[0] for m in check["mismatches"]] == ["strict", "lenient"]
    without = run_cli("report", "--traces", str(traces), *LOOSE, "--json")
    assert (code, result["verdict"]) == (without.returncode, json.loads(without.stdout)["verdict"])

    page = tmp_path / "report.html"
    table = report(traces, sink, data_dir, "--html", str(page))
    assert table.returncode == code
    out = table.stdout
    assert "Sink: MISMATCH" in out and out.index("Sink: MISMATCH") < out.index("Cohorts"), out
    assert "1 batch more (7 vs 6)" in re.sub(r"\s+", " ", out), out
    html = page.read_text()
    assert '<section id="sink" class="sink mismatch">' in html
    assert '<tr class="differs"><td>lenient: batches</td><td>6</td><td>5</td><td>-1</td></tr>' in html
    assert PASSWORD not in out + table.stderr + html


def test_the_window_is_the_same_on_both_sides_and_its_edges_inside_a_slice_differ_as_documented(
        tmp_path: Path) -> None:
    """Two periods of traffic with a quiet moment between them, and one connection ("long")
    whose batch was committed in the first and whose summary slice ends in the second. Over its
    whole life the counts are equal; --since the quiet moment counts the second period on both
    sides; an edge inside "long"'s slice moves its batch to one side, in the direction
    docs/report.md gives (--since: the spans count more; --until: the sink does)."""
    data_dir = tmp_path / "data"
    first, second, long_file = (tmp_path / name for name in ("first.jsonl", "second.jsonl", "long.jsonl"))
    first_start = time.time_ns()
    *first_summaries, long = commit_and_count("sqlite", data_dir, [
        *traffic("a-"), Conn("long", "client-long", "strict", {"x1": ["a", ""]})])
    emit(first, first_summaries, first_start, time.time_ns())
    time.sleep(0.05)
    quiet = time.time_ns()
    time.sleep(0.05)
    second_start = time.time_ns()
    emit(second, commit_and_count("sqlite", data_dir, traffic("b-")[2:4]), second_start, time.time_ns())  # lenient
    emit(long_file, [long], first_start, time.time_ns())
    every = ("--traces", str(first), "--traces", str(second), "--traces", str(long_file))

    whole, _ = report_json(first, "sqlite", data_dir, *every[2:])
    assert whole["sink"]["verdict"] == "match", whole["sink"]["mismatches"]

    later, _ = report_json(first, "sqlite", data_dir, "--traces", str(second), "--since", iso(quiet))
    assert later["sink"]["verdict"] == "match", later["sink"]["mismatches"]  # "long" on neither side
    assert later["sink"]["cohorts"]["lenient"]["sink"]["batches"] == 6
    assert later["sink"]["cohorts"]["strict"]["sink"]["batches"] == 0

    since, _ = report_json(first, "sqlite", data_dir, *every[2:], "--since", iso(quiet))
    assert since["sink"]["cohorts"]["strict"]["difference"]["batches"] == -1  # counted by "long"'s slice
    assert since["sink"]["cohorts"]["lenient"]["verdict"] == "match"
    assert "--since" in since["sink"]["mismatches"][0]
    until, _ = report_json(first, "sqlite", data_dir, *every[2:], "--until", iso(quiet))
    assert until["sink"]["cohorts"]["strict"]["difference"]["batches"] == 1  # committed, its slice not ended
    assert until["sink"]["cohorts"]["lenient"]["verdict"] == "match"
    assert "--until" in until["sink"]["mismatches"][0]


def test_a_sink_that_cannot_be_read_is_an_error_that_shows_no_password(tmp_path: Path) -> None:
    """Exit 3, never a verdict: no SQLite file (and none is created), an unreachable PostgreSQL
    (its password hidden); a value that names no sink is a ValueError (exit 3 as well)."""
    traces = tmp_path / "traces.jsonl"
    emit(traces, [ConnectionSummary("c", "client", "strict", 1, False, "rev", 0.5, end=END_CLOSED, close_code=1000)],
         time.time_ns() - 1_000_000, time.time_ns())
    data_dir = tmp_path / "data"
    missing = report(traces, "sqlite", data_dir)
    assert missing.returncode == 3 and "no such database file" in missing.stderr, missing.stderr
    assert not (data_dir / "sink.sqlite3").exists()

    url = f"postgresql://canary:{PASSWORD}@127.0.0.1:{free_port()}/canary"
    down = report(traces, url, data_dir)
    assert down.returncode == 3 and "postgresql://canary:***@127.0.0.1:" in down.stderr, down.stderr
    assert PASSWORD not in down.stdout + down.stderr

    for value in ("mysql://x", "none"):
        with pytest.raises(ValueError):
            committed_counts(value, data_dir, None, None)


# -- a real service -----------------------------------------------------------------------------


def documented_block() -> str:
    """docs/report.md's runnable example of --sink, as written."""
    text = (REPO / "docs" / "report.md").read_text()
    marker = text.index("tests/integration/test_report_sink.py runs this block as written")
    match = re.search(r"```sh\n(.*?)```", text[marker:], re.S)
    assert match is not None
    return match.group(1)


def run_documented_block(cwd: Path) -> str:
    """The block, in a fresh bash (``set -e``) with the environment's ``bin/`` first on ``PATH``
    and no ``CANARYWS_*`` variable: as test_docs_blocks.py runs the pages' blocks."""
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8"}
    done = subprocess.run(["bash", "-c", f"set -e\n{documented_block()}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_real_service_with_its_sqlite_sink_matches_its_spans(tmp_path: Path) -> None:
    """A real service with its default sink (SQLite in its data dir), clients in both cohorts
    sending batches, a malformed frame (an error, neither committed nor a batch), and a client
    that reconnects and resends a batch it sent before (a replay: answered, not a new row, not
    counted). docs/report.md's block, run as written in the service's directory: Sink: MATCH;
    and the counts are what the clients were answered."""
    answered: dict[str, dict[str, int]] = {}

    async def one_client(service: Service, client: str, batches: int) -> None:
        async with service.client(client) as (ws, welcome):
            strategy = welcome["cohort"]["strategy"]
            for n in range(batches):
                frames = await send_batch(ws, f"b-{n}", RECORDS[: 2 + n % 5])
                result = frames[-1]
                assert result["type"] == "result", frames
                counts = answered.setdefault(strategy, {"batches": 0, "accepted": 0})
                counts["batches"] += 1
                counts["accepted"] += len(result["accepted"])
            await ws.send("{not json")
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "error"

    async def replay(service: Service, client: str) -> None:
        async with service.client(client) as (ws, _):
            frames = await send_batch(ws, "b-1", RECORDS[:3])  # sent before on its first connection
            assert frames[-1]["type"] == "result" and len(frames[-1]["accepted"]) == 2

    clients = [f"tenant-{n}" for n in range(8)]
    with Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_SINK": "sqlite"}) as service:
        async def everyone() -> None:
            await asyncio.gather(*(one_client(service, c, 3 + n) for n, c in enumerate(clients)))
            await replay(service, clients[0])

        asyncio.run(everyone())
        def closed(spans: list[dict[str, Any]]) -> int:
            return sum(1 for s in spans if s["attributes"].get("canaryws.summary.end") == END_CLOSED)

        assert closed(service.wait_for_spans(lambda spans: closed(spans) == len(clients) + 1, 60)) == len(clients) + 1
        assert set(answered) == {"strict", "lenient"}, answered  # both cohorts served

        out = run_documented_block(service.root)
        assert "Sink: MATCH" in out and re.search(r"exit [012]: the verdict's", out), out

        result, _ = report_json(service.data_dir / "traces.jsonl", "sqlite", service.data_dir)
    check = result["sink"]
    assert check["verdict"] == "match", check["mismatches"]
    for strategy, counts in answered.items():
        assert {k: check["cohorts"][strategy]["sink"][k] for k in counts} == counts, (strategy, check)
