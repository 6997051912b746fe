"""``canaryws`` command line: serve, token, flags, report, guard."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from canaryws.settings import DEFAULT_DATA_DIR, DEFAULT_FLAGS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="canaryws")
def main() -> None:
    """canaryws: WebSocket record processing with flag-gated canary cohorts."""


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option(
    "--flags",
    "flags_path",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Flags document (default {DEFAULT_FLAGS}).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Secret, trace file (default ./{DEFAULT_DATA_DIR}).",
)
@click.option("--log-level", default=None, help="Log level (default INFO).")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Longest time from SIGTERM/SIGINT to exit (default 10).",
)
def serve(
    host: str | None,
    port: int | None,
    flags_path: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    shutdown_timeout: float | None,
) -> None:
    """Run the service (uvicorn) on the embedded flags file."""
    import uvicorn

    from canaryws.adapters.admin import AdminKeyError
    from canaryws.adapters.revocation import RevocationFileError
    from canaryws.adapters.telemetry.logs import configure_logging
    from canaryws.app import build_service
    from canaryws.cli import serving
    from canaryws.core.flagdoc import FlagsDocumentError
    from canaryws.settings import Settings

    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            flags_path=flags_path,
            data_dir=data_dir,
            log_level=log_level,
            shutdown_timeout=shutdown_timeout,
        )
    except ValueError as exc:
        raise click.ClickException(f"cannot start: invalid configuration: {exc}") from None
    try:
        serving.check_shutdown_timeout(settings.shutdown_timeout)
    except ValueError as exc:
        raise click.ClickException(f"CANARYWS_SHUTDOWN_TIMEOUT: {exc}") from None
    configure_logging(level=settings.log_level)
    try:
        service = build_service(settings)
    except FlagsDocumentError as exc:
        raise click.ClickException(f"cannot start: flags document {settings.flags_path}: {exc}") from None
    except (RevocationFileError, AdminKeyError) as exc:
        raise click.ClickException(f"cannot start: {exc}") from None
    drain = serving.ConnectionDrain(service.asgi)
    config = uvicorn.Config(
        drain,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.per_message_deflate,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
    )
    serving.run(config, drain, settings.shutdown_timeout)


@main.group()
def token() -> None:
    """Client tokens."""


@token.command("issue")
@click.argument("client_id")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Where the server secret lives (default ./{DEFAULT_DATA_DIR}).",
)
@click.option("--ttl", type=int, default=None, help="Lifetime in seconds (default 30 days).")
def token_issue(client_id: str, data_dir: Path | None, ttl: int | None) -> None:
    """Print a token proving CLIENT_ID to a service using the same data dir."""
    from canaryws.adapters.auth import InvalidClientId, TokenAuthority
    from canaryws.settings import Settings

    settings = Settings.from_env(data_dir=data_dir)
    authority = TokenAuthority.from_data_dir(settings.data_dir, settings.token_ttl_seconds)
    try:
        value = authority.issue(client_id, ttl_seconds=ttl)
    except InvalidClientId as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"# token for client {client_id!r}, valid {ttl or settings.token_ttl_seconds} s", err=True)
    click.echo(value)


def _register_commands() -> None:
    from canaryws.cli.flags import flags_group
    from canaryws.cli.report import guard, report
    from canaryws.cli.tokens import register

    register(token)
    main.add_command(flags_group)
    main.add_command(report)
    main.add_command(guard)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
