"""The PostgreSQL sink: asyncpg, a pool of four connections, one statement per group.

asyncpg speaks PostgreSQL's binary protocol and prepares each statement once per connection.
A whole group is one set-based statement (:data:`_COMMIT`), hence one transaction and one round
trip: the group travels as one JSON document (``jsonb_to_recordset`` makes its rows, arrays
included), the idempotency rows are inserted ``ON CONFLICT DO NOTHING``, a ``canaryws_batches``
row is written for each key that was new, and the statement returns which keys were new and the
stored answers of the others. Nothing is written when it fails.

Why one JSON document rather than a column of arrays per field (``unnest($1::text[], ...)``):
the event loop's share of a commit is what the sink costs the service's throughput, and asyncpg
checks each element of an array parameter against the ``collections.abc`` classes. For a group
of 50 batches of 30 records, the statement with the arrays cost the event loop about 26 µs per
batch, with the document (encoded by msgspec) about 13, for the same work in PostgreSQL. (Nesting each batch's answer in
the document and deriving the batch row from it in SQL saves the event loop 2 to 6 µs more, and
costs PostgreSQL 20 to 50 µs a batch: not worth it while they share a machine.)

PostgreSQL's ``text`` cannot hold the NUL character, which a lenient batch may accept and a
batch id may carry: NUL is stored as U+FFFD in the ids and values of the tables (the stored
answer keeps it escaped, so a replay answers exactly what was sent the first time).

The pool starts empty (``min_size=0``): creating it needs no database, so the service starts
while the database is down and the first commit (or :meth:`PostgresSink.open`) connects. Any
failure to reach or use the database is :class:`~canaryws.core.sink.SinkUnavailable`; a URL
asyncpg cannot parse is a ``ValueError``. Messages never carry the URL's password.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg
import msgspec

from canaryws.adapters.sink.group import RETRY_AFTER, answers_of
from canaryws.adapters.sink.migrations import (
    ADVISORY_LOCK,
    TABLES,
    VERSION_TABLE,
    VERSION_TABLE_DDL,
    Step,
    migrate,
    next_step,
)
from canaryws.adapters.sink.redaction import redacted, scrub
from canaryws.core.sink import NUL, NUL_STORED, Committed, Handoff, SinkUnavailable, encode_answer, first_of_each

POOL_SIZE: Final = 4
"""Connections, and commits in flight. With two, both were busy two thirds of the time (commit
busy 1.30 of 2), so a group often waited for a free connection; with four, 1.45–1.54 of 4. The
benchmark's PostgreSQL / none ratio: 0.55 with two, 0.64 and 0.54 with four (one run of 3 or 5
rounds each, 2026-12-07: within the noise; docs/benchmarks.md)."""
PURGE_CHUNK: Final = 10_000

_COMMIT: Final = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS t(
        position integer, client_id text, batch_id text, answer text, connection_id text, flags_revision text,
        synthetic boolean, strategy text, strategy_version integer, accepted_count integer, skipped_count integer,
        rejected_count integer, accepted_indexes integer[], accepted_values text[])
), new AS (
    INSERT INTO canaryws_idempotency (client_id, batch_id, answer)
    SELECT client_id, batch_id, answer FROM input ORDER BY client_id, batch_id
    ON CONFLICT DO NOTHING
    RETURNING client_id, batch_id
), written AS (
    INSERT INTO canaryws_batches (client_id, batch_id, connection_id, strategy, strategy_version, flags_revision,
                                  synthetic, accepted_count, skipped_count, rejected_count, accepted_indexes,
                                  accepted_values)
    SELECT i.client_id, i.batch_id, i.connection_id, i.strategy, i.strategy_version, i.flags_revision, i.synthetic,
           i.accepted_count, i.skipped_count, i.rejected_count, i.accepted_indexes, i.accepted_values
    FROM input i JOIN new USING (client_id, batch_id)
    ORDER BY i.position
    RETURNING client_id, batch_id
)
SELECT i.position FROM written JOIN input i USING (client_id, batch_id)
"""
"""One statement for a group: its input is the group as one JSON document (:class:`_Row`); it
returns the position of each key that was new.

The keys are inserted in key order: two transactions that share keys take their row locks in
the same order, so neither can hold what the other waits for (no deadlock between replicas).
The stored answers of the keys that were not new (committed before, or by another transaction
while this one waited on them, or two ids of the group that share a key once their NUL is stored
as U+FFFD) are read afterwards by :data:`_STORED`, only when there are any: replays are rare, and
a join of the whole group with ``canaryws_idempotency`` in this statement made PostgreSQL's
cached generic plan scan the table once it had grown (52 ms a commit at 100,000 keys)."""

