"""``canaryws flags``: show, ramp, enable and disable the cohort flags; archive them; export them.

The commands talk to a :class:`~canaryws.adapters.flags.backend.FlagBackend`, never to a
file directly: with ``UNLEASH_URL`` and ``UNLEASH_ADMIN_TOKEN`` set, the flags of an Unleash
server through its Admin API (project ``UNLEASH_PROJECT`` or ``default``, environment
``UNLEASH_ENVIRONMENT`` or ``development``); otherwise the local flags file (see
:mod:`canaryws.adapters.flags.backend_selection`). ``export`` writes the server's
client-features document to the flags file (the bootstrap;
:mod:`canaryws.adapters.flags.unleash_export`). The ``UNLEASH_*`` variables are read once
per command, by :class:`canaryws.settings.UnleashSettings`.

Exit codes: 0 success, 2 usage errors (unknown flag, bad percent, missing Unleash
settings for ``export``), 1 I/O errors, invalid flags documents (including the one
``archive`` would leave when another flag depends on the archived one), an unreachable
Unleash or one that rejects the token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from canaryws.adapters.flags.backend import FlagBackend, FlagChange, FlagListing, problem_notes
from canaryws.adapters.flags.backend_selection import select_backend
from canaryws.adapters.flags.engine import FlagSnapshot, assess
from canaryws.adapters.flags.file_store import write_document_atomic
from canaryws.adapters.flags.unleash_admin import UnleashAdmin
from canaryws.adapters.flags.unleash_backend import UnleashAdminBackend
from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.flags.unleash_export import fetch_client_document
from canaryws.core.cohorts import STRICT_FLAG
from canaryws.core.flagdoc import FlagEditError, FlagsDocumentError
from canaryws.settings import DEFAULT_FLAGS, FLAGS_ENVVAR, UNLEASH_API_TOKEN, UNLEASH_URL, UnleashSettings

DEFAULT_STRATEGY_ENVVAR = "CANARYWS_DEFAULT_STRATEGY"  # the service's strategy while records.strict is absent


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
    except UnleashError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or 'flags'}: {exc.strerror or exc}") from None


def _percent(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """PERCENT: an integer from 0 to 100, optionally written with a trailing ``%``."""
    text = value.strip().removesuffix("%")
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        raise click.BadParameter(f"{value!r} is not a whole percent from 0 to 100", ctx, param)
    return int(text)


_FLAGS_HELP = (
    "The flags file (Unleash client-features JSON). Not used when UNLEASH_URL and "
    "UNLEASH_ADMIN_TOKEN are set: the Unleash server wins, with a note on stderr."
)


def _flags_option(help: str = _FLAGS_HELP) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--flags PATH`` option every flags command takes."""
    return click.option(
        "--flags",
        "flags_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_FLAGS,
        envvar=FLAGS_ENVVAR,
        show_default=True,
        show_envvar=True,
        help=help,
    )


def _open_backend(flags_path: Path) -> FlagBackend:
    """The backend of the ``UNLEASH_*`` variables, telling the operator on stderr when it may
    not be what they expect."""
    settings = UnleashSettings.from_env()
    backend = select_backend(flags_path, settings)
    ctx = click.get_current_context(silent=True)
    explicit = ctx is not None and ctx.get_parameter_source("flags_path") is click.core.ParameterSource.COMMANDLINE
    if isinstance(backend, UnleashAdminBackend):
        if explicit:
            click.echo(
                f"note: --flags {flags_path} is not used: UNLEASH_URL and UNLEASH_ADMIN_TOKEN are set, so the "
                f"flags are those of {backend.where} (unset them to use the file)",
                err=True,
            )
    elif settings.url is not None:
        click.echo(
            f"note: UNLEASH_URL is set but UNLEASH_ADMIN_TOKEN is not: using the flags file {flags_path}, "
            "not the Unleash server (a service connected to Unleash follows the server)",
            err=True,
        )
    return backend


@click.group(name="flags")
def flags_group() -> None:
    """Show and change the feature flags (records.strict, records.shadow).

    \b
    Where the flags are:
    - UNLEASH_URL (the API root, e.g. http://127.0.0.1:4242/api) and UNLEASH_ADMIN_TOKEN
      set: on that Unleash server, changed through its Admin API, in project
      UNLEASH_PROJECT (default "default") and environment UNLEASH_ENVIRONMENT (default
      "development"); --flags is then not used (a note says so);
    - otherwise: in the flags file (--flags), which a running service applies within
      about a second.

    The revision shown is the hash of the client-features document (for Unleash: of
    what the environment serves to SDKs, features sorted by name), the same one the
    flags file gets from `canaryws flags export`.
    """


