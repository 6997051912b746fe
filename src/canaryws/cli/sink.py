"""``canaryws sink``: the persist step's database: migrate its schema, show its state (docs/sink.md).

The sink is named as ``canaryws serve`` names it: ``--sink`` or ``CANARYWS_SINK`` (``sqlite``,
the default, is ``<data-dir>/sink.sqlite3``; ``sqlite:///path``; ``postgresql://...``). A URL is
only ever printed with its password hidden.

Exit codes: 0 success; 1 the database cannot be reached, or its schema is newer than this
release knows; 2 a usage error (a value that names no sink, ``none``, a version this release
does not know).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from canaryws.settings import DEFAULT_DATA_DIR

if TYPE_CHECKING:  # the drivers load only when a sink command runs
    from canaryws.adapters.sink.migrations import Step
    from canaryws.adapters.sink.postgres import PostgresSink
    from canaryws.adapters.sink.sqlite import SqliteSink

SINK_ENVVAR = "CANARYWS_SINK"
DATA_DIR_ENVVAR = "CANARYWS_DATA_DIR"
EXIT_USAGE = 2

Result = TypeVar("Result")


class _UsageFailure(click.ClickException):
    """A usage error without the usage text: exit code 2."""

    exit_code = EXIT_USAGE


@click.group("sink")
def sink_group() -> None:
    """The persist step's database: its schema and state (docs/sink.md)."""


def _sink_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar=DATA_DIR_ENVVAR,
        default=DEFAULT_DATA_DIR, show_default=True,
        help=f"Where the 'sqlite' sink keeps sink.sqlite3 (or ${DATA_DIR_ENVVAR}).")(command)
    return click.option(
        "--sink", "value", envvar=SINK_ENVVAR, default="sqlite", show_default=True, metavar="SINK",
        help=f"The sink, as the service names it (or ${SINK_ENVVAR}): sqlite, sqlite:///absolute/path.db, "
             "sqlite:relative/path.db or postgresql://...")(command)


@sink_group.command("migrate")
@_sink_options
@click.option("--to", "to", type=int, default=None, metavar="VERSION",
              help="Migrate up or down to this schema version (default: the latest this release knows); "
                   "0 removes canaryws's tables.")
def migrate_command(value: str, data_dir: Path, to: int | None) -> None:
    """Migrate the sink's schema up (or down, with --to) one step at a time; print each step.

    The service migrates up at its start; before deploying an older release, migrate down
    with this (newer) release: canaryws sink migrate --to N."""
    from canaryws.adapters.sink.migrations import LATEST, migrate

    if to is not None and not 0 <= to <= LATEST:
        raise _UsageFailure(f"--to {to}: this release knows schema versions 0 to {LATEST}")
    sink = _sink(value, data_dir)

    async def run() -> tuple[list[Step], int]:
        steps = await migrate(sink, to)
        return steps, await sink.schema_version()

    steps, version = _run(sink, run)
    for step in steps:
        click.echo(f"sink {sink.label}: {step}")
    if not steps:
        click.echo(f"sink {sink.label}: at version {version} already")


@sink_group.command("status")
@_sink_options
def status_command(value: str, data_dir: Path) -> None:
    """The schema version of the sink's database against this release's latest, and the rows of its tables."""
    from canaryws.adapters.sink.migrations import LATEST, current_version
    from canaryws.adapters.sink.sqlite import SqliteSink

    sink = _sink(value, data_dir)
    if isinstance(sink, SqliteSink) and not sink.path.exists():  # status creates nothing
        click.echo(f"sink {sink.label}\nno database file yet: the service creates it at its start, "
                   "or canaryws sink migrate")
        return

    async def run() -> tuple[int, dict[str, int]]:
        version = await current_version(sink)
        return version, await sink.row_counts()

    version, counts = _run(sink, run)
    click.echo(f"sink {sink.label}")
    if version > LATEST:
        state = "newer than this release: migrate down with the release that applied it"
    elif version < LATEST:
        state = "behind: the service migrates it up at its start, or canaryws sink migrate"
    else:
        state = "up to date"
    click.echo(f"schema version {version} (this release's latest: {LATEST}): {state}")
    for table, rows in counts.items():
        click.echo(f"{table} {rows} rows")


def _sink(value: str, data_dir: Path) -> PostgresSink | SqliteSink:
    from canaryws.adapters.sink.url import open_sink

    try:
        sink = open_sink(value, data_dir)
    except ValueError as exc:
        raise _UsageFailure(str(exc)) from None
    if sink is None:
        raise _UsageFailure("the sink is 'none': there is no database (set --sink or CANARYWS_SINK)")
    return sink


def _run(sink: PostgresSink | SqliteSink, work: Callable[[], Awaitable[Result]]) -> Result:
    """``work()`` on the sink, which is closed afterwards; its failures as the CLI reports them."""
    from canaryws.adapters.sink.migrations import SchemaTooNew
    from canaryws.core.sink import SinkUnavailable

    async def main() -> Result:
        try:
            return await work()
        finally:
            await sink.close()

    try:
        return asyncio.run(main())
    except SinkUnavailable as exc:
        raise click.ClickException(exc.detail) from None
    except SchemaTooNew as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise _UsageFailure(str(exc)) from None
