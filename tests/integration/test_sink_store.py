"""The sink adapters (``canaryws.adapters.sink``) on real databases: a fresh PostgreSQL database of
this module on the machine's cluster (127.0.0.1:5432), emptied before each test, and SQLite files.

What a caller of the port relies on: a group's answers in its order, exactly once per
``(client_id, batch_id)`` across groups, sink objects ("replicas") and in-group duplicates, a
replay answered with the first outcome, nothing written when the database is unreachable or the
transaction is cut, the purge of old idempotency keys only; and what an operator relies on: the
migrations up and down on a database with data, a schema too new refused, ``canaryws sink``.

The PostgreSQL URLs carry a password (trust auth ignores it): no message, ``repr`` or output may
show it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from canaryws.adapters.sink import postgres as postgres_module
from canaryws.adapters.sink import sqlite as sqlite_module
from canaryws.adapters.sink.migrations import LATEST, SchemaTooNew, current_version, migrate
from canaryws.adapters.sink.postgres import PostgresSink
from canaryws.adapters.sink.redaction import redacted, scrub
from canaryws.adapters.sink.sqlite import SqliteSink
from canaryws.adapters.sink.url import open_sink, parse_sink
from canaryws.core.sink import Committed, Handoff, SinkUnavailable, encode_answer
from canaryws.core.strategies import STRATEGIES
from harness import free_port
from private_postgres import fresh_database, psql

pytestmark = pytest.mark.integration

PASSWORD = "pw-S3cret-of-the-sink"
CANARYWS = Path(sys.executable).parent / "canaryws"  # the environment's console script, as an operator runs it
RECORDS: list[Any] = [" a ", "", "  ", "b", None, 5]  # strict accepts 0 and 3 and rejects the rest


def handoff(batch_id: str, records: Sequence[Any] = RECORDS, *, client_id: str = "tenant-1",
            strategy: str = "strict", synthetic: bool = False) -> Handoff:
    outcome = STRATEGIES[strategy].process(records, None)
    return Handoff(client_id, batch_id, "conn-1", "rev-1", synthetic, outcome)


# -- the databases ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with fresh_database("canaryws_sink_store") as url:
        yield url


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The module's database, emptied (its public schema made anew), as a URL with a password."""
    psql(pg_database, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return with_password(pg_database)


@dataclass
class Store:
    """One database under test, as ``CANARYWS_SINK`` names it."""

    dialect: str
    value: str
    data_dir: Path

    def sink(self, timeout: float = 5.0) -> PostgresSink | SqliteSink:
        sink = open_sink(self.value, self.data_dir, timeout=timeout)
        assert sink is not None
        return sink

    @property
    def path(self) -> Path:
        """The SQLite file."""
        target = parse_sink(self.value, self.data_dir)
        assert target is not None
        return target.path

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """``sql`` read straight from the database (``$1`` placeholders become ``?`` in SQLite)."""
        if self.dialect == "postgresql":
            connection = await asyncpg.connect(self.value)
            try:
                return [tuple(row) for row in await connection.fetch(sql, *args)]
            finally:
                await connection.close()
        with sqlite3.connect(self.path) as connection:
            for n in range(len(args), 0, -1):
                sql = sql.replace(f"${n}", "?")
            return list(connection.execute(sql, args))

    async def execute(self, sql: str) -> None:
        if self.dialect == "postgresql":
            connection = await asyncpg.connect(self.value)
            try:
                await connection.execute(sql)
            finally:
                await connection.close()
        else:
            with sqlite3.connect(self.path) as connection:
                connection.executescript(sql)

    async def batches(self) -> list[dict[str, Any]]:
        """``canaryws_batches`` by ``seq``, arrays as lists and ``synthetic`` as a bool in both dialects."""
        rows = await self.rows("SELECT client_id, batch_id, connection_id, strategy, strategy_version, flags_revision,"
                               " synthetic, accepted_count, skipped_count, rejected_count, accepted_indexes,"
                               " accepted_values FROM canaryws_batches ORDER BY seq")
        names = ("client_id", "batch_id", "connection_id", "strategy", "strategy_version", "flags_revision",
                 "synthetic", "accepted", "skipped", "rejected", "indexes", "values")
        out = []
        for row in rows:
            batch = dict(zip(names, row, strict=True))
            if self.dialect == "sqlite":
                batch["indexes"], batch["values"] = json.loads(batch["indexes"]), json.loads(batch["values"])
            batch["synthetic"] = bool(batch["synthetic"])
            batch["indexes"], batch["values"] = list(batch["indexes"]), list(batch["values"])
            out.append(batch)
        return out

    async def count(self, table: str) -> int:
        return int((await self.rows(f"SELECT count(*) FROM {table}"))[0][0])

    async def records_view(self) -> list[tuple[Any, ...]]:
        return await self.rows("SELECT batch_id, record_index, value, strategy, strategy_version"
                               " FROM canaryws_records ORDER BY batch_seq, record_index")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", f"sqlite://{tmp_path}/sink.db", tmp_path)
    return Store("postgresql", request.getfixturevalue("pg_url"), tmp_path)


async def opened(store: Store, timeout: float = 5.0) -> PostgresSink | SqliteSink:
    sink = store.sink(timeout)
    await sink.open()
    return sink


# -- the value of CANARYWS_SINK, and the password ---------------------------------------------


def test_the_sink_values_name_their_databases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = parse_sink("sqlite", Path("data"))
    assert default is not None and default.path == tmp_path / "data" / "sink.sqlite3"
    assert parse_sink("sqlite:///var/lib/x.db", tmp_path).path == Path("/var/lib/x.db")  # type: ignore[union-attr]
    assert parse_sink("sqlite:rel/x.db", tmp_path).path == tmp_path / "rel" / "x.db"  # type: ignore[union-attr]
    assert parse_sink("none", tmp_path) is None and open_sink(" none ", tmp_path) is None
    assert isinstance(open_sink("postgres://h/db", tmp_path), PostgresSink)
    assert isinstance(open_sink("sqlite", tmp_path), SqliteSink)
    for bad in ("mysql://u:hunter22@h/db", "sqlite://host/x.db", "sqlite:", "", "sqlite:///dir/"):
        with pytest.raises(ValueError) as refused:
            parse_sink(bad, tmp_path)
        assert "hunter22" not in str(refused.value)


def test_a_url_is_shown_without_its_password() -> None:
    assert redacted("postgresql://u:p%40ss@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert redacted("postgres://u:p@ss@h/db") == "postgres://u:***@h/db"  # an unencoded @ hides all of it
    assert redacted("postgresql://h/db?user=u&password=pw1&sslpassword=pw2") == (
        "postgresql://h/db?user=u&password=***&sslpassword=***")
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"
    url = f"postgresql://u:{PASSWORD}@h/db"
    assert PASSWORD not in repr(open_sink(url, Path("."))) and PASSWORD not in repr(parse_sink(url, Path(".")))
    assert scrub(f"could not log in with {PASSWORD} to {url}", url) == "could not log in with *** to " + redacted(url)


# -- commits ---------------------------------------------------------------------------------


def test_a_group_is_answered_in_order_and_each_key_written_once(store: Store) -> None:
    """Later duplicates of a key within a group are replays of its first, even with another outcome."""
    first_a = handoff("a")
    group = [first_a, handoff("b", ["x"], strategy="lenient", synthetic=True), handoff("a", ["other"]), handoff("c")]

    async def scenario() -> list[Committed]:
        sink = await opened(store)
        try:
            return await sink.commit(group)
        finally:
            await sink.close()

    answers = asyncio.run(scenario())
    assert [a.replay for a in answers] == [False, False, True, False]
    assert [a.outcome for a in answers] == [first_a.outcome, group[1].outcome, first_a.outcome, group[3].outcome]
    batches = asyncio.run(store.batches())
    assert [(b["batch_id"], b["strategy"], b["synthetic"]) for b in batches] == [
        ("a", "strict", False), ("b", "lenient", True), ("c", "strict", False)]
    assert batches[0] == {"client_id": "tenant-1", "batch_id": "a", "connection_id": "conn-1", "strategy": "strict",
                          "strategy_version": 1, "flags_revision": "rev-1", "synthetic": False, "accepted": 2,
                          "skipped": 0, "rejected": 4, "indexes": [0, 3], "values": ["a", "b"]}
    assert asyncio.run(store.count("canaryws_idempotency")) == 3
    assert asyncio.run(store.records_view()) == [
        ("a", 0, "a", "strict", 1), ("a", 3, "b", "strict", 1), ("b", 0, "x", "lenient", 1),
        ("c", 0, "a", "strict", 1), ("c", 3, "b", "strict", 1)]


def test_a_key_committed_before_is_a_replay_of_its_first_outcome(store: Store) -> None:
    """Across groups and across sink objects (a restart, another replica): the stored answer,
    not the new outcome, and no second batch row."""
    original = handoff("b-1")

    async def scenario() -> tuple[list[Committed], list[Committed]]:
        sink = await opened(store)
        try:
            await sink.commit([original, handoff("b-2")])
            again = await sink.commit([handoff("b-3"), handoff("b-1", ["changed"], strategy="lenient")])
        finally:
            await sink.close()
        other = await opened(store)
        try:
            return again, await other.commit([handoff("b-2", []), handoff("b-1", [])])
        finally:
            await other.close()

    again, elsewhere = asyncio.run(scenario())
    assert [a.replay for a in again] == [False, True] and again[1].outcome == original.outcome
    assert [a.replay for a in elsewhere] == [True, True] and elsewhere[1].outcome == original.outcome
    assert [b["batch_id"] for b in asyncio.run(store.batches())] == ["b-1", "b-2", "b-3"]


def test_nul_in_a_batch_id_or_an_accepted_value_commits_and_replays_exactly(store: Store) -> None:
    """A lenient batch may accept NUL, and a batch id may hold it. Ids differing after a NUL
    stay two keys; a replay answers the outcome exactly. The tables' values show U+FFFD for NUL
    (PostgreSQL text cannot hold it, SQLite's JSON functions end a string at it), and so do
    PostgreSQL's ids; SQLite keeps the ids as they are."""
    group = [handoff("n\x00a", [" x\x00y "], strategy="lenient"), handoff("n\x00b", ["z"])]

    async def scenario() -> tuple[list[Committed], list[Committed]]:
        sink = await opened(store)
        try:
            return await sink.commit(group), await sink.commit(group)
        finally:
            await sink.close()

    first, again = asyncio.run(scenario())
    assert [a.replay for a in first] == [False, False] and [a.replay for a in again] == [True, True]
    assert again[0].outcome == group[0].outcome and again[0].outcome.accepted == [(0, "x\x00y")]
    nul = "\ufffd" if store.dialect == "postgresql" else "\x00"
    assert [(b["batch_id"], b["values"]) for b in asyncio.run(store.batches())] == [
        (f"n{nul}a", ["x\ufffdy"]), (f"n{nul}b", ["z"])]


def test_two_replicas_committing_the_same_keys_at_once_write_each_once(store: Store) -> None:
    """Two sink objects commit overlapping groups concurrently, round after round: each key is
    written once, answered new exactly once, and every answer of a key carries one outcome."""
    rounds, width = 8, 12

    async def scenario() -> list[tuple[Handoff, Committed]]:
        one, two = await opened(store), await opened(store)
        answered: list[tuple[Handoff, Committed]] = []
        try:
            for n in range(rounds):
                keys = [f"r{n}-{i}" for i in range(width)]
                group_one = [handoff(k, [f"one-{k}"]) for k in keys]
                # in the other order: the replicas must not deadlock on the keys they share
                group_two = [handoff(k, [f"two-{k}"]) for k in reversed(keys)]
                got_one, got_two = await asyncio.gather(one.commit(group_one), two.commit(group_two))
                answered += [*zip(group_one, got_one, strict=True), *zip(group_two, got_two, strict=True)]
        finally:
            await one.close()
            await two.close()
        return answered

    answered = asyncio.run(scenario())
    by_key: dict[str, list[Committed]] = {}
    for sent, answer in answered:
        by_key.setdefault(sent.batch_id, []).append(answer)
    assert len(by_key) == rounds * width
    for key, answers in by_key.items():
        assert sorted(a.replay for a in answers) == [False, True], key
        assert answers[0].outcome == answers[1].outcome, key
    batches = asyncio.run(store.batches())
    assert sorted(b["batch_id"] for b in batches) == sorted(by_key)
    first = {k: next(a for a in answers if not a.replay).outcome.accepted for k, answers in by_key.items()}
    assert all(first[b["batch_id"]] == list(zip(b["indexes"], b["values"], strict=True)) for b in batches)


def test_a_key_committed_by_another_transaction_while_waiting_on_it_is_a_replay(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL: the other replica's transaction holds the key; the commit waits for it, and
    once it commits, answers with the outcome that transaction stored."""
    theirs = handoff("k", ["theirs"])

    async def scenario() -> list[Committed]:
        sink = open_sink(pg_url, tmp_path)
        assert sink is not None
        await sink.open()
        holder, admin = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
        try:
            async with holder.transaction():
                await holder.execute("INSERT INTO canaryws_idempotency (client_id, batch_id, answer)"
                                     " VALUES ($1, $2, $3)", "tenant-1", "k", encode_answer(theirs.outcome))
                committing = asyncio.create_task(sink.commit([handoff("k", ["mine"]), handoff("other")]))
                await lock_waiter(admin)
            return await committing
        finally:
            await holder.close()
            await admin.close()
            await sink.close()

    answers = asyncio.run(scenario())
    assert answers[0] == Committed(theirs.outcome, replay=True) and answers[1].replay is False
    assert [b["batch_id"] for b in asyncio.run(Store("postgresql", pg_url, tmp_path).batches())] == ["other"]


async def lock_waiter(admin: asyncpg.Connection, timeout: float = 10.0) -> int:
    """The pid of the backend of this database that waits on a lock (a row another transaction holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = await admin.fetchval("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() LIMIT 1")
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError("no backend waits on the held key")


# -- failures: nothing written ---------------------------------------------------------------


def test_an_unreachable_database_is_unavailable_at_once_and_hides_the_password(tmp_path: Path) -> None:
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/nothing"
    (tmp_path / "a-file").write_text("")
    for value in (closed, f"sqlite://{tmp_path}/a-file/sink.db"):  # no port listens; no directory can be made
        sink = open_sink(value, tmp_path, timeout=5.0)
        assert sink is not None
        started = time.monotonic()
        with pytest.raises(SinkUnavailable) as unavailable:
            asyncio.run(sink.open())
        assert time.monotonic() - started < 2.0
        assert PASSWORD not in unavailable.value.detail and unavailable.value.retry_after == 1.0
        assert unavailable.value.detail.startswith(f"sink {redacted(value)}")
    with pytest.raises(SinkUnavailable, match="not open"):  # the service's start failed: no commit either
        asyncio.run(PostgresSink(closed).commit([handoff("x")]))


def test_a_transaction_cut_mid_way_writes_nothing(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL: the commit waits on the group's second key (another transaction holds it)
    after writing the first; its backend is then terminated, and then, on the same sink, a commit
    runs out of its timeout while waiting. Neither leaves a row; the next commit writes the group."""
    group = [handoff("k1"), handoff("k2"), handoff("k3")]
    store = Store("postgresql", pg_url, tmp_path)

    async def scenario() -> tuple[SinkUnavailable, SinkUnavailable, float, list[Committed]]:
        sink = open_sink(pg_url, tmp_path, timeout=0.5)
        assert sink is not None
        await sink.open()
        slow = open_sink(pg_url, tmp_path, timeout=30)
        assert slow is not None
        await slow.open()
        holder, admin = await asyncpg.connect(pg_url), await asyncpg.connect(pg_url)
        held = holder.transaction()
        await held.start()
        try:
            await holder.execute("INSERT INTO canaryws_idempotency (client_id, batch_id, answer)"
                                 " VALUES ('tenant-1', 'k2', 'held')")
            committing = asyncio.create_task(slow.commit(group))
            await admin.fetchval("SELECT pg_terminate_backend($1)", await lock_waiter(admin))
            with pytest.raises(SinkUnavailable) as cut:
                await committing
            started = time.monotonic()
            with pytest.raises(SinkUnavailable) as timed_out:
                await sink.commit(group)
            waited = time.monotonic() - started
        finally:
            await held.rollback()
            await holder.close()
            await admin.close()
            await slow.close()
        assert await store.count("canaryws_idempotency") == 0 and await store.count("canaryws_batches") == 0
        try:
            return cut.value, timed_out.value, waited, await sink.commit(group)
        finally:
            await sink.close()

    cut, timed_out, waited, answers = asyncio.run(scenario())
    assert "commit failed" in cut.detail and PASSWORD not in cut.detail
    assert "commit failed" in timed_out.detail and waited < 3.0
    assert [a.replay for a in answers] == [False, False, False]
    assert [b["batch_id"] for b in asyncio.run(store.batches())] == ["k1", "k2", "k3"]


def test_a_locked_sqlite_file_is_unavailable_and_a_cancelled_commit_leaves_nothing_open(tmp_path: Path) -> None:
    """SQLite: another process's writer holds the file. A commit waits its timeout, then is
    unavailable; a commit whose caller gives up earlier (cancelled) leaves no transaction open
    on the connection. Once the writer is done, the group commits, written once."""
    store = Store("sqlite", f"sqlite://{tmp_path}/sink.db", tmp_path)
    group = [handoff("k1"), handoff("k2")]

    async def scenario() -> tuple[SinkUnavailable, float, list[Committed]]:
        sink = await opened(store, timeout=0.3)
        writer = sqlite3.connect(tmp_path / "sink.db", isolation_level=None, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(SinkUnavailable) as locked:
                await sink.commit(group)
            waited = time.monotonic() - started
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sink.commit(group), 0.05)  # the caller gives up mid-way
            writer.execute("ROLLBACK")
            assert await store.count("canaryws_idempotency") == 0
            return locked.value, waited, await sink.commit(group)
        finally:
            writer.close()
            await sink.close()

    locked, waited, answers = asyncio.run(scenario())
    assert "locked" in locked.detail and 0.25 < waited < 2.0
    assert [a.replay for a in answers] == [False, False]
    assert asyncio.run(store.count("canaryws_batches")) == 2


# -- retention ----------------------------------------------------------------------------------


def test_the_purge_removes_only_idempotency_keys_older_than_the_retention(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old keys go, in chunks (made small here), the recent ones stay; no batch row is ever
    deleted. A purged key is no longer known: committed again, it is new."""
    monkeypatch.setattr(postgres_module, "PURGE_CHUNK", 2)
    monkeypatch.setattr(sqlite_module, "PURGE_CHUNK", 2)
    age = ("UPDATE canaryws_idempotency SET committed_at = committed_at - interval '2 hours'"
           if store.dialect == "postgresql" else "UPDATE canaryws_idempotency SET committed_at = committed_at - 7200")

    async def scenario() -> tuple[int, list[Committed]]:
        sink = await opened(store)
        try:
            await sink.commit([handoff(f"old-{i}") for i in range(5)])
            await store.execute(age)
            await sink.commit([handoff("recent")])
            purged = await sink.purge(3600)
            return purged, await sink.commit([handoff("old-0"), handoff("recent")])
        finally:
            await sink.close()

    purged, answers = asyncio.run(scenario())
    assert purged == 5
    assert [a.replay for a in answers] == [False, True]
    assert asyncio.run(store.count("canaryws_batches")) == 7  # 6 + old-0 again: downstream keeps every row
    assert sorted(r[0] for r in asyncio.run(store.rows("SELECT batch_id FROM canaryws_idempotency"))) == [
        "old-0", "recent"]


# -- migrations -------------------------------------------------------------------------------


def test_migrations_go_down_and_up_on_a_database_with_data(store: Store) -> None:
    """2 → 1 drops the view and keeps the batches; 1 → 2 brings the view back over them;
    0 drops the tables; up again starts empty. Replicas starting at once migrate once."""

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        one, two = store.sink(), store.sink()
        await asyncio.gather(one.open(), two.open())  # two replicas start at once: one migrates, under the lock
        await two.close()
        try:
            seen["versions"] = (await current_version(one), await store.count("canaryws_schema_version"))
            await one.commit([handoff("b-1"), handoff("b-2", ["z"])])
            seen["down"] = [(s.from_version, s.to_version) for s in await migrate(one, 1)]
            seen["batches at 1"] = await store.count("canaryws_batches")
            try:
                await store.records_view()
            except (asyncpg.UndefinedTableError, sqlite3.OperationalError) as exc:
                seen["view at 1"] = type(exc).__name__
            seen["up"] = [(s.from_version, s.to_version) for s in await migrate(one)]
            seen["records"] = await store.records_view()
            seen["again"] = await migrate(one)
            seen["to 0"] = [(s.from_version, s.to_version) for s in await migrate(one, 0)]
            seen["tables at 0"] = await one.row_counts()
            seen["up from 0"] = [str(s) for s in await migrate(one)]
            seen["rows"] = await one.row_counts()
        finally:
            await one.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["versions"] == (LATEST, 1)
    assert seen["down"] == [(2, 1)] and seen["batches at 1"] == 2 and "view at 1" in seen
    assert seen["up"] == [(1, 2)] and seen["again"] == []
    assert seen["records"] == [("b-1", 0, "a", "strict", 1), ("b-1", 3, "b", "strict", 1), ("b-2", 0, "z", "strict", 1)]
    assert seen["to 0"] == [(2, 1), (1, 0)] and seen["tables at 0"] == {}
    assert seen["up from 0"] == ["0 → 1 (tables canaryws_idempotency, canaryws_batches)",
                                 "1 → 2 (view canaryws_records, index on canaryws_batches (committed_at))"]
    assert seen["rows"] == {"canaryws_idempotency": 0, "canaryws_batches": 0}


def test_a_schema_newer_than_this_release_is_refused(store: Store) -> None:
    async def scenario() -> tuple[SchemaTooNew, SchemaTooNew, int]:
        sink = await opened(store)
        await sink.close()
        await store.execute(f"UPDATE canaryws_schema_version SET version = {LATEST + 1}")
        refusals = []
        for attempt in (store.sink().open(), migrate(store.value, LATEST, data_dir=store.data_dir)):
            try:
                await attempt
            except SchemaTooNew as exc:
                refusals.append(exc)
        sink = store.sink()
        try:
            return refusals[0], refusals[1], await current_version(sink)
        finally:
            await sink.close()

    at_open, at_migrate, version = asyncio.run(scenario())
    assert version == LATEST + 1 and at_open.version == at_migrate.version == LATEST + 1
    assert f"canaryws sink migrate --to {LATEST}" in str(at_open) and "release that applied it" in str(at_open)
    assert PASSWORD not in str(at_open)


# -- canaryws sink -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """``canaryws sink ARGS`` with the exit code it should end with (no CANARYWS_* variable but ``env``)."""

    args: tuple[str, ...]
    expect: int = 0
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None


def sink_cli(*commands: Command) -> list[str]:
    """Run the commands at once (each is a process that imports the whole CLI: seconds on a busy
    machine), check their exit codes and that no output shows the password; their outputs
    (stdout, then stderr), in order."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CANARYWS_")}
    running = [(c, subprocess.Popen([str(CANARYWS), "sink", *c.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=c.cwd, env={**environment, **dict(c.env)})) for c in commands]
    outputs = []
    for command, process in running:
        out, err = process.communicate(timeout=60)
        assert process.returncode == command.expect, (command.args, out, err)
        assert PASSWORD not in out + err
        outputs.append(out + err)
    return outputs


def test_the_sink_commands_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """migrate (up, down with --to, refusing a version it does not know), status, an unreachable
    database and a schema too new; the URL as CANARYWS_SINK or --sink, its password never printed."""
    shown = redacted(pg_url)
    env = (("CANARYWS_SINK", pg_url),)
    closed = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x"
    up, beyond, unreachable = sink_cli(Command(("migrate",), env=env), Command(("migrate", "--to", "3"), 2, env),
                                       Command(("migrate", "--sink", closed), 1))
    assert up.splitlines() == [
        f"sink {shown}: 0 → 1 (tables canaryws_idempotency, canaryws_batches)",
        f"sink {shown}: 1 → 2 (view canaryws_records, index on canaryws_batches (committed_at))"]
    assert "Error: --to 3: this release knows schema versions 0 to 2" in beyond
    assert f"Error: sink {redacted(closed)}: connect failed: ConnectionRefusedError" in unreachable

    asyncio.run(_commit(pg_url, tmp_path, [handoff("b-1"), handoff("b-2")]))
    (down,) = sink_cli(Command(("migrate", "--sink", pg_url, "--to", "1")))
    assert down.splitlines() == [
        f"sink {shown}: 2 → 1 (undo: view canaryws_records, index on canaryws_batches (committed_at))"]
    psql(pg_url.replace(f":{PASSWORD}", ""), f"UPDATE canaryws_schema_version SET version = {LATEST + 1}")
    newer, refused = sink_cli(Command(("status",), env=env), Command(("migrate",), 1, env))
    assert newer.splitlines() == [
        f"sink {shown}", "schema version 3 (this release's latest: 2): newer than this release: migrate down with "
        "the release that applied it", "canaryws_idempotency 2 rows", "canaryws_batches 2 rows"]
    assert f"migrate it down with the release that applied it: canaryws sink migrate --to {LATEST}" in refused


async def _commit(value: str, data_dir: Path, group: list[Handoff]) -> None:
    sink = open_sink(value, data_dir)
    assert sink is not None
    await sink.open()
    try:
        await sink.commit(group)
    finally:
        await sink.close()


def test_the_sink_commands_on_the_embedded_sqlite_file(tmp_path: Path) -> None:
    """The default sink is data/sink.sqlite3 under the current directory (or --data-dir);
    status creates nothing, migrate creates the file and its directory."""
    status, migrated = sink_cli(Command(("status",), cwd=tmp_path),
                                Command(("migrate", "--data-dir", str(tmp_path / "elsewhere"))))
    assert status.splitlines() == [
        f"sink sqlite://{tmp_path}/data/sink.sqlite3",
        "no database file yet: the service creates it at its start, or canaryws sink migrate"]
    assert not (tmp_path / "data").exists()
    assert migrated.splitlines()[-1].startswith(f"sink sqlite://{tmp_path}/elsewhere/sink.sqlite3: 1 → 2")
    assert (tmp_path / "elsewhere" / "sink.sqlite3").exists()


# -- the service on the SQLite sink -----------------------------------------------------------


@pytest.mark.parametrize("sink", ["sqlite", "none"])
def test_the_service_lowers_the_switch_interval_while_it_runs_on_the_sqlite_sink(tmp_path: Path, sink: str) -> None:
    """The interpreter's switch interval is SWITCH_INTERVAL while the app runs (its lifespan) on
    the SQLite sink, so that the sink's thread takes the GIL back from a busy event loop sooner,
    and is what it was once the app stops; without a sink it is left alone."""
    from canaryws.adapters.sink.sqlite import SWITCH_INTERVAL
    from inprocess import embedded_flags, service_for

    service = service_for(tmp_path, embedded_flags(), sink=sink)
    before = sys.getswitchinterval()

    async def scenario() -> float:
        async with service.fastapi.router.lifespan_context(service.fastapi):
            return sys.getswitchinterval()

    during = asyncio.run(scenario())
    assert during == (SWITCH_INTERVAL if sink == "sqlite" else before)
    assert before > SWITCH_INTERVAL
    assert sys.getswitchinterval() == before
