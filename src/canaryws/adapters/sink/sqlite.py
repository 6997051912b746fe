"""The SQLite sink, embedded: the stdlib ``sqlite3`` on a thread of its own, WAL and ``synchronous=FULL``.

The event loop never waits on the disk: each operation is one function run on the sink's
thread (a one-thread executor, so operations run one at a time, in the order they were
asked for) and awaited. A group's commit is **one** trip to that thread, whatever it holds:
``BEGIN IMMEDIATE``, the idempotency rows, the batch rows and ``COMMIT``, each a single
multi-row statement. That matters under load: every trip back to the event loop waits for
its next round (milliseconds when busy), and every statement step releases and takes back
the GIL, which a busy event loop holds for up to the interpreter's switch interval (5 ms by
default; the service lowers it to :data:`SWITCH_INTERVAL` while it runs on this sink);
with aiosqlite (a trip per statement, a step per row of ``executemany`` and of ``RETURNING``)
a group of 25 took 7–9 ms under load against 3.7 ms alone (docs/benchmarks.md).

The idempotency rows go in as one ``INSERT ... ON CONFLICT DO NOTHING``; when SQLite's count
of changes says every key was new (the usual group), the batch rows follow. Otherwise (a
replay) the transaction is rolled back and done again on the slow path, which learns which
keys were new (``RETURNING``) and reads the stored answers of the others. The parameters are
bound, not JSON: SQLite's JSON functions cut a string at a NUL character, which a batch id
may hold.

``BEGIN IMMEDIATE`` takes the database's write lock at once: two processes on one file (two
replicas) commit one after the other, each waiting up to the timeout (``busy_timeout``).
WAL lets readers (``canaryws report``, downstream) read while a group is written, and
``synchronous=FULL`` syncs the log at each commit, so an answered batch survives a power cut.

A caller that gives up (cancelled, or the committer's timeout) cannot stop a function the
thread has started: the function sees it before ``COMMIT`` and rolls back, so nothing of a
group whose caller gave up is written (unless the ``COMMIT`` had already begun: then all of
it is, and a resend is answered as a replay, as on PostgreSQL). Every function ends its own
transaction, so none is ever left open between operations.

Arrays are JSON text and ``committed_at`` is Unix time in seconds (REAL): see
:mod:`canaryws.adapters.sink.migrations`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from canaryws.adapters.sink.group import RETRY_AFTER, answers_of
from canaryws.adapters.sink.migrations import (
    SQLITE_NOW,
    TABLES,
    VERSION_TABLE,
    VERSION_TABLE_DDL,
    Step,
    migrate,
    next_step,
)
from canaryws.core.sink import NUL, NUL_STORED, Committed, Handoff, SinkUnavailable, encode_answer, first_of_each

T = TypeVar("T")

PURGE_CHUNK: Final = 10_000

SWITCH_INTERVAL: Final = 0.0005
"""The interpreter's switch interval (seconds) while the service runs on this sink (set by the
composition point, :mod:`canaryws.app`; CPython's default is 0.005). Each statement of a commit
releases the GIL while SQLite works and takes it back afterwards; when the event loop is busy,
taking it back waits for the switch interval, so a commit of four statements waited up to 20
ms. At 0.5 ms the benchmark's SQLite / none ratio rose from 0.42 to 0.57 (docs/benchmarks.md)."""

CHUNK: Final = 500
"""Rows per multi-row statement: 12 parameters a row (a batch row) stay below SQLite's 32,766."""


@functools.lru_cache(maxsize=32)
def _insert_keys(rows: int) -> str:
    """The idempotency rows of ``rows`` batches, inserted unless their key exists; the keys that were new."""
    return ("INSERT INTO canaryws_idempotency (client_id, batch_id, answer) VALUES "
            + ", ".join(["(?, ?, ?)"] * rows) + " ON CONFLICT DO NOTHING RETURNING client_id, batch_id")


