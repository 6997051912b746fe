"""``canaryws`` command line: serve, token, flags, report, guard."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from canaryws.settings import DEFAULT_DATA_DIR, DEFAULT_FLAGS, Settings


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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes sharing the port (default 1: serve in this process).",
)
def serve(
    host: str | None,
    port: int | None,
    flags_path: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    shutdown_timeout: float | None,
    workers: int | None,
) -> None:
    """Run the service (uvicorn) on the embedded flags file."""
    from canaryws.adapters.telemetry.logs import configure_logging
    from canaryws.cli import serving
    from canaryws.cli import workers as multi

    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            flags_path=flags_path,
            data_dir=data_dir,
            log_level=log_level,
            shutdown_timeout=shutdown_timeout,
            workers=workers,
        )
    except ValueError as exc:
        raise click.ClickException(f"cannot start: invalid configuration: {exc}") from None
    try:
        serving.check_shutdown_timeout(settings.shutdown_timeout)
    except ValueError as exc:
        raise click.ClickException(f"CANARYWS_SHUTDOWN_TIMEOUT: {exc}") from None
    configure_logging(level=settings.log_level)
    if settings.workers > 1:
        # The shared on-disk state is prepared here, once; each worker builds the service itself.
        with _cannot_start(settings):
            multi.prepare_shared_state(settings)
        try:
            sock = multi.listen(settings)
        except OSError as exc:
            raise click.ClickException(
                f"cannot start: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from None
        status = multi.Supervisor(settings, sock).run()
        if status:
            raise SystemExit(status)
        return
    from canaryws.app import build_service

    with _cannot_start(settings):
        service = build_service(settings)
    drain = serving.ConnectionDrain(service.asgi)
    serving.run(serving.uvicorn_config(drain, settings, service.records.refused), drain, settings.shutdown_timeout)


@contextlib.contextmanager
def _cannot_start(settings: Settings) -> Iterator[None]:
    """A bad flags document, revocation list or admin credential: a clear "cannot start"."""
    from canaryws.cli.workers import startup_error

    try:
        yield
    except Exception as exc:
        message = startup_error(exc, settings)
        if message is None:
            raise
        raise click.ClickException(message) from None


@main.group()
def token() -> None:
    """Client tokens."""  # the commands: canaryws.cli.tokens


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
