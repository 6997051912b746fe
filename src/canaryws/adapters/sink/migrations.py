"""The sink's schema, as versioned migrations with an ``up`` and a ``down`` per dialect.

The version a database is at is the one row of ``canaryws_schema_version`` (``version``,
``applied_at``); no table, or no row, is version 0 (nothing of canaryws). A step moves one
version up or down in one transaction, under a lock that serialises the replicas of a
deployment: PostgreSQL takes ``pg_advisory_xact_lock`` (:data:`ADVISORY_LOCK`), SQLite
``BEGIN IMMEDIATE``. Under the lock the version is read afresh, so replicas that start at
once migrate once, and the step taken is decided by :func:`next_step` from what was read.

- **1** the tables: ``canaryws_idempotency`` (one row per committed ``(client_id, batch_id)``,
  with the stored answer, for replays; purged after the retention) and ``canaryws_batches``
  (one row per batch committed the first time: what downstream reads; canaryws never
  deletes these rows).
- **2** an index on ``canaryws_batches (committed_at)`` (readers take a window) and the view
  ``canaryws_records``: one row per accepted record.

SQLite has no arrays and no ``timestamptz``: ``accepted_indexes`` and ``accepted_values``
are JSON arrays (text), ``committed_at`` is Unix time in seconds (a REAL, millisecond
precision: ``datetime(committed_at, 'unixepoch')`` reads it), ``synthetic`` is 0 or 1.

``canaryws sink migrate --to N`` moves a database down (or up) to ``N``; a database whose
version is higher than :data:`LATEST` was migrated by a newer release, and this one refuses
it (:class:`SchemaTooNew`): only the release that applied a migration knows its ``down``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol

if TYPE_CHECKING:
    from canaryws.adapters.sink.postgres import PostgresSink
    from canaryws.adapters.sink.sqlite import SqliteSink

Dialect = Literal["postgresql", "sqlite"]

VERSION_TABLE: Final = "canaryws_schema_version"
TABLES: Final = ("canaryws_idempotency", "canaryws_batches")
RECORDS_VIEW: Final = "canaryws_records"
ADVISORY_LOCK: Final = 0x63616E617279  # b"canary": the key of pg_advisory_xact_lock around a step

SQLITE_NOW: Final = "((julianday('now') - 2440587.5) * 86400.0)"
"""Unix time in seconds, as a REAL, in SQLite 3.38+ (``unixepoch('subsec')`` needs 3.42)."""

VERSION_TABLE_DDL: Final[Mapping[Dialect, str]] = {
    "postgresql": f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
                  "version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    "sqlite": f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
              f"version INTEGER NOT NULL, applied_at REAL NOT NULL DEFAULT {SQLITE_NOW})",
}


@dataclass(frozen=True, slots=True)
class Migration:
    """One version of the schema: the statements that reach it from the previous version
    (``up``) and those that go back (``down``), per dialect."""

    version: int
    description: str
    up: Mapping[Dialect, tuple[str, ...]]
    down: Mapping[Dialect, tuple[str, ...]]


_BATCH_COLUMNS_PG: Final = """
    client_id text NOT NULL,
    batch_id text NOT NULL,
    connection_id text NOT NULL,
    strategy text NOT NULL,
    strategy_version integer NOT NULL,
    flags_revision text NOT NULL,
    synthetic boolean NOT NULL,
    accepted_count integer NOT NULL,
    skipped_count integer NOT NULL,
    rejected_count integer NOT NULL,
    accepted_indexes integer[] NOT NULL,
    accepted_values text[] NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()"""

_BATCH_COLUMNS_SQLITE: Final = f"""
    client_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    strategy TEXT NOT NULL,
    strategy_version INTEGER NOT NULL,
    flags_revision TEXT NOT NULL,
    synthetic INTEGER NOT NULL CHECK (synthetic IN (0, 1)),
    accepted_count INTEGER NOT NULL,
    skipped_count INTEGER NOT NULL,
    rejected_count INTEGER NOT NULL,
    accepted_indexes TEXT NOT NULL,
    accepted_values TEXT NOT NULL,
    committed_at REAL NOT NULL DEFAULT {SQLITE_NOW}"""

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1, "tables canaryws_idempotency, canaryws_batches",
        up={
            "postgresql": (
                "CREATE TABLE canaryws_idempotency ("
                " client_id text NOT NULL, batch_id text NOT NULL,"
                " committed_at timestamptz NOT NULL DEFAULT now(), answer text NOT NULL,"
                " PRIMARY KEY (client_id, batch_id))",
                "CREATE INDEX canaryws_idempotency_committed_at ON canaryws_idempotency (committed_at)",
                "CREATE TABLE canaryws_batches ("
                f" seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,{_BATCH_COLUMNS_PG})",
            ),
            "sqlite": (
                "CREATE TABLE canaryws_idempotency ("
                " client_id TEXT NOT NULL, batch_id TEXT NOT NULL,"
                f" committed_at REAL NOT NULL DEFAULT {SQLITE_NOW}, answer TEXT NOT NULL,"
                " PRIMARY KEY (client_id, batch_id))",
                "CREATE INDEX canaryws_idempotency_committed_at ON canaryws_idempotency (committed_at)",
                f"CREATE TABLE canaryws_batches (seq INTEGER PRIMARY KEY AUTOINCREMENT,{_BATCH_COLUMNS_SQLITE})",
            ),
        },
        down={
            "postgresql": ("DROP TABLE canaryws_batches", "DROP TABLE canaryws_idempotency"),
            "sqlite": ("DROP TABLE canaryws_batches", "DROP TABLE canaryws_idempotency"),
        },
    ),
    Migration(
        2, "view canaryws_records, index on canaryws_batches (committed_at)",
        up={
            "postgresql": (
                "CREATE INDEX canaryws_batches_committed_at ON canaryws_batches (committed_at)",
                "CREATE VIEW canaryws_records AS"
                " SELECT b.seq AS batch_seq, b.client_id, b.batch_id, r.record_index, r.value,"
                " b.strategy, b.strategy_version, b.committed_at"
                " FROM canaryws_batches b"
                " CROSS JOIN LATERAL unnest(b.accepted_indexes, b.accepted_values) AS r(record_index, value)",
            ),
            "sqlite": (
                "CREATE INDEX canaryws_batches_committed_at ON canaryws_batches (committed_at)",
                "CREATE VIEW canaryws_records AS"
                " SELECT b.seq AS batch_seq, b.client_id, b.batch_id, i.value AS record_index, v.value AS value,"
                " b.strategy, b.strategy_version, b.committed_at"
                " FROM canaryws_batches b, json_each(b.accepted_indexes) i"
                " JOIN json_each(b.accepted_values) v ON v.key = i.key",
            ),
        },
        down={
            "postgresql": ("DROP VIEW canaryws_records", "DROP INDEX canaryws_batches_committed_at"),
            "sqlite": ("DROP VIEW canaryws_records", "DROP INDEX canaryws_batches_committed_at"),
        },
    ),
)

LATEST: Final = MIGRATIONS[-1].version
_BY_VERSION: Final = {migration.version: migration for migration in MIGRATIONS}
assert sorted(_BY_VERSION) == list(range(1, LATEST + 1)), "migrations are numbered 1, 2, ... without gaps"


class SchemaTooNew(Exception):
    """The database's schema is at a version this release does not know: a newer release
    migrated it. Roll back by migrating down with that release first."""

    def __init__(self, label: str, version: int) -> None:
        super().__init__(
            f"sink {label}: its schema is at version {version}, newer than this release knows ({LATEST}); "
            f"migrate it down with the release that applied it: canaryws sink migrate --to {LATEST}")
        self.version = version


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a migration: from one version to the next (up) or the previous (down)."""

    from_version: int
    to_version: int
    description: str
    statements: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.from_version} → {self.to_version} ({self.description})"


