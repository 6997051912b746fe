"""The persist step keeps its promise through failures (issue 25's acceptance): each batch a
client sends is committed exactly once per (client id, batch id), and answered only after its
commit, when the service is SIGKILLed mid-stream and restarted on the same port, or when its
database stops and starts again mid-stream.

Real parts only: ``canaryws serve`` processes (tests/harness.py), clients on the official SDK
(``canaryws.client.connect``, contract v2, reconnecting and resending by themselves), a fresh
database on the machine's PostgreSQL cluster, a private PostgreSQL instance the test may stop
(tests/private_postgres.py), the embedded SQLite file. Every batch is deterministic (a fixed
seed per client and batch), with good and bad records and a 50 % strict rollout, so both
strategies' outcomes are stored.

What is checked after each run, from the SDK's answers and the database's own tables:

- every batch got exactly one answer, a ``Result`` (no error reached the caller), durable;
- each answer is what the strategy it names makes of the batch's records;
- ``canaryws_batches`` and ``canaryws_idempotency`` hold exactly one row per batch sent, and
  nothing else; each row's strategy, counts and accepted lists are the answer's, and the stored
  answer (what a replay sends) is the answer, replays included;
- ``canaryws_records`` holds each accepted record (the union of the answers' accepted lists)
  exactly once, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from canaryws import client as cw
from canaryws.core.sink import decode_answer
from canaryws.core.strategies import STRATEGIES
from canaryws.core.strategies.strict import DEFAULT_MAX_LENGTH
from contract_check import ContractRecord
from harness import Service, flags_doc, metric_value, send_signal
from private_postgres import PrivatePostgres, fresh_database, query_json

pytestmark = pytest.mark.integration

SEED = 25
WINDOW = 8  # batches in flight per client
STREAM_TIMEOUT = 240.0  # seconds a whole stream may take before the test fails (pytest's timeout is 300)
START_TIMEOUT = 90.0  # seconds a service may take to start (a loaded machine runs several suites at once)


# -- the clients' batches -------------------------------------------------------------------


def batch_records(client_id: str, n: int) -> list[Any]:
    """The records of batch ``n`` of ``client_id``: 1 to 6 of them, deterministic from
    :data:`SEED`; good values (padded, non-ASCII, with quotes, commas and backslashes, which
    the database's arrays must keep) mixed with what lenient skips and strict rejects (empty,
    blank, null, a number, a control character that only lenient accepts)."""
    rng = random.Random(f"{SEED}/{client_id}/{n}")
    out: list[Any] = []
    for i in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.45:
            out.append(f"  {client_id}/{n}/{i} ")
        elif roll < 0.55:
            out.append(f'é"{n},\\{{{i}}}\t')
        elif roll < 0.65:
            out.append("")
        elif roll < 0.73:
            out.append(" \t ")
        elif roll < 0.81:
            out.append(None)
        elif roll < 0.89:
            out.append(rng.randint(-5, 500))
        else:
            out.append(f"ctl\x01{n}")
    return out


@dataclass(frozen=True)
class Plan:
    """Who sends what: ``batches`` batches per client, ids ``f"{client}-{n}"``."""

    clients: tuple[str, ...]
    batches: int

    @classmethod
    def of(cls, prefix: str, clients: int, batches: int) -> Plan:
        return cls(tuple(f"{prefix}-{i:02d}" for i in range(clients)), batches)

    def batch_ids(self, client_id: str) -> list[str]:
        return [f"{client_id}-{n}" for n in range(self.batches)]

    @property
    def total(self) -> int:
        return len(self.clients) * self.batches

    def all_batch_ids(self) -> set[str]:
        return {b for c in self.clients for b in self.batch_ids(c)}

    def records(self, batch_id: str) -> list[Any]:
        client_id, n = batch_id.rsplit("-", 1)
        return batch_records(client_id, int(n))


@dataclass
class Progress:
    """What the SDK handed the callers, live: answers by batch id, failures, reconnections."""

    plan: Plan
    answers: dict[str, cw.Result] = field(default_factory=dict)
    repeated: list[str] = field(default_factory=list)  # ids answered more than once (must stay empty)
    failures: dict[str, BaseException] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def record(self, batch_id: str, result: cw.Result) -> None:
        if batch_id in self.answers or result.id != batch_id:
            self.repeated.append(batch_id)
        self.answers[batch_id] = result

    @property
    def answered(self) -> int:
        return len(self.answers)

    async def reached(self, count: int, timeout: float = 120.0) -> int:
        """Wait until ``count`` batches are answered; the count then."""
        deadline = time.monotonic() + timeout
        while self.answered < count:
            if self.finished or time.monotonic() > deadline:
                raise AssertionError(f"the stream stopped at {self.answered} answers before reaching {count} "
                                     f"(failures: {list(self.failures.items())[:3]})")
            await asyncio.sleep(0.005)
        return self.answered

    @property
    def replays(self) -> int:
        return sum(1 for r in self.answers.values() if r.replay is True)


def stream(service: Service, plan: Plan, disturb: Callable[[Progress], Coroutine[Any, Any, None]]) -> Progress:
    """Every client of ``plan`` streams its batches through the SDK (``WINDOW`` in flight),
    while ``disturb(progress)`` breaks something; returns once every call has returned and
    the disturbance is over."""
    tokens = {cid: service.token(cid) for cid in plan.clients}

    async def one_client(i: int, cid: str, progress: Progress) -> None:
        policy = cw.Reconnect(max_attempts=1000, initial_delay=0.05, max_delay=0.5, give_up_after=90,
                              rng=random.Random(SEED * 1000 + i))
        async with cw.connect(service.ws_url, token=tokens[cid], window=WINDOW, reconnect=policy) as client:
            assert client.durable, "the welcome of a service with a sink says its results are durable"

            async def send(batch_id: str) -> None:
                try:
                    result = await client.process(plan.records(batch_id), batch_id=batch_id)
                except cw.CanarywsError as error:
                    progress.failures[batch_id] = error
                    return
                progress.record(batch_id, result)

            await asyncio.gather(*(send(b) for b in plan.batch_ids(cid)))
            progress.reconnects[cid] = client.reconnects

    async def all_clients(progress: Progress) -> None:
        try:
            await asyncio.gather(*(one_client(i, cid, progress) for i, cid in enumerate(plan.clients)))
        finally:
            progress.finished = True

    async def run() -> Progress:
        progress = Progress(plan)
        # One task group: a disturbance that fails ends the clients, and clients that fail end it.
        async with asyncio.timeout(STREAM_TIMEOUT), asyncio.TaskGroup() as group:
            group.create_task(disturb(progress))
            group.create_task(all_clients(progress))
        return progress

    return asyncio.run(run())


def kill_and_restart(service: Service, at: int, committed_keys: Callable[[], set[tuple[str, str]]],
                     seen: dict[str, Any]) -> Callable[[Progress], Coroutine[Any, Any, None]]:
    """A disturbance: once ``at`` batches are answered, SIGKILL the service, note what the
    database holds and what was answered by then (``seen``), and start it again on the same
    port and data dir."""

    async def disturb(progress: Progress) -> None:
        await progress.reached(at)
        assert service.proc is not None
        seen["kill_sent"] = send_signal(service, signal.SIGKILL)
        service.proc.wait()
        # Answered so far: each was committed before its answer was sent, so it is stored.
        seen["answered_at_kill"] = {(r.id.rsplit("-", 1)[0], r.id) for r in progress.answers.values()}
        seen["committed_at_kill"] = await asyncio.to_thread(committed_keys)
        seen["read_after_kill"] = time.monotonic() - seen["kill_sent"]
        await asyncio.to_thread(service.start, START_TIMEOUT)
        seen["restarted_after"] = time.monotonic() - seen["kill_sent"]

    return disturb


# -- what the database holds -----------------------------------------------------------------


@dataclass
class Stored:
    """The sink's tables, read back: ``canaryws_batches``, ``canaryws_idempotency`` and the
    view ``canaryws_records``, as plain rows."""

    batches: list[dict[str, Any]]
    idempotency: list[dict[str, Any]]
    records: list[dict[str, Any]]


BATCH_COLUMNS = ("client_id, batch_id, strategy, strategy_version, accepted_count, skipped_count, rejected_count, "
                 "accepted_indexes, accepted_values")


def read_postgres(url: str) -> Stored:
    return Stored(
        query_json(url, f"SELECT {BATCH_COLUMNS} FROM canaryws_batches"),
        query_json(url, "SELECT client_id, batch_id, answer FROM canaryws_idempotency"),
        query_json(url, "SELECT client_id, batch_id, record_index, value FROM canaryws_records"),
    )


KEYS = "SELECT client_id, batch_id FROM canaryws_batches"


def postgres_keys(url: str) -> set[tuple[str, str]]:
    return {(r["client_id"], r["batch_id"]) for r in query_json(url, KEYS)}


def _sqlite_rows(path: Path, select: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(select)]
    finally:
        db.close()


def read_sqlite(path: Path) -> Stored:
    batches = _sqlite_rows(path, f"SELECT {BATCH_COLUMNS} FROM canaryws_batches")
    for row in batches:  # SQLite keeps the arrays as JSON text
        row["accepted_indexes"] = json.loads(row["accepted_indexes"])
        row["accepted_values"] = json.loads(row["accepted_values"])
    return Stored(
        batches,
        _sqlite_rows(path, "SELECT client_id, batch_id, answer FROM canaryws_idempotency"),
        _sqlite_rows(path, "SELECT client_id, batch_id, record_index, value FROM canaryws_records"),
    )


def sqlite_keys(path: Path) -> set[tuple[str, str]]:
    return {(r["client_id"], r["batch_id"]) for r in _sqlite_rows(path, KEYS)}


# -- the checks --------------------------------------------------------------------------------


def _pairs(items: Iterable[Any]) -> list[tuple[Any, Any]]:
    """``(index, value|reason|code)`` pairs of a result's list, an outcome's or a stored one's."""
    out: list[tuple[Any, Any]] = []
    for item in items:
        if isinstance(item, cw.Accepted):
            out.append((item.index, item.value))
        elif isinstance(item, cw.Skipped):
            out.append((item.index, item.reason))
        elif isinstance(item, cw.Rejected):
            out.append((item.index, item.code))
        else:
            index, other = item
            out.append((index, other))
    return out


