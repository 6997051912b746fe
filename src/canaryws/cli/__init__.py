"""``canaryws`` command line: serve, token, flags, report, guard."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from canaryws.settings import DEFAULT_DATA_DIR, DEFAULT_FLAGS, Settings

# The commands whose modules are imported only when the command runs (or help lists them):
# ``canaryws serve`` then starts without importing the report's numpy and scipy, the rollout
# controller or the contract tools (about a second of a restart, on the 2-core benchmark VM).
_LAZY_COMMANDS = {
    "contract": ("canaryws.cli.contract", "contract_group"),
    "flags": ("canaryws.cli.flags", "flags_group"),
    "guard": ("canaryws.cli.report", "guard"),
    "probe": ("canaryws.cli.probe", "probe"),
    "report": ("canaryws.cli.report", "report"),
    "rollout": ("canaryws.cli.rollout", "rollout_group"),
    "sink": ("canaryws.cli.sink", "sink_group"),
}


class _LazyGroup(click.Group):
    """A group that imports a command's module when the command is looked up (click's
    documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            module, attribute = _LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command) and command.name == cmd_name, (module, attribute)
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    from canaryws.adapters.server.config import check_shutdown_timeout
    from canaryws.adapters.telemetry.logs import configure_logging
    from canaryws.serve import CannotStart
    from canaryws.serve import serve as run_service

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
        check_shutdown_timeout(settings.shutdown_timeout)
    except ValueError as exc:
        raise click.ClickException(f"CANARYWS_SHUTDOWN_TIMEOUT: {exc}") from None
    configure_logging(level=settings.log_level)
    try:
        status = run_service(settings)
    except CannotStart as exc:
        raise click.ClickException(str(exc)) from None
    if status:
        raise SystemExit(status)


@main.group()
def token() -> None:
    """Client tokens."""  # the commands: canaryws.cli.tokens


def _register_commands() -> None:
    from canaryws.cli.tokens import register

    register(token)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
