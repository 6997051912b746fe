"""The SQLite sink, embedded: aiosqlite, one connection, WAL and ``synchronous=FULL``.

aiosqlite runs the stdlib ``sqlite3`` on a thread of its own, so the event loop never waits
on the disk; each call is one trip to that thread, and a group costs four or five (``BEGIN
IMMEDIATE``, the idempotency rows, the stored answers when some keys were committed before,
the batch rows, ``COMMIT``). The idempotency rows go in as one multi-row ``INSERT ... ON
CONFLICT DO NOTHING RETURNING`` the keys that were new (its parameters bound, not JSON:
SQLite's JSON functions cut a string at a NUL character, which a batch id may hold).

``BEGIN IMMEDIATE`` takes the database's write lock at once: two processes on one file (two
replicas) commit one after the other, each waiting up to the timeout (``busy_timeout``).
WAL lets readers (``canaryws report``, downstream) read while a group is written, and
``synchronous=FULL`` syncs the log at each commit, so an answered batch survives a power cut.

Arrays are JSON text and ``committed_at`` is Unix time in seconds (REAL): see
:mod:`canaryws.adapters.sink.migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import aiosqlite
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

PURGE_CHUNK: Final = 10_000

CHUNK: Final = 500
"""Rows per multi-row statement: 3 parameters a row stay far below SQLite's 32,766."""


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


_INSERT_BATCH: Final = """
INSERT INTO canaryws_batches (client_id, batch_id, connection_id, flags_revision, synthetic, strategy, strategy_version,
                              accepted_count, skipped_count, rejected_count, accepted_indexes, accepted_values)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
"""A batch row, its columns built in Python (:func:`_batch_row`): half the cost of deriving them
from the stored answer with SQLite's JSON functions (docs/benchmarks.md, "The persist step")."""

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