def _lists(strategy: str, version: int, accepted: Iterable[Any], skipped: Iterable[Any],
           rejected: Iterable[Any]) -> tuple[Any, ...]:
    return strategy, version, _pairs(accepted), _pairs(skipped), _pairs(rejected)


def _few(items: Iterable[Any], n: int = 5) -> list[Any]:
    return list(items)[:n]


def assert_exactly_once(plan: Plan, progress: Progress, stored: Stored) -> None:
    """Every batch answered once with a durable result that is the strategy's outcome, and the
    database holds exactly the answers: one row per batch in each table, one per accepted record."""
    assert not progress.failures, (f"{len(progress.failures)} batches raised instead of getting a result: "
                                   f"{_few(progress.failures.items())}")
    assert progress.repeated == [], f"answered more than once: {_few(progress.repeated)}"
    expected_ids = plan.all_batch_ids()
    assert set(progress.answers) == expected_ids, f"unanswered: {_few(expected_ids - set(progress.answers))}"
    answers = {(bid.rsplit("-", 1)[0], bid): r for bid, r in progress.answers.items()}

    wrong: list[str] = []
    for (_, bid), result in answers.items():
        if result.durable is not True or result.replay not in (True, False):
            wrong.append(f"{bid}: durable={result.durable!r} replay={result.replay!r}")
            continue
        outcome = STRATEGIES[result.strategy].process(plan.records(bid), DEFAULT_MAX_LENGTH)
        mine = _lists(result.strategy, result.strategy_version, result.accepted, result.skipped, result.rejected)
        if mine != _lists(outcome.strategy, outcome.strategy_version, outcome.accepted, outcome.skipped,
                          outcome.rejected):
            wrong.append(f"{bid}: answered {mine}, the strategy makes {outcome}")
    assert not wrong, f"{len(wrong)} answers are not their strategy's outcome: {_few(wrong)}"
    assert {r.strategy for r in answers.values()} == {"lenient", "strict"}, "both cohorts took part"

    for table, rows in (("canaryws_batches", stored.batches), ("canaryws_idempotency", stored.idempotency)):
        counts = Counter((row["client_id"], row["batch_id"]) for row in rows)
        twice = [key for key, n in counts.items() if n > 1]
        assert not twice, f"{table}: {len(twice)} batches have more than one row: {_few(twice)}"
        assert set(counts) == set(answers), (f"{table}: missing {_few(set(answers) - set(counts))}, "
                                             f"unexpected {_few(set(counts) - set(answers))}")

    for row in stored.batches:
        result = answers[(row["client_id"], row["batch_id"])]
        got = (row["strategy"], row["strategy_version"], row["accepted_count"], row["skipped_count"],
               row["rejected_count"], list(zip(row["accepted_indexes"], row["accepted_values"], strict=True)))
        want = (result.strategy, result.strategy_version, len(result.accepted), len(result.skipped),
                len(result.rejected), _pairs(result.accepted))
        if got != want:
            wrong.append(f"{row['batch_id']}: stored {got}, answered {want}")
    assert not wrong, f"{len(wrong)} canaryws_batches rows differ from the answers: {_few(wrong)}"

    for row in stored.idempotency:
        result = answers[(row["client_id"], row["batch_id"])]
        kept = decode_answer(row["answer"])
        got_lists = _lists(kept.strategy, kept.strategy_version, kept.accepted, kept.skipped, kept.rejected)
        if got_lists != _lists(result.strategy, result.strategy_version, result.accepted, result.skipped,
                               result.rejected):
            wrong.append(f"{row['batch_id']} (replay={result.replay}): stored {kept}, answered {result}")
    assert not wrong, f"{len(wrong)} stored answers differ from the answers sent: {_few(wrong)}"

    expected_records = Counter((cid, bid, a.index, a.value) for (cid, bid), r in answers.items() for a in r.accepted)
    stored_records = Counter((row["client_id"], row["batch_id"], row["record_index"], row["value"])
                             for row in stored.records)
    assert stored_records == expected_records, (
        f"canaryws_records: missing {_few((expected_records - stored_records).items())}, "
        f"extra or repeated {_few((stored_records - expected_records).items())}")


