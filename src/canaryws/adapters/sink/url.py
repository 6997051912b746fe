"""``CANARYWS_SINK``: which database the persist step writes to, and how it is shown.

The values (docs/sink.md, "Configuring the sink"):

- ``sqlite``: the embedded default, the file ``<data-dir>/sink.sqlite3``;
- ``sqlite:///absolute/path.db`` or ``sqlite:relative/path.db`` (relative to the current
  directory; ``sqlite:/absolute/path.db`` works too);
- ``postgresql://...`` or ``postgres://...``: any libpq-style URL asyncpg accepts
  (``postgresql://user:password@host:5432/database?sslmode=require``);
- ``none``: no sink (the service answers without persisting).

A PostgreSQL URL may carry a password: it is shown only
:func:`~canaryws.adapters.sink.redaction.redacted` (in logs, errors, ``repr`` and the CLI's
output).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from canaryws.adapters.sink.migrations import Dialect
from canaryws.adapters.sink.postgres import PostgresSink
from canaryws.adapters.sink.redaction import redacted
from canaryws.adapters.sink.sqlite import SqliteSink
from canaryws.core.sink import SINK_NONE, Sink

SQLITE: Final = "sqlite"
SQLITE_FILE: Final = "sink.sqlite3"
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")
EXPECTED: Final = "sqlite, sqlite:///absolute/path.db, sqlite:relative/path.db, postgresql://... or none"

_ADAPTERS: Final[tuple[type[Sink], ...]] = (PostgresSink, SqliteSink)  # mypy checks both against the port


@dataclass(frozen=True, slots=True)
class SinkTarget:
    """A parsed ``CANARYWS_SINK``: the dialect, and where the database is (SQLite: the
    file's absolute path; PostgreSQL: the URL as given, with its password: never shown,
    :attr:`label` is)."""

    dialect: Dialect
    location: str = field(repr=False)

    @property
    def path(self) -> Path:
        """The SQLite database file."""
        if self.dialect != "sqlite":
            raise ValueError(f"{self.label} is not an SQLite sink")
        return Path(self.location)

    @property
    def label(self) -> str:
        """The sink for people: ``sqlite:///path`` or the redacted URL."""
        return f"sqlite://{self.location}" if self.dialect == "sqlite" else redacted(self.location)

    def __repr__(self) -> str:
        return f"SinkTarget({self.label!r})"


def parse_sink(value: str, data_dir: Path) -> SinkTarget | None:
    """``value`` of ``CANARYWS_SINK`` as a :class:`SinkTarget` (None for ``none``); a
    ``ValueError`` that says the accepted values for anything else."""
    text = value.strip()
    if text.lower() == SINK_NONE:
        return None
    if text.lower() == SQLITE:
        return SinkTarget("sqlite", str((data_dir / SQLITE_FILE).absolute()))
    if text.lower().startswith(POSTGRES_SCHEMES):
        return SinkTarget("postgresql", text)
    if text.lower().startswith(SQLITE + ":"):
        rest = text[len(SQLITE) + 1:]
        if rest.startswith("//"):  # sqlite:///absolute/path: an empty authority, then the path
            rest = rest[2:]
            if not rest.startswith("/"):
                raise ValueError(f"CANARYWS_SINK {redacted(text)!r}: sqlite:// takes an absolute path after an empty "
                                 "host (sqlite:///absolute/path.db); a relative path is sqlite:relative/path.db")
        if not rest or rest.endswith("/"):
            raise ValueError(f"CANARYWS_SINK {redacted(text)!r}: no database file named")
        return SinkTarget("sqlite", str(Path(rest).absolute()))
    raise ValueError(f"CANARYWS_SINK {redacted(text)!r} names no sink: expected {EXPECTED}")


def open_sink(value: str, data_dir: Path, *, timeout: float = 5.0) -> PostgresSink | SqliteSink | None:
    """The sink adapter ``value`` names, not yet opened (``await sink.open()`` connects and
    migrates); None for ``none``. ``timeout``: the seconds a connection attempt, a statement
    or a wait for a lock may take before the sink counts as unavailable. ``ValueError`` for a
    value that names no sink."""
    target = parse_sink(value, data_dir)
    if target is None:
        return None
    if target.dialect == "sqlite":
        return SqliteSink(target.path, timeout=timeout)
    return PostgresSink(target.location, timeout=timeout)


__all__ = ["EXPECTED", "SQLITE_FILE", "SinkTarget", "open_sink", "parse_sink", "redacted"]