class SqliteSink:
    """The persist step on an SQLite file (:class:`~canaryws.core.sink.Sink`)."""

    name = "sqlite"

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        """``path``: the database file (created, with its directory, when missing);
        ``timeout``: the seconds a wait for the write lock may take (``busy_timeout``)."""
        self.path = path
        self._timeout = timeout
        self._connection: aiosqlite.Connection | None = None
        self._opened = False
        self._lock = asyncio.Lock()  # one operation at a time on the one connection

    @property
    def label(self) -> str:
        return f"sqlite://{self.path}"

    def __repr__(self) -> str:
        return f"SqliteSink({self.label!r})"

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (once): WAL, ``synchronous=FULL``, ``busy_timeout``; raises SinkUnavailable."""
        async with self._lock:
            if self._connection is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connection = await aiosqlite.connect(self.path, isolation_level=None, timeout=self._timeout)
            except _UNAVAILABLE as exc:
                raise self._unavailable("open the database", exc) from None
            try:
                await connection.execute_fetchall(f"PRAGMA busy_timeout={round(self._timeout * 1000)}")
                await connection.execute_fetchall("PRAGMA synchronous=FULL")
                await self._write_ahead_log(connection)
            except BaseException as exc:
                await connection.close()
                if isinstance(exc, _UNAVAILABLE):
                    raise self._unavailable("open the database", exc) from None
                raise
            self._connection = connection

    async def _write_ahead_log(self, connection: aiosqlite.Connection) -> None:
        """``journal_mode=WAL`` (a property of the file, kept once set). Switching takes the
        file's exclusive lock, and SQLite answers BUSY at once, without waiting, when another
        process switches it at the same moment (replicas starting together): tried again
        until the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                await connection.execute_fetchall("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.01)

    async def open(self) -> None:
        """Connect and migrate the schema up to the latest version (the service's start).
        Raises SinkUnavailable (the caller retries) or SchemaTooNew."""
        await self.connect()
        await migrate(self)
        self._opened = True

    async def close(self) -> None:
        connection, self._connection, self._opened = self._connection, None, False
        if connection is not None:
            async with self._lock:
                await connection.close()

    def _connected(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise SinkUnavailable(f"sink {self.label}: not connected", RETRY_AFTER)
        return self._connection

    @asynccontextmanager
    async def _using(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, the sink's lock held. A transaction an earlier failure left open is
        ended first; a failure rolls back, and one of the database is SinkUnavailable
        (SchemaTooNew and the rest pass as they are)."""
        async with self._lock:
            connection = self._connected()
            try:
                if connection.in_transaction:
                    await self._rollback(connection)
                yield connection
            except _UNAVAILABLE as exc:
                await self._rollback(connection)
                raise self._unavailable(doing, exc) from None
            except BaseException:  # cancelled mid-way too: a BEGIN may still be queued
                await self._rollback(connection)
                raise

    def _unavailable(self, doing: str, exc: BaseException) -> SinkUnavailable:
        return SinkUnavailable(f"sink {self.label}: {doing} failed: {type(exc).__name__}: {exc}", RETRY_AFTER)

    @staticmethod
    async def _rollback(connection: aiosqlite.Connection) -> None:
        """End the transaction a failure left open, or a caller that gave up mid-way: queued on
        the connection's thread after what is still pending there (a ``BEGIN`` included), so
        that nothing stays open whatever point the operation had reached."""
        with contextlib.suppress(*_UNAVAILABLE):  # unusable: the next operation reports it
            await connection.rollback()

    async def ping(self) -> None:
        """``SELECT 1``; raises SinkUnavailable."""
        async with self._using("ping") as connection:
            await connection.execute_fetchall("SELECT 1")

    # -- the port -----------------------------------------------------------------------

    async def commit(self, handoffs: Sequence[Handoff]) -> list[Committed]:
        """Write the group in one transaction, or nothing (SinkUnavailable); the answers in
        the group's order (docs/sink.md)."""
        if not self._opened:
            raise SinkUnavailable(f"sink {self.label}: not open (schema not migrated yet)", RETRY_AFTER)
        if not handoffs:
            return []
        firsts, positions = first_of_each(handoffs)
        texts = [encode_answer(h.outcome) for h in firsts]  # the answers as stored
        where = {h.key: at for at, h in enumerate(firsts)}
        async with self._using("commit") as connection:
            await connection.execute_fetchall("BEGIN IMMEDIATE")
            new: set[int] = set()
            for chunk in _chunks(range(len(firsts))):
                rows = await connection.execute_fetchall(
                    _insert_keys(len(chunk)),
                    [value for at in chunk for value in (firsts[at].client_id, firsts[at].batch_id, texts[at])])
                new.update(where[row[0], row[1]] for row in rows)
            stored: dict[int, str] = {}
            for chunk in _chunks([at for at in range(len(firsts)) if at not in new]):
                rows = await connection.execute_fetchall(
                    _stored(len(chunk)), [value for at in chunk for value in firsts[at].key])
                stored.update((where[row[0], row[1]], row[2]) for row in rows)
            if new:
                await connection.executemany(_INSERT_BATCH, [_batch_row(h) for at, h in enumerate(firsts) if at in new])
            await connection.execute_fetchall("COMMIT")
        return answers_of(firsts, positions, new, stored)

    async def purge(self, retention_seconds: float) -> int:
        """Delete the idempotency keys committed more than ``retention_seconds`` ago, in
        chunks of :data:`PURGE_CHUNK` rows (one transaction each, so commits go on between
        them); how many. Never touches ``canaryws_batches``."""
        purged = 0
        cutoff: float | None = None
        while True:
            async with self._using("purge") as connection:
                if cutoff is None:
                    (row,) = await connection.execute_fetchall(f"SELECT {SQLITE_NOW} - ?", (retention_seconds,))
                    cutoff = float(row[0])
                cursor = await connection.execute(_PURGE, (cutoff, PURGE_CHUNK))
                deleted = cursor.rowcount
                await cursor.close()
            purged += deleted
            if deleted < PURGE_CHUNK:
                return purged

    # -- migrations (canaryws.adapters.sink.migrations) ------------------------------------

    async def schema_version(self) -> int:
        async with self._using("read the schema version") as connection:
            return await _version(connection)

    async def migrate_step(self, target: int) -> Step | None:
        """One step toward ``target`` in one ``BEGIN IMMEDIATE`` transaction."""
        async with self._using("migrate") as connection:
            await connection.execute_fetchall("BEGIN IMMEDIATE")
            await connection.execute_fetchall(VERSION_TABLE_DDL["sqlite"])
            step = next_step("sqlite", await _version(connection), target, self.label)
            if step is None:
                await connection.execute_fetchall("COMMIT")
                return None
            for statement in step.statements:
                await connection.execute_fetchall(statement)
            await connection.execute_fetchall(f"DELETE FROM {VERSION_TABLE}")
            await connection.execute_fetchall(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (step.to_version,))
            await connection.execute_fetchall("COMMIT")
            return step

    async def row_counts(self) -> dict[str, int]:
        """The rows of each of canaryws's tables, those that exist."""
        counts = {}
        async with self._using("count rows") as connection:
            for relation in TABLES:
                if await _exists(connection, relation):
                    (row,) = await connection.execute_fetchall(f"SELECT count(*) FROM {relation}")
                    counts[relation] = int(row[0])
        return counts


async def _exists(connection: aiosqlite.Connection, name: str) -> bool:
    rows = await connection.execute_fetchall("SELECT 1 FROM sqlite_master WHERE name = ?", (name,))
    return bool(list(rows))


async def _version(connection: aiosqlite.Connection) -> int:
    if not await _exists(connection, VERSION_TABLE):
        return 0
    (row,) = await connection.execute_fetchall(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")
    return int(row[0])


def _chunks(positions: Sequence[int]) -> list[Sequence[int]]:
    """``positions`` in slices of :data:`CHUNK`."""
    return [positions[at:at + CHUNK] for at in range(0, len(positions), CHUNK)]