_STORED: Final = """
SELECT k.position, s.answer
FROM canaryws_idempotency s
JOIN unnest($1::text[], $2::text[], $3::integer[]) AS k(client_id, batch_id, position) USING (client_id, batch_id)
"""


class _Row(msgspec.Struct):
    """One batch of the group's JSON document: the columns of its two rows (its answer is
    :func:`~canaryws.core.sink.encode_answer`'s text)."""

    position: int
    client_id: str
    batch_id: str
    answer: str
    connection_id: str
    flags_revision: str
    synthetic: bool
    strategy: str
    strategy_version: int
    accepted_count: int
    skipped_count: int
    rejected_count: int
    accepted_indexes: list[int]
    accepted_values: list[str]


_encode = msgspec.json.Encoder().encode

_PURGE: Final = """
DELETE FROM canaryws_idempotency WHERE (client_id, batch_id) IN (
    SELECT client_id, batch_id FROM canaryws_idempotency WHERE committed_at < $1 LIMIT $2)
"""

# Reaching or using the database failed: the sink is unavailable. (A URL asyncpg cannot parse
# is a ClientConfigurationError, and a value it cannot encode a DataError: neither is retried.)
_UNAVAILABLE: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresSink:
    """The persist step on PostgreSQL (:class:`~canaryws.core.sink.Sink`)."""

    name = "postgresql"
    concurrency = POOL_SIZE

    def __init__(self, url: str, *, timeout: float = 5.0, pool_size: int = POOL_SIZE) -> None:
        """``url``: a libpq-style URL (never shown: :attr:`label` is); ``timeout``: the seconds
        a connection attempt, a wait for a free connection or a statement may take."""
        self._url = url
        self._timeout = timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opened = False

    @property
    def label(self) -> str:
        """The URL with its password hidden."""
        return redacted(self._url)

    def __repr__(self) -> str:
        return f"PostgresSink({self.label!r})"

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the pool (once) and make sure the database answers; raises SinkUnavailable."""
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._url, min_size=0, max_size=self._pool_size, timeout=self._timeout,
                    max_inactive_connection_lifetime=60.0, reset=_keep_session)
            except asyncpg.ClientConfigurationError as exc:
                raise ValueError(f"sink {self.label}: {scrub(str(exc), self._url)}") from None
        async with self._connection("connect") as connection:
            await connection.fetchval("SELECT 1", timeout=self._timeout)

    async def open(self) -> None:
        """Connect and migrate the schema up to the latest version (the service's start).
        Raises SinkUnavailable (the caller retries) or SchemaTooNew."""
        await self.connect()
        await migrate(self)
        self._opened = True

    async def close(self) -> None:
        """Close the pool: wait for its connections (within the timeout), then cut them."""
        pool, self._pool, self._opened = self._pool, None, False
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._timeout)
        except (TimeoutError, *_UNAVAILABLE):
            pool.terminate()

    @asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """A connection of the pool; what fails while it is used is SinkUnavailable."""
        pool = self._pool
        if pool is None:
            raise SinkUnavailable(f"sink {self.label}: not connected", RETRY_AFTER)
        try:
            async with pool.acquire(timeout=self._timeout) as connection:
                yield connection
        except asyncpg.ClientConfigurationError as exc:
            raise ValueError(f"sink {self.label}: {scrub(str(exc), self._url)}") from None
        except asyncpg.DataError:
            raise
        except _UNAVAILABLE as exc:
            detail = scrub(str(exc), self._url) or f"no answer within {self._timeout:g} s"
            raise SinkUnavailable(f"sink {self.label}: {doing} failed: {type(exc).__name__}: {detail}",
                                  RETRY_AFTER) from None

    async def ping(self) -> None:
        """``SELECT 1``; raises SinkUnavailable."""
        async with self._connection("ping") as connection:
            await connection.fetchval("SELECT 1", timeout=self._timeout)

    # -- the port -----------------------------------------------------------------------

    async def commit(self, handoffs: Sequence[Handoff]) -> list[Committed]:
        """Write the group in one transaction (one statement), or nothing (SinkUnavailable);
        the answers in the group's order (docs/sink.md). When the statement's answer is lost
        (the connection breaks, or the timeout strikes, as it commits) the group may be
        written all the same: SinkUnavailable then, and a retry is answered as replays."""
        if not self._opened:
            raise SinkUnavailable(f"sink {self.label}: not open (schema not migrated yet)", RETRY_AFTER)
        if not handoffs:
            return []
        firsts, positions = first_of_each(handoffs)
        async with self._connection("commit") as connection:
            rows = await connection.fetch(_COMMIT, _document(firsts), timeout=self._timeout)
            new = {row[0] for row in rows}
            stored: dict[int, str] = {}
            if len(new) < len(firsts):  # replays: committed before, or by another transaction meanwhile
                late = [at for at in range(len(firsts)) if at not in new]
                rows = await connection.fetch(_STORED, [_storable(firsts[at].client_id) for at in late],
                                              [_storable(firsts[at].batch_id) for at in late], late,
                                              timeout=self._timeout)
                stored.update((row[0], row[1]) for row in rows)
        return answers_of(firsts, positions, new, stored)

    async def purge(self, retention_seconds: float) -> int:
        """Delete the idempotency keys committed more than ``retention_seconds`` ago, in
        chunks of :data:`PURGE_CHUNK` rows (one short transaction each); how many. Never
        touches ``canaryws_batches``."""
        purged = 0
        async with self._connection("purge") as connection:
            cutoff = await connection.fetchval("SELECT now() - make_interval(secs => $1)", float(retention_seconds),
                                               timeout=self._timeout)
            while True:
                status = await connection.execute(_PURGE, cutoff, PURGE_CHUNK, timeout=self._timeout)
                deleted = int(status.rsplit(" ", 1)[-1])
                purged += deleted
                if deleted < PURGE_CHUNK:
                    return purged

    # -- migrations (canaryws.adapters.sink.migrations) ------------------------------------

    async def schema_version(self) -> int:
        async with self._connection("read the schema version") as connection:
            return await _version(connection)

    async def migrate_step(self, target: int) -> Step | None:
        """One step toward ``target`` in one transaction, under ``pg_advisory_xact_lock``.
        Its statements have no timeout: an index on a large table takes what it takes."""
        async with self._connection("migrate") as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK)
            if await connection.fetchval("SELECT to_regclass($1)", VERSION_TABLE) is None:
                await connection.execute(VERSION_TABLE_DDL["postgresql"])
            step = next_step("postgresql", await _version(connection), target, self.label)
            if step is None:
                return None
            for statement in step.statements:
                await connection.execute(statement)
            await connection.execute(f"DELETE FROM {VERSION_TABLE}")
            await connection.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES ($1)", step.to_version)
            return step

    async def row_counts(self) -> dict[str, int]:
        """The rows of each of canaryws's tables, those that exist."""
        counts = {}
        async with self._connection("count rows") as connection:
            for relation in TABLES:
                if await connection.fetchval("SELECT to_regclass($1)", relation) is not None:
                    counts[relation] = await connection.fetchval(f"SELECT count(*) FROM {relation}",
                                                                 timeout=self._timeout)
        return counts


async def _keep_session(_connection: asyncpg.Connection[Any]) -> None:
    """The pool's reset of a released connection, beyond asyncpg's own (which rolls back a
    transaction left open): nothing, which saves a round trip per commit. The default would
    also reset session settings, listeners, cursors and session advisory locks, and this sink
    uses none of them."""


async def _version(connection: asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    if await connection.fetchval("SELECT to_regclass($1)", VERSION_TABLE) is None:
        return 0
    version = await connection.fetchval(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")
    return int(version)


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL as U+FFFD."""
    return text.replace(NUL, NUL_STORED)


def _document(firsts: Sequence[Handoff]) -> str:
    """The group as :data:`_COMMIT`'s JSON document: one object per batch, in the group's order."""
    rows = [_row(at, h) for at, h in enumerate(firsts)]
    document = _encode(rows)
    if b"\\u0000" in document:  # NUL in a batch (or the text \u0000 in a value: rare either way)
        for row in rows:
            row.client_id, row.batch_id = _storable(row.client_id), _storable(row.batch_id)
            row.connection_id, row.flags_revision = _storable(row.connection_id), _storable(row.flags_revision)
            row.accepted_values = [_storable(value) for value in row.accepted_values]
        document = _encode(rows)  # the answers keep NUL, escaped in their JSON text
    return document.decode()


def _row(position: int, handoff: Handoff) -> _Row:
    outcome = handoff.outcome
    accepted = outcome.accepted
    return _Row(position, handoff.client_id, handoff.batch_id, encode_answer(outcome), handoff.connection_id,
                handoff.flags_revision, handoff.synthetic, outcome.strategy, outcome.strategy_version, len(accepted),
                len(outcome.skipped), len(outcome.rejected), [index for index, _ in accepted],
                [value for _, value in accepted])
