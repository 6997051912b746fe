"""What the sink committed, counted per strategy: the downstream side of ``canaryws report --sink``.

Read-only. :func:`committed_counts` counts the rows of ``canaryws_batches`` (one per batch
committed the first time; a replay is no row) whose ``committed_at`` is in a window, per
``strategy``: batches, and accepted, skipped and rejected records; the synthetic rows (a
probe's batches) apart from the clients'. The sink is named as ``canaryws serve`` names it
(``CANARYWS_SINK``: ``sqlite``, ``sqlite:///path``, ``postgresql://...``), parsed by
:func:`canaryws.adapters.sink.url.parse_sink` (``open_sink``'s parser); a URL is only ever
shown redacted (:mod:`canaryws.adapters.sink.redaction`), a driver's message scrubbed.

- SQLite: the stdlib ``sqlite3``, opened read-only (``file:...?mode=ro``): nothing is created
  or written, not even a missing database file.
- PostgreSQL: asyncpg, one connection, a read-only transaction (``asyncio.run`` inside: the
  report is a synchronous command).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from canaryws.adapters.sink.url import SinkTarget

BATCHES_TABLE: Final = "canaryws_batches"
COUNTS: Final = ("batches", "accepted", "skipped", "rejected")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Tally:
    """Batches, and their records by outcome."""

    batches: int = 0
    accepted: int = 0
    skipped: int = 0
    rejected: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.batches + other.batches, self.accepted + other.accepted, self.skipped + other.skipped,
                     self.rejected + other.rejected)

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTS}


@dataclass(frozen=True, slots=True)
class CohortCommitted:
    """One strategy's batches: the clients' (compared), and the synthetic ones (a probe's) apart."""

    clients: Tally = field(default_factory=Tally)
    synthetic: Tally = field(default_factory=Tally)


class SinkReadError(Exception):
    """The sink could not be read (no such database, not migrated, refused, unreachable). Its
    message names the sink by its redacted URL, never with its password."""


def add_rows(rows: Iterable[tuple[str, bool, int, int, int, int]]) -> dict[str, CohortCommitted]:
    """``(strategy, synthetic, batches, accepted, skipped, rejected)`` rows (several per
    strategy allowed) -> per strategy."""
    result: dict[str, CohortCommitted] = {}
    for strategy, synthetic, batches, accepted, skipped, rejected in rows:
        tally = Tally(int(batches), int(accepted or 0), int(skipped or 0), int(rejected or 0))
        current = result.get(strategy, CohortCommitted())
        if synthetic:
            result[strategy] = CohortCommitted(current.clients, current.synthetic + tally)
        else:
            result[strategy] = CohortCommitted(current.clients + tally, current.synthetic)
    return result


def committed_counts(value: str, data_dir: Path, since_ns: int | None, until_ns: int | None) -> dict[
        str, CohortCommitted]:
    """What the sink ``value`` (as ``CANARYWS_SINK`` names it: ``sqlite`` is the file in
    ``data_dir``) committed with ``since_ns <= committed_at <= until_ns`` (either bound may be
    open; SQLite's timestamps have millisecond precision, so its bounds are widened by 1 ms),
    per strategy. :class:`SinkReadError` when it cannot be read; ``ValueError`` for a value
    that names no sink (or ``none``)."""
    target = _target(value, data_dir)
    if target.dialect == "sqlite":
        return _sqlite_counts(target.path, target.label, since_ns, until_ns)
    return asyncio.run(_postgres_counts(target.location, since_ns, until_ns))


def sink_label(value: str, data_dir: Path) -> str:
    """The sink ``value`` names, as it may be shown: ``sqlite:///abs/path`` or the redacted URL."""
    return _target(value, data_dir).label


def _target(value: str, data_dir: Path) -> SinkTarget:
    from canaryws.adapters.sink.url import parse_sink

    target = parse_sink(value, data_dir)
    if target is None:
        raise ValueError("the sink is 'none': there is nothing to count")
    return target


_SELECT: Final = (f"SELECT strategy, synthetic, count(*), sum(accepted_count), sum(skipped_count), "
                  f"sum(rejected_count) FROM {BATCHES_TABLE}")
_GROUP: Final = " GROUP BY strategy, synthetic"
_SQLITE_SLACK_S: Final = 0.001  # committed_at is a REAL of Unix seconds with millisecond precision


def _sqlite_counts(path: Path, label: str, since_ns: int | None, until_ns: int | None) -> dict[str, CohortCommitted]:
    if not path.is_file():
        raise SinkReadError(f"sink {label}: no such database file (the service creates it on its first start)")
    where, parameters = [], []
    if since_ns is not None:
        where.append("committed_at >= ?")
        parameters.append(since_ns / 1e9 - _SQLITE_SLACK_S)
    if until_ns is not None:
        where.append("committed_at <= ?")
        parameters.append(until_ns / 1e9 + _SQLITE_SLACK_S)
    query = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + _GROUP
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as error:
        raise SinkReadError(f"sink {label}: cannot open it read-only: {error}") from None
    try:
        return add_rows(_rows_of(connection.execute(query, parameters).fetchall()))
    except sqlite3.Error as error:
        raise SinkReadError(f"sink {label}: cannot count its batches ({BATCHES_TABLE}): {error}") from None
    finally:
        connection.close()


async def _postgres_counts(url: str, since_ns: int | None, until_ns: int | None) -> dict[str, CohortCommitted]:
    import asyncpg

    from canaryws.adapters.sink.redaction import redacted, scrub

    where, parameters = [], []
    if since_ns is not None:
        parameters.append(_EPOCH + timedelta(microseconds=since_ns // 1000))  # floor to the column's µs
        where.append(f"committed_at >= ${len(parameters)}")
    if until_ns is not None:
        parameters.append(_EPOCH + timedelta(microseconds=-(-until_ns // 1000)))  # ceiling
        where.append(f"committed_at <= ${len(parameters)}")
    query = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + _GROUP
    try:
        connection = await asyncpg.connect(url, timeout=10.0)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as error:
        raise SinkReadError(f"sink {redacted(url)}: cannot connect: {scrub(_text(error), url)}") from None
    try:
        async with connection.transaction(readonly=True):
            records = await connection.fetch(query, *parameters, timeout=60.0)
        return add_rows(_rows_of(records))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        raise SinkReadError(f"sink {redacted(url)}: cannot count its batches ({BATCHES_TABLE}): "
                            f"{scrub(_text(error), url)}") from None
    finally:
        await connection.close()


def _text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _rows_of(records: Iterable[Any]) -> list[tuple[str, bool, int, int, int, int]]:
    return [(str(r[0]), bool(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0), int(r[5] or 0)) for r in records]


__all__ = ["COUNTS", "CohortCommitted", "SinkReadError", "Tally", "add_rows", "committed_counts", "sink_label"]
