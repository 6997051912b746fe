"""``canaryws token issue``, ``token revoke`` and ``token revoked``: a service's tokens.

``issue`` signs a token with ``<data-dir>/secret.key``; ``revoke`` and ``revoked`` work on
``<data-dir>/revoked.json`` (see :mod:`canaryws.adapters.revocation`): a running service using
that data dir applies a change within about a second, and ends the open connections of revoked
tokens with close code 1008. Token values are never printed.

Every command first checks that the data dir is a service's: it holds the ``secret.key`` that
``canaryws serve`` creates on its first start, owned by this user and private to it. The
default data dir, ``./data``, is relative to the working directory: run from elsewhere, a
command would otherwise sign with a new secret, or write a list, that no service reads.

Exit codes: 0 success (also for an expired token, which needs no revocation), 2 usage
errors, 1 a data dir that is not a service's (or whose secret is unsafe), a token this data
dir's secret did not sign, or an unreadable/unwritable list.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from canaryws.settings import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from canaryws.adapters.auth import TokenAuthority
    from canaryws.settings import Settings


def _when(timestamp: int) -> str:
    from canaryws.adapters.telemetry.logs import iso_utc

    return iso_utc(timestamp, timespec="seconds")


def _settings(data_dir: Path | None) -> Settings:
    from canaryws.settings import Settings

    try:
        return Settings.from_env(data_dir=data_dir)
    except ValueError as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None


def _service_authority(settings: Settings) -> TokenAuthority:
    """The token authority of the service whose data dir ``settings`` names; a
    ClickException (exit 1) when it is no service's data dir or its secret is unsafe.
    Creates nothing."""
    from canaryws.adapters.auth import SECRET_FILE, SecretFileError, TokenAuthority

    directory = settings.data_dir
    if not os.path.lexists(directory / SECRET_FILE):
        where = directory.absolute()
        raise click.ClickException(
            f"{where} is not the data dir of a service: it holds no {SECRET_FILE}, which `canaryws serve` creates "
            f"on its first start. Point at the service's data dir with --data-dir PATH or CANARYWS_DATA_DIR=PATH "
            f"(the default, ./{DEFAULT_DATA_DIR}, is relative to the current directory). Nothing was written."
        )
    try:
        return TokenAuthority.from_data_dir(directory, settings.token_ttl_seconds, create=False)
    except SecretFileError as exc:
        raise click.ClickException(str(exc)) from None


_DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"The service's data dir, with secret.key and revoked.json (default ./{DEFAULT_DATA_DIR}, "
         "or CANARYWS_DATA_DIR).",
)


@click.command("issue")
@click.argument("client_id")
@_DATA_DIR_OPTION
@click.option("--ttl", type=click.IntRange(min=1), default=None,
              help="Lifetime in seconds (default CANARYWS_TOKEN_TTL, 30 days).")
@click.option(
    "--property",
    "properties",
    multiple=True,
    metavar="NAME=VALUE",
    help="A client property flag constraints may use (e.g. clientVersion=2.4.1), signed into the token; "
         "repeatable.",
)
def issue(client_id: str, data_dir: Path | None, ttl: int | None, properties: tuple[str, ...]) -> None:
    """Print a token proving CLIENT_ID (and its --property values) to the service using the data dir."""
    from canaryws.adapters.auth import (
        InvalidClientId,
        InvalidProperty,
        parse_property,
        validate_client_id,
        validate_properties,
    )

    try:
        validate_client_id(client_id)
    except InvalidClientId as exc:
        raise click.BadParameter(str(exc), param_hint="CLIENT_ID") from None
    signed: dict[str, str] = {}
    try:
        for assignment in properties:
            name, value = parse_property(assignment)
            if name in signed:
                raise InvalidProperty(f"property {name} is given twice")
            signed[name] = value
        validate_properties(signed)
    except InvalidProperty as exc:
        raise click.BadParameter(str(exc), param_hint="'--property'") from None
    settings = _settings(data_dir)
    token = _service_authority(settings).issue(client_id, ttl_seconds=ttl, properties=signed)
    shown = "".join(f", {name}={value!r}" for name, value in sorted(signed.items()))
    click.echo(f"# token for client {client_id!r}{shown}, valid {ttl or settings.token_ttl_seconds} s", err=True)
    click.echo(token)


@click.command("revoke")
@click.argument("token", required=False)
@click.option("--client", "client_id", default=None, help="Revoke every token of this client id issued up to now.")
@_DATA_DIR_OPTION
def revoke(token: str | None, client_id: str | None, data_dir: Path | None) -> None:
    """Revoke TOKEN (`-` reads it from stdin, keeping it out of shell history), or with
    --client every token of a client issued up to now (tokens issued afterwards work)."""
    from canaryws.adapters.auth import InvalidClientId, TokenError, validate_client_id
    from canaryws.adapters.revocation import (
        RevocationFileError,
        inspect_token,
        revocations_path,
        revoke_client,
        revoke_token,
        wait_past,
    )

    if (token is None) == (client_id is None):
        raise click.UsageError("give either a TOKEN (or - to read it from stdin) or --client CLIENT_ID")
    settings = _settings(data_dir)
    directory = settings.data_dir
    path = revocations_path(directory)
    try:
        if client_id is not None:
            try:
                validate_client_id(client_id)
            except InvalidClientId as exc:
                raise click.UsageError(str(exc)) from None
            _service_authority(settings)
            cutoff, _ = revoke_client(path, client_id)
            wait_past(cutoff)  # a token issued after this command returns is not caught
            click.echo(f"revoked every token of client {client_id!r} issued up to {_when(cutoff)} ({cutoff}); "
                       "tokens issued from now on work")
            return
        assert token is not None
        value = sys.stdin.read().strip() if token == "-" else token.strip()
        if not value:
            raise click.UsageError("no token given (stdin was empty)")
        authority = _service_authority(settings)
        try:
            presented = inspect_token(authority, value)
        except TokenError as exc:
            raise click.ClickException(f"not a token of the service using {directory}: {exc}") from None
        identity = presented.identity
        if presented.expired:
            click.echo(f"token {identity.token_id or '(no id)'} of client {identity.client_id!r} expired at "
                       f"{_when(identity.expires_at)}: it is refused anyway, so revoking it changes nothing; "
                       "nothing written")
            return
        if not identity.token_id:
            raise click.ClickException(f"the token has no token id (jti); use --client {identity.client_id}")
        entry, _ = revoke_token(path, identity)
        click.echo(f"revoked token {entry.token_id} of client {entry.client_id!r} (it would have expired at "
                   f"{_when(entry.expires_at)})")
    except RevocationFileError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("revoked")
@_DATA_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def revoked(data_dir: Path | None, as_json: bool) -> None:
    """List the revoked tokens (id, client, expiry) and clients; never token values."""
    from canaryws.adapters.revocation import RevocationFileError, read_revocations, revocations_path

    settings = _settings(data_dir)
    _service_authority(settings)
    path = revocations_path(settings.data_dir)
    try:
        current = read_revocations(path)
    except RevocationFileError as exc:
        raise click.ClickException(str(exc)) from None
    tokens = sorted(current.tokens.values(), key=lambda e: (e.revoked_at, e.token_id))
    clients = sorted(current.clients.items())
    if as_json:
        click.echo(json.dumps({
            "path": str(path),
            "tokens": [{"token_id": e.token_id, "client_id": e.client_id, "expires_at": e.expires_at,
                        "revoked_at": e.revoked_at} for e in tokens],
            "clients": [{"client_id": cid, "issued_up_to": at} for cid, at in clients],
        }, indent=2))
        return
    click.echo(f"# {path}", err=True)
    if not tokens and not clients:
        click.echo("nothing revoked")
        return
    if tokens:
        click.echo(f"{'token id':<18} {'client':<30} {'expires':<21} revoked")
        for e in tokens:
            click.echo(f"{e.token_id:<18} {e.client_id:<30} {_when(e.expires_at):<21} {_when(e.revoked_at)}")
    if clients:
        if tokens:
            click.echo()
        click.echo(f"{'client':<40} every token issued up to")
        for cid, at in clients:
            click.echo(f"{cid:<40} {_when(at)}")


def register(group: click.Group) -> None:
    """Add ``issue``, ``revoke`` and ``revoked`` to the ``token`` group."""
    group.add_command(issue)
    group.add_command(revoke)
    group.add_command(revoked)