@flags_group.command()
@_flags_option()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def show(flags_path: Path, as_json: bool) -> None:
    """Show every flag: enabled, rollout, strategies, description."""
    with _reported_errors():
        listing = _open_backend(flags_path).describe()
    for note in listing.notes:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        click.echo(json.dumps(_listing_json(listing), indent=2, ensure_ascii=False))
        return
    console = Console(highlight=False)
    scope = [f"project {listing.project}"] if listing.project is not None else []
    scope += [f"environment {listing.environment}"] if listing.environment is not None else []
    scope.append(f"revision {listing.revision}")
    source = "Unleash" if listing.source == "unleash" else listing.source
    console.print(
        f"flags from {source} [bold]{escape(listing.location)}[/bold] ({escape(', '.join(scope))})",
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
@_flags_option()
@click.argument("flag")
@click.argument("percent", metavar="PERCENT", callback=_percent)
def rollout(flags_path: Path, flag: str, percent: int) -> None:
    """Set FLAG's flexibleRollout to PERCENT (0-100) of clients.

    Ramping up never moves a client that already has the flag back off it. On an
    Unleash server this is the flag's flexibleRollout strategy in UNLEASH_ENVIRONMENT;
    a flag without one gets one (stickiness userId, groupId FLAG).
    """
    with _reported_errors():
        change = _open_backend(flags_path).set_rollout(flag, percent)
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
@_flags_option()
@click.argument("flag")
def enable(flags_path: Path, flag: str) -> None:
    """Enable FLAG (its strategies, e.g. the rollout percent, then apply).

    On an Unleash server, enabling a flag without an active strategy makes Unleash
    add its default strategy (a note says which).
    """
    _set_enabled(flags_path, flag, True)


@flags_group.command()
@_flags_option()
@click.argument("flag")
def disable(flags_path: Path, flag: str) -> None:
    """Disable FLAG for everyone: the kill switch."""
    _set_enabled(flags_path, flag, False)


def _set_enabled(flags_path: Path, flag: str, enabled: bool) -> None:
    with _reported_errors():
        change = _open_backend(flags_path).set_enabled(flag, enabled)
    after = _state_text(change.after.enabled)
    if change.changed:
        before = _state_text(change.before.enabled)
        click.echo(f"{flag}: {before} -> {after} {_revisions(change)} in {change.location}")
    else:
        click.echo(f"{flag}: already {after} {_revisions(change)} in {change.location}")
    for note in change.notes:
        click.echo(f"note: {note}", err=True)


@flags_group.command()
@_flags_option()
@click.argument("flag")
def archive(flags_path: Path, flag: str) -> None:
    """Remove FLAG: the clean-up once it is at 100 % (or no longer needed).

    In the flags file, the feature is removed from the document (validated, atomic
    write). On an Unleash server, the flag is archived in UNLEASH_PROJECT, so it leaves
    every environment, not only UNLEASH_ENVIRONMENT (Unleash keeps it in its archive,
    where it can be revived). Refused while another flag depends on FLAG.

    A service then evaluates FLAG as absent: without records.strict, a replica gives
    every client its CANARYWS_DEFAULT_STRATEGY (default lenient); a note says so.
    """
    with _reported_errors():
        archived = _open_backend(flags_path).archive(flag)
    click.echo(f"{flag}: archived (revision {archived.old_revision} -> {archived.new_revision}) in {archived.location}")
    for note in archived.notes:
        click.echo(f"note: {note}", err=True)
    if flag == STRICT_FLAG:
        click.echo(
            f"note: {flag} is archived: replicas without {DEFAULT_STRATEGY_ENVVAR}=strict fall back to the "
            "lenient strategy for every client",
            err=True,
        )


@flags_group.command()
@_flags_option(help="The flags file to write (replaced atomically).")
def export(flags_path: Path) -> None:
    """Write the Unleash server's flags to the flags file (the bootstrap).

    Needs UNLEASH_URL and UNLEASH_API_TOKEN, a client (backend) token for
    UNLEASH_ENVIRONMENT (default "development"). Fetches GET
    $UNLEASH_URL/client/features?project=$UNLEASH_PROJECT (default "default") with it:
    exactly what the service's SDK client gets. Keeps version, that project's features
    (sorted by name) and the segments they use (drops the server's query and meta),
    validates the document like the service does, and replaces the file atomically.
    Problems of single flags are warnings, as in the service; a document a service could
    not start on (records.strict or records.shadow cannot be evaluated as intended) is not
    written.

    With UNLEASH_ADMIN_TOKEN also set, first waits (up to 5 s) until the client API
    serves what the Admin API shows for UNLEASH_PROJECT, so that an export right after
    a change is not one revision behind; the revision printed is then the one `show`
    prints.
    """
    settings = UnleashSettings.from_env()
    url, client_token = settings.url, settings.api_token
    if url is None or client_token is None:
        missing = " and ".join(
            name for name, value in ((UNLEASH_URL, url), (UNLEASH_API_TOKEN, client_token)) if not value
        )
        raise _UsageFailure(
            f"export needs {missing}: the Unleash API root and a client (backend) token for "
            f"environment {settings.environment}"
        )
    with _reported_errors():
        admin = None
        if settings.admin_token is not None:
            admin = UnleashAdmin(url, settings.admin_token, environment=settings.environment, project=settings.project)
        exported = fetch_client_document(url, client_token, environment=settings.environment,
                                         project=settings.project, admin=admin)
        try:
            FlagSnapshot.from_document(exported.document, source="export")  # what a service starting on it does
        except FlagsDocumentError as exc:
            raise FlagsDocumentError(
                [f"not written: {flags_path} is the bootstrap a service starts on", *exc.problems]
            ) from None
        write_document_atomic(flags_path, exported.document)
    count = len(exported.document.data["features"])
    click.echo(
        f"exported {count} flag{'' if count == 1 else 's'} (revision {exported.document.revision}) to {flags_path}"
    )
    for note in exported.notes + problem_notes(assess(exported.document)):
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
    result: dict[str, Any] = {"source": listing.source, "location": listing.location}
    if listing.project is not None:
        result["project"] = listing.project
    if listing.environment is not None:
        result["environment"] = listing.environment
    result["revision"] = listing.revision
    result["flags"] = [dataclasses.asdict(row) for row in listing.flags]
    result["cohort_flags"] = dict(listing.cohort_flags)
    result["problems"] = [problem.as_json() for problem in listing.problems]
    return result