@functools.lru_cache(maxsize=32)
def _stored(rows: int) -> str:
    """The stored answers of ``rows`` keys."""
    return ("WITH k(client_id, batch_id) AS (VALUES " + ", ".join(["(?, ?)"] * rows) + ") "
            "SELECT s.client_id, s.batch_id, s.answer FROM k JOIN canaryws_idempotency s "
            "ON s.client_id = k.client_id AND s.batch_id = k.batch_id")


@functools.lru_cache(maxsize=32)
def _insert_keys_only(rows: int) -> str:
    """The idempotency rows of ``rows`` batches, inserted unless their key exists (the fast path)."""
    return ("INSERT INTO canaryws_idempotency (client_id, batch_id, answer) VALUES "
            + ", ".join(["(?, ?, ?)"] * rows) + " ON CONFLICT DO NOTHING")


@functools.lru_cache(maxsize=32)
def _insert_batches(rows: int) -> str:
    """``rows`` batch rows, their columns built in Python (:func:`_batch_row`): half the cost of
    deriving them from the stored answer with SQLite's JSON functions (docs/benchmarks.md)."""
    return ("INSERT INTO canaryws_batches (client_id, batch_id, connection_id, flags_revision, synthetic, strategy,"
            " strategy_version, accepted_count, skipped_count, rejected_count, accepted_indexes, accepted_values)"
            " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows))


_encode_json = msgspec.json.Encoder().encode


def _batch_row(handoff: Handoff) -> tuple[object, ...]:
    """The ``canaryws_batches`` row of a handoff. The accepted values are a JSON array; a NUL in
    one of them is stored as U+FFFD (:data:`~canaryws.core.sink.NUL_STORED`): SQLite's JSON
    functions, which the view ``canaryws_records`` reads the values with, end a string at a NUL."""
    outcome = handoff.outcome
    values = [value for _, value in outcome.accepted]
    if any(NUL in value for value in values):
        values = [value.replace(NUL, NUL_STORED) for value in values]
    return (handoff.client_id, handoff.batch_id, handoff.connection_id, handoff.flags_revision,
            int(handoff.synthetic), outcome.strategy, outcome.strategy_version, len(outcome.accepted),
            len(outcome.skipped), len(outcome.rejected),
            _encode_json([index for index, _ in outcome.accepted]).decode(), _encode_json(values).decode())


_PURGE: Final = """
DELETE FROM canaryws_idempotency WHERE rowid IN (
    SELECT rowid FROM canaryws_idempotency WHERE committed_at < ? LIMIT ?)
"""

# What makes the database unusable for now: locked beyond the busy timeout, a disk error, a
# file that cannot be opened or created.
_UNAVAILABLE: Final = (sqlite3.Error, OSError)


class _GaveUp(Exception):
    """The caller of an operation gave up before its ``COMMIT``: rolled back."""


class SqliteSink:
    """The persist step on an SQLite file (:class:`~canaryws.core.sink.Sink`)."""

    name = "sqlite"
    concurrency = 2
    """Groups in flight: one committing on the thread, the next queued behind it, so the
    thread goes from one to the next without waiting for the event loop."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        """``path``: the database file (created, with its directory, when missing);
        ``timeout``: the seconds a wait for the write lock may take (``busy_timeout``)."""
        self.path = path
        self._timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._opened = False
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def label(self) -> str:
        return f"sqlite://{self.path}"

    def __repr__(self) -> str:
        return f"SqliteSink({self.label!r})"

    # -- the sink's thread -------------------------------------------------------------------

    async def _run(self, doing: str, work: Callable[[threading.Event], T]) -> T:
        """``work(gave_up)`` on the sink's thread; what fails in the database is
        SinkUnavailable. ``gave_up`` is set when the caller stops waiting (cancelled)."""
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="canaryws-sqlite")
        gave_up = threading.Event()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work, gave_up)
        except _UNAVAILABLE as exc:
            raise SinkUnavailable(f"sink {self.label}: {doing} failed: {type(exc).__name__}: {exc}",
                                  RETRY_AFTER) from None
        except BaseException:
            gave_up.set()
            raise

    def _connected(self) -> sqlite3.Connection:
        """The connection (on the sink's thread only)."""
        if self._connection is None:
            raise SinkUnavailable(f"sink {self.label}: not connected", RETRY_AFTER)
        return self._connection

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (once): WAL, ``synchronous=FULL``, ``busy_timeout``; raises SinkUnavailable."""
        await self._run("open the database", self._connect)

    def _connect(self, _gave_up: threading.Event) -> None:
        if self._connection is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=self._timeout,
                                     check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout={round(self._timeout * 1000)}")
            connection.execute("PRAGMA synchronous=FULL")
            self._write_ahead_log(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _write_ahead_log(self, connection: sqlite3.Connection) -> None:
        """``journal_mode=WAL`` (a property of the file, kept once set). Switching takes the
        file's exclusive lock, and SQLite answers BUSY at once, without waiting, when another
        process switches it at the same moment (replicas starting together): tried again
        until the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    async def open(self) -> None:
        """Connect and migrate the schema up to the latest version (the service's start).
        Raises SinkUnavailable (the caller retries) or SchemaTooNew."""
        await self.connect()
        await migrate(self)
        self._opened = True

    async def close(self) -> None:
        """Close the connection once what is queued on the thread is done, and the thread."""
        thread, self._thread, self._opened = self._thread, None, False
        if thread is None:
            return

        def close(_gave_up: threading.Event) -> None:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

        try:
            await asyncio.get_running_loop().run_in_executor(thread, close, threading.Event())
        finally:
            thread.shutdown(wait=False)

    async def ping(self) -> None:
        """``SELECT 1``; raises SinkUnavailable."""
        await self._run("ping", lambda _gave_up: self._connected().execute("SELECT 1").fetchall())

    # -- the port -----------------------------------------------------------------------

    async def commit(self, handoffs: Sequence[Handoff]) -> list[Committed]:
        """Write the group in one transaction, or nothing (SinkUnavailable); the answers in
        the group's order (docs/sink.md)."""
        if not self._opened:
            raise SinkUnavailable(f"sink {self.label}: not open (schema not migrated yet)", RETRY_AFTER)
        if not handoffs:
            return []
        firsts, positions = first_of_each(handoffs)
        # Built here, on the event loop: Python work on the sink's thread would contend for the GIL.
        keys = [(h.client_id, h.batch_id, encode_answer(h.outcome)) for h in firsts]
        rows = [_batch_row(h) for h in firsts]
        try:
            new, stored = await self._run("commit", functools.partial(self._commit, keys, rows))
        except _GaveUp:  # pragma: no cover - the caller is gone: nobody reads this
            raise SinkUnavailable(f"sink {self.label}: commit abandoned", RETRY_AFTER) from None
        return answers_of(firsts, positions, new, stored)

    def _commit(self, keys: list[tuple[str, str, str]], rows: list[tuple[object, ...]],
                gave_up: threading.Event) -> tuple[set[int], dict[int, str]]:
        """On the sink's thread: the group's transaction; which positions were new, and the
        stored answers of the others."""
        connection = self._connected()
        connection.execute("BEGIN IMMEDIATE")
        try:
            if all(_insert_new(connection, chunk) for chunk in _chunks(keys)):  # the usual group: every key new
                for chunk in _chunks(rows):
                    connection.execute(_insert_batches(len(chunk)), [value for row in chunk for value in row])
                _end(connection, gave_up)
                return set(range(len(keys))), {}
        except BaseException:
            connection.rollback()
            raise
        connection.rollback()  # some keys were committed before: the slow path, which tells which
        connection.execute("BEGIN IMMEDIATE")
        try:
            where = {(client_id, batch_id): at for at, (client_id, batch_id, _) in enumerate(keys)}
            new: set[int] = set()
            for chunk in _chunks(keys):
                cursor = connection.execute(_insert_keys(len(chunk)), [value for key in chunk for value in key])
                new.update(where[row[0], row[1]] for row in cursor.fetchall())
            stored: dict[int, str] = {}
            for chunk in _chunks([keys[at][:2] for at in range(len(keys)) if at not in new]):
                cursor = connection.execute(_stored(len(chunk)), [value for key in chunk for value in key])
                stored.update((where[row[0], row[1]], row[2]) for row in cursor.fetchall())
            fresh = [rows[at] for at in range(len(rows)) if at in new]
            for chunk in _chunks(fresh):
                connection.execute(_insert_batches(len(chunk)), [value for row in chunk for value in row])
            _end(connection, gave_up)
        except BaseException:
            connection.rollback()
            raise
        return new, stored

    async def purge(self, retention_seconds: float) -> int:
        """Delete the idempotency keys committed more than ``retention_seconds`` ago, in
        chunks of :data:`PURGE_CHUNK` rows (one transaction each, so commits go on between
        them); how many. Never touches ``canaryws_batches``."""
        def purge_chunk(cutoff: float, _gave_up: threading.Event) -> int:
            return int(self._connected().execute(_PURGE, (cutoff, PURGE_CHUNK)).rowcount)

        cutoff = await self._run("purge", lambda _gave_up: float(self._connected().execute(
            f"SELECT {SQLITE_NOW} - ?", (retention_seconds,)).fetchone()[0]))
        purged = 0
        while True:
            deleted = await self._run("purge", functools.partial(purge_chunk, cutoff))
            purged += deleted
            if deleted < PURGE_CHUNK:
                return purged

    # -- migrations (canaryws.adapters.sink.migrations) ------------------------------------

    async def schema_version(self) -> int:
        return await self._run("read the schema version", lambda _gave_up: _version(self._connected()))

    async def migrate_step(self, target: int) -> Step | None:
        """One step toward ``target`` in one ``BEGIN IMMEDIATE`` transaction."""
        return await self._run("migrate", functools.partial(self._migrate_step, target))

    def _migrate_step(self, target: int, gave_up: threading.Event) -> Step | None:
        connection = self._connected()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(VERSION_TABLE_DDL["sqlite"])
            step = next_step("sqlite", _version(connection), target, self.label)
            if step is not None:
                for statement in step.statements:
                    connection.execute(statement)
                connection.execute(f"DELETE FROM {VERSION_TABLE}")
                connection.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (step.to_version,))
            _end(connection, gave_up)
        except BaseException:
            connection.rollback()
            raise
        return step

    async def row_counts(self) -> dict[str, int]:
        """The rows of each of canaryws's tables, those that exist."""
        def count(_gave_up: threading.Event) -> dict[str, int]:
            connection = self._connected()
            return {relation: int(connection.execute(f"SELECT count(*) FROM {relation}").fetchone()[0])
                    for relation in TABLES if _exists(connection, relation)}

        return await self._run("count rows", count)


def _insert_new(connection: sqlite3.Connection, chunk: Sequence[tuple[str, str, str]]) -> bool:
    """Insert a chunk of idempotency rows; whether every one was new (SQLite's count of changes)."""
    before = connection.total_changes
    connection.execute(_insert_keys_only(len(chunk)), [value for key in chunk for value in key])
    return connection.total_changes - before == len(chunk)


def _end(connection: sqlite3.Connection, gave_up: threading.Event) -> None:
    """``COMMIT``, unless the caller gave up meanwhile (then the caller's ``rollback``)."""
    if gave_up.is_set():
        raise _GaveUp
    connection.execute("COMMIT")


def _exists(connection: sqlite3.Connection, name: str) -> bool:
    return connection.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() is not None


def _version(connection: sqlite3.Connection) -> int:
    if not _exists(connection, VERSION_TABLE):
        return 0
    return int(connection.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}").fetchone()[0])


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    """``items`` in slices of :data:`CHUNK`."""
    return [items[at:at + CHUNK] for at in range(0, len(items), CHUNK)]