def assert_durable_before_answered(seen: dict[str, Any]) -> None:
    """Whatever was answered before the SIGKILL was in the database when the process died."""
    answered, committed = seen["answered_at_kill"], seen["committed_at_kill"]
    assert answered <= committed, f"answered but not committed at the kill: {_few(answered - committed)}"


def sink_batches(service: Service, outcome: str) -> float:
    return metric_value(service.get("/metrics").text, "canaryws_sink_batches_total", outcome=outcome)


def report(capsys: pytest.CaptureFixture[str], name: str, **facts: Any) -> None:
    """Print what a run observed (replays, retries, timings) to the terminal, also without ``-s``."""
    with capsys.disabled():
        print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in facts.items()))


# -- the tests ---------------------------------------------------------------------------------


def test_a_sigkilled_service_loses_and_duplicates_nothing_in_postgresql(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """50 SDK clients stream 10,000 batches into a service committing to PostgreSQL; after
    3,000 answers the service is SIGKILLed (no drain, no close frames: answers in flight are
    lost) and started again on the same port. The clients reconnect and resend every batch
    without an answer under its id: a batch committed before the kill is answered with its
    stored outcome (a replay) and is not written again; every other one is committed now.
    Every batch answered before the kill was in the database when the process died."""
    plan = Plan.of("pg-kill", clients=50, batches=200)
    with fresh_database() as url:
        service = Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_SINK": url})
        seen: dict[str, Any] = {}
        try:
            service.start(START_TIMEOUT)
            progress = stream(service, plan, kill_and_restart(service, 3000, lambda: postgres_keys(url), seen))
            committed_after_restart = sink_batches(service, "committed")
            replayed_after_restart = sink_batches(service, "replayed")
        finally:
            service.stop()
        stored = read_postgres(url)

    assert_exactly_once(plan, progress, stored)
    assert_durable_before_answered(seen)
    # The restarted process committed exactly the batches the first one had not.
    assert committed_after_restart == plan.total - len(seen["committed_at_kill"])
    # Each batch the restarted process found committed already was answered with a replay, and
    # each replay the clients got came from there (the first process had no reason to replay).
    assert progress.replays == replayed_after_restart
    assert len(seen["answered_at_kill"]) < plan.total, "the kill came mid-stream"
    assert all(n >= 1 for n in progress.reconnects.values()), progress.reconnects
    report(capsys, "postgresql sigkill", answered_at_kill=len(seen["answered_at_kill"]),
           committed_at_kill=len(seen["committed_at_kill"]), replays=progress.replays,
           replayed_metric_after_restart=replayed_after_restart,
           restart_seconds=round(seen["restarted_after"], 2), read_seconds=round(seen["read_after_kill"], 2),
           reconnects=dict(Counter(progress.reconnects.values())))


def test_a_database_stopped_mid_stream_costs_retries_not_batches(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], contract_record: ContractRecord) -> None:
    """20 SDK clients stream 2,000 batches into a service committing to a private PostgreSQL;
    after 500 answers the database is stopped (``pg_ctl stop -m fast``) for about 3 s, then
    started again. Meanwhile the service answers ``unavailable`` with ``retry_after_ms`` (v2
    clients; the SDK resends by itself), says so in ``/metrics`` and ``/readyz``, commits
    nothing (its count of committed batches stands still), and closes a v1 client's connection
    with 1013 when its batch cannot be committed. Once the database is back the clients finish:
    nothing lost, nothing written twice."""
    plan = Plan.of("pg-stop", clients=20, batches=100)
    seen: dict[str, Any] = {}
    with PrivatePostgres() as pg:
        url = pg.create_database("canaryws_sink")
        service = Service(tmp_path, flags_doc(strict_rollout=50), env={"CANARYWS_SINK": url})

        async def outage(progress: Progress) -> None:
            await progress.reached(500)
            await asyncio.to_thread(pg.stop, "fast")
            stopped = time.monotonic()
            deadline = stopped + 10
            while True:  # the service notices: batches answered `unavailable`, the probe says so
                unavailable = await asyncio.to_thread(sink_batches, service, "unavailable")
                readyz = (await asyncio.to_thread(service.get, "/readyz")).json()
                if unavailable > 0 and readyz["sink"]["state"] == "unavailable":
                    break
                assert time.monotonic() < deadline, (unavailable, readyz)
                await asyncio.sleep(0.05)
            seen["noticed_after"] = time.monotonic() - stopped
            seen["readyz_sink"] = readyz["sink"]
            seen["committed_when_noticed"] = await asyncio.to_thread(sink_batches, service, "committed")
            # A v1 client: its batch cannot be committed, and v1 has no `unavailable`: close 1013.
            async with service.client("v1-during-outage") as (ws, welcome):
                assert welcome["protocol"] == "canaryws.records.v1" and "durable" not in welcome
                await ws.send(json.dumps({"type": "batch", "id": "v1-1", "records": ["a", ""]}))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None, "the service sent a close frame"
                seen["v1_close"] = (closed.value.rcvd.code, closed.value.rcvd.reason)
            await asyncio.sleep(max(1.0, stopped + 3.0 - time.monotonic()))
            seen["committed_before_start"] = await asyncio.to_thread(sink_batches, service, "committed")
            seen["unavailable_in_outage"] = await asyncio.to_thread(sink_batches, service, "unavailable")
            seen["answered_in_outage"] = progress.answered
            await asyncio.to_thread(pg.start)
            seen["outage_seconds"] = time.monotonic() - stopped

        try:
            service.start(START_TIMEOUT)
            progress = stream(service, plan, outage)
            unavailable_total = sink_batches(service, "unavailable")
            replayed = sink_batches(service, "replayed")
            readyz_after = service.get("/readyz").json()["sink"]
        finally:
            service.stop()
        stored = read_postgres(url)

    assert_exactly_once(plan, progress, stored)
    assert seen["readyz_sink"]["state"] == "unavailable"
    assert seen["v1_close"][0] == 1013, seen["v1_close"]
    assert seen["committed_before_start"] == seen["committed_when_noticed"], "nothing committed while it was down"
    assert readyz_after["state"] == "ok", readyz_after
    retry_frames = [f for f in contract_record.frames if f["type"] == "error" and f["code"] == "unavailable"]
    assert retry_frames, "the SDK clients were answered `unavailable` during the outage"
    assert all(isinstance(f.get("retry_after_ms"), int) and f["id"] in progress.answers for f in retry_frames)
    assert seen["unavailable_in_outage"] > 0
    # Each batch the sink could not commit was told so: an `unavailable` frame (v2), or the v1 client's 1013.
    assert unavailable_total == len(retry_frames) + 1
    report(capsys, "postgresql stopped", outage_seconds=round(seen["outage_seconds"], 2),
           noticed_after=round(seen["noticed_after"], 2), unavailable_frames=len(retry_frames),
           unavailable_metric=unavailable_total, replays=progress.replays, replayed_metric=replayed,
           answered_when_restarted=seen["answered_in_outage"], v1_close=seen["v1_close"],
           retry_after_ms=sorted({f["retry_after_ms"] for f in retry_frames})[:5])