def next_step(dialect: Dialect, current: int, target: int, label: str) -> Step | None:
    """The step from ``current`` toward ``target``, or None when there already. Raises
    :class:`SchemaTooNew` when ``current`` is beyond :data:`LATEST` (whatever the target)."""
    if current > LATEST:
        raise SchemaTooNew(label, current)
    if current < target:
        migration = _BY_VERSION[current + 1]
        return Step(current, current + 1, migration.description, migration.up[dialect])
    if current > target:
        migration = _BY_VERSION[current]
        return Step(current, current - 1, f"undo: {migration.description}", migration.down[dialect])
    return None


def check_target(to: int | None) -> int:
    """``to`` as a version to migrate to (None: :data:`LATEST`); ValueError outside 0..LATEST."""
    if to is None:
        return LATEST
    if not 0 <= to <= LATEST:
        raise ValueError(f"no schema version {to}: this release knows versions 0 to {LATEST}")
    return to


class Migratable(Protocol):
    """What a sink adapter offers to migrate its database (``SqliteSink``, ``PostgresSink``)."""

    name: str

    @property
    def label(self) -> str:
        """The sink as shown to people: its redacted URL."""

    async def connect(self) -> None:
        """Connect (without migrating); raises ``SinkUnavailable``."""

    async def schema_version(self) -> int:
        """The version the database is at (0 when canaryws never migrated it)."""

    async def migrate_step(self, target: int) -> Step | None:
        """Under the migration lock, in one transaction: read the version, take
        :func:`next_step` toward ``target`` and record its new version. None when at ``target``."""

    async def close(self) -> None: ...


async def current_version(sink: Migratable) -> int:
    """The schema version of ``sink``'s database (connecting first when needed)."""
    await sink.connect()
    return await sink.schema_version()


async def migrate(sink_or_url: Migratable | str, to: int | None = None, *,
                  data_dir: Path | None = None) -> list[Step]:
    """Migrate up or down to version ``to`` (None: :data:`LATEST`), one locked step at a time;
    the steps done, in order (none when the database is at ``to`` already).

    ``sink_or_url`` is a sink adapter, or a ``CANARYWS_SINK`` value (``sqlite`` is the file in
    ``data_dir``, by default the service's): that sink is opened for the migration and closed
    afterwards. Raises ``ValueError`` for a version outside 0..LATEST or a value that names no
    sink, :class:`SchemaTooNew`, and ``SinkUnavailable`` when the database cannot be reached
    (the steps done before it stay done)."""
    target = check_target(to)
    if isinstance(sink_or_url, str):
        sink = _open(sink_or_url, data_dir)
        try:
            return await migrate(sink, target)
        finally:
            await sink.close()
    await sink_or_url.connect()
    steps = []
    while (step := await sink_or_url.migrate_step(target)) is not None:
        steps.append(step)
    return steps


def _open(value: str, data_dir: Path | None) -> PostgresSink | SqliteSink:
    # Imported here: the adapters import this module for the schema.
    from canaryws.adapters.sink.url import open_sink
    from canaryws.settings import DEFAULT_DATA_DIR

    sink = open_sink(value, DEFAULT_DATA_DIR if data_dir is None else data_dir)
    if sink is None:
        raise ValueError("the sink is 'none': there is no database to migrate")
    return sink
