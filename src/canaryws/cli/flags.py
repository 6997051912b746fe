"""``canaryws flags``: show, ramp, enable and disable the cohort flags.

The commands talk to a :class:`FlagBackend`, never to a file directly: today the
backend is the local flags file (:class:`FileFlagBackend`); an Unleash Admin API
backend, selected by environment variables, can be added in :func:`open_backend`
without touching the commands.

Exit codes: 0 success, 2 usage errors (unknown flag, bad percent), 1 I/O errors and
invalid flags documents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from canaryws.adapters.flags.file_store import read_document, update_document
from canaryws.core.flagdoc import (
    FLEXIBLE_ROLLOUT,
    FlagEditError,
    FlagRow,
    FlagsDocument,
    FlagsDocumentError,
    describe,
    with_enabled,
    with_rollout,
)

DEFAULT_FLAGS_PATH = Path("flags/features.json")
FLAGS_ENVVAR = "CANARYWS_FLAGS"


# ----------------------------------------------------------------------- backends


@dataclass(frozen=True, slots=True)
class FlagListing:
    """All flags of a backend at one revision."""

    source: str  # "file", later "unleash"
    location: str  # the file path or the server URL
    revision: str
    flags: tuple[FlagRow, ...]


@dataclass(frozen=True, slots=True)
class FlagChange:
    """The outcome of one mutation: the flag before and after, and the revisions."""

    flag: str
    before: FlagRow
    after: FlagRow
    old_revision: str
    new_revision: str
    location: str
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.old_revision != self.new_revision


class FlagBackend(Protocol):
    """Where the flags live. Raise FlagEditError for requests that cannot apply (unknown
    flag, bad percent) and FlagsDocumentError for unreadable or invalid flags."""

    @property
    def location(self) -> str: ...

    def describe(self) -> FlagListing: ...

    def set_rollout(self, flag: str, percent: int) -> FlagChange: ...

    def set_enabled(self, flag: str, enabled: bool) -> FlagChange: ...


class FileFlagBackend:
    """The local flags file, edited atomically under a lock (see ``file_store``)."""

    source = "file"

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def location(self) -> str:
        return str(self._path)

    def describe(self) -> FlagListing:
        doc = read_document(self._path)
        return FlagListing(self.source, self.location, doc.revision, tuple(describe(doc)))

    def set_rollout(self, flag: str, percent: int) -> FlagChange:
        old, new = update_document(self._path, lambda doc: with_rollout(doc, flag, percent))
        notes = []
        feature = new.feature(flag) or {}
        others = sorted({s.get("name", "?") for s in feature.get("strategies", [])} - {FLEXIBLE_ROLLOUT})
        if others:
            notes.append(
                f"{flag} also has {', '.join(others)} strateg{'ies' if len(others) > 1 else 'y'}; "
                "Unleash turns a flag on when any strategy matches"
            )
        return self._change(flag, old, new, tuple(notes))

    def set_enabled(self, flag: str, enabled: bool) -> FlagChange:
        old, new = update_document(self._path, lambda doc: with_enabled(doc, flag, enabled))
        return self._change(flag, old, new)

    def _change(self, flag: str, old: FlagsDocument, new: FlagsDocument, notes: tuple[str, ...] = ()) -> FlagChange:
        return FlagChange(
            flag=flag,
            before=_row(old, flag),
            after=_row(new, flag),
            old_revision=old.revision,
            new_revision=new.revision,
            location=self.location,
            notes=notes,
        )


def _row(doc: FlagsDocument, flag: str) -> FlagRow:
    for row in describe(doc):
        if row.name == flag:
            return row
    raise FlagEditError(f"unknown flag {flag!r}")  # pragma: no cover - the edit checked it


def open_backend(flags_path: Path) -> FlagBackend:
    """The backend the commands use (the place to select an Unleash Admin API backend)."""
    return FileFlagBackend(flags_path)


# ----------------------------------------------------------------------- commands


class _UsageFailure(click.ClickException):
    """A usage error without the usage text (unknown flag, bad percent): exit code 2."""

    exit_code = 2


@contextlib.contextmanager
def _reported_errors() -> Iterator[None]:
    try:
        yield
    except FlagEditError as exc:
        raise _UsageFailure(str(exc)) from None
    except FlagsDocumentError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'flags'}: {exc.strerror or exc}") from None


def _percent(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """PERCENT: an integer from 0 to 100, optionally written with a trailing ``%``."""
    text = value.strip().removesuffix("%")
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        raise click.BadParameter(f"{value!r} is not a whole percent from 0 to 100", ctx, param)
    return int(text)


def _flags_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--flags",
        "flags_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_FLAGS_PATH,
        envvar=FLAGS_ENVVAR,
        show_default=True,
        show_envvar=True,
        help="The flags file (Unleash client-features JSON).",
    )(command)


@click.group(name="flags")
def flags_group() -> None:
    """Show and change the feature flags (records.strict, records.shadow).

    A running service applies changes to the flags file within about a second.
    """


@flags_group.command()
@_flags_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def show(flags_path: Path, as_json: bool) -> None:
    """Show every flag: enabled, rollout, strategies, description."""
    with _reported_errors():
        listing = open_backend(flags_path).describe()
    if as_json:
        click.echo(json.dumps(_listing_json(listing), indent=2, ensure_ascii=False))
        return
    console = Console(highlight=False)
    console.print(
        f"flags from {listing.source} [bold]{escape(listing.location)}[/bold] (revision {listing.revision})",
        soft_wrap=True,
    )
    table = Table("flag", "enabled", "rollout", "strategies", "description")
    for row in listing.flags:
        table.add_row(
            escape(row.name),
            "yes" if row.enabled else "[red]no[/red]",
            "-" if row.rollout is None else f"{row.rollout}%",
            escape(row.strategies),
            escape(row.description),
        )
    console.print(table)


@flags_group.command()
@_flags_option
@click.argument("flag")
@click.argument("percent", metavar="PERCENT", callback=_percent)
def rollout(flags_path: Path, flag: str, percent: int) -> None:
    """Set FLAG's flexibleRollout to PERCENT (0-100) of clients.

    Ramping up never moves a client that already has the flag back off it.
    """
    with _reported_errors():
        change = open_backend(flags_path).set_rollout(flag, percent)
    before, after = _percent_text(change.before.rollout), _percent_text(change.after.rollout)
    if change.changed:
        click.echo(f"{flag}: rollout {before} -> {after} {_revisions(change)} in {change.location}")
    else:
        click.echo(f"{flag}: rollout already {after} {_revisions(change)} in {change.location}")
    for note in change.notes:
        click.echo(f"note: {note}", err=True)
    if not change.after.enabled:
        click.echo(
            f"note: {flag} is disabled; the rollout takes effect once it is enabled (canaryws flags enable {flag})",
            err=True,
        )


@flags_group.command()
@_flags_option
@click.argument("flag")
def enable(flags_path: Path, flag: str) -> None:
    """Enable FLAG (its strategies, e.g. the rollout percent, then apply)."""
    _set_enabled(flags_path, flag, True)


@flags_group.command()
@_flags_option
@click.argument("flag")
def disable(flags_path: Path, flag: str) -> None:
    """Disable FLAG for everyone: the kill switch."""
    _set_enabled(flags_path, flag, False)


def _set_enabled(flags_path: Path, flag: str, enabled: bool) -> None:
    with _reported_errors():
        change = open_backend(flags_path).set_enabled(flag, enabled)
    after = _state_text(change.after.enabled)
    if change.changed:
        before = _state_text(change.before.enabled)
        click.echo(f"{flag}: {before} -> {after} {_revisions(change)} in {change.location}")
    else:
        click.echo(f"{flag}: already {after} {_revisions(change)} in {change.location}")
    for note in change.notes:
        click.echo(f"note: {note}", err=True)


def _percent_text(percent: int | None) -> str:
    return "none" if percent is None else f"{percent}%"


def _state_text(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


def _revisions(change: FlagChange) -> str:
    if change.changed:
        return f"(revision {change.old_revision} -> {change.new_revision})"
    return f"(revision {change.old_revision}, unchanged)"


def _listing_json(listing: FlagListing) -> dict[str, Any]:
    return {
        "source": listing.source,
        "location": listing.location,
        "revision": listing.revision,
        "flags": [dataclasses.asdict(row) for row in listing.flags],
    }