def test_a_sigkilled_service_loses_and_duplicates_nothing_in_the_default_sqlite_sink(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The default sink (``CANARYWS_SINK`` unset: ``<data-dir>/sink.sqlite3``): 10 SDK clients
    stream 1,000 batches; after 300 answers the service is SIGKILLed and started again on the
    same port and data dir. Nothing answered is lost, nothing is written twice, the stored
    answers are the answers."""
    plan = Plan.of("sqlite-kill", clients=10, batches=100)
    service = Service(tmp_path, flags_doc(strict_rollout=50))
    service.env.pop("CANARYWS_SINK", None)  # the default, whatever the developer's shell says
    path = service.data_dir / "sink.sqlite3"
    seen: dict[str, Any] = {}
    try:
        service.start(START_TIMEOUT)
        progress = stream(service, plan, kill_and_restart(service, 300, lambda: sqlite_keys(path), seen))
        committed_after_restart = sink_batches(service, "committed")
        replayed_after_restart = sink_batches(service, "replayed")
    finally:
        service.stop()
    stored = read_sqlite(path)

    assert_exactly_once(plan, progress, stored)
    assert_durable_before_answered(seen)
    assert committed_after_restart == plan.total - len(seen["committed_at_kill"])
    # Each batch the restarted process found committed already was answered with a replay, and
    # each replay the clients got came from there (the first process had no reason to replay).
    assert progress.replays == replayed_after_restart
    assert len(seen["answered_at_kill"]) < plan.total, "the kill came mid-stream"
    report(capsys, "sqlite sigkill", answered_at_kill=len(seen["answered_at_kill"]),
           committed_at_kill=len(seen["committed_at_kill"]), replays=progress.replays,
           replayed_metric_after_restart=replayed_after_restart,
           restart_seconds=round(seen["restarted_after"], 2), read_seconds=round(seen["read_after_kill"], 2),
           reconnects=dict(Counter(progress.reconnects.values())))
