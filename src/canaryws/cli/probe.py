"""``canaryws probe``: the synthetic probe (docs/operating.md, "The synthetic probe").

It connects to a service as identities it knows the cohort of, sends the golden batches
(``canaryws/probe/golden/v1.json``) and checks each answer against the contract and against
the golden outcome of the answering ``strategy@version``; it reports what goes wrong by kind.

Exit codes: with ``--once``, 0 when the round passed every check, 1 when it found a failure of
any kind; 2 for a usage error or a setup that cannot work (a data dir without the service's
``secret.key``, an unusable token file, a metrics port that cannot be bound). Without
``--once`` it runs until SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Callable

    from canaryws.probe.runner import Probe, RoundReport

EXIT_FAILED = 1
EXIT_SETUP = 2


class _SetupError(click.ClickException):
    exit_code = EXIT_SETUP


@click.command("probe")
@click.option("--url", required=True, help="The service's WebSocket endpoint, e.g. ws://127.0.0.1:8000/records.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Probe as these identities: one token per line (re-read every round).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The service's data dir: the probe issues its own tokens (probe-<n>, synthetic=true) with its "
                   "secret.key.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="Seconds between the starts of two rounds.")
@click.option("--once", is_flag=True, help="Run one round, print a summary, exit 0 (passed) or 1 (a failure).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics at /metrics on this port (default: none).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint binds (0.0.0.0 for every interface).")
@click.option("--metrics-linger", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="With --once and --metrics-port: keep serving the metrics this long after the round.")
@click.option("--expect-cohort", "expect", type=click.Choice(["strict", "lenient"]), multiple=True,
              help="A cohort the flags in force should fill: finding no identity in it is a failure "
                   "(empty_cohort); repeatable. Otherwise an empty cohort is only reported.")
@click.option("--client-prefix", default="probe", show_default=True,
              help="With --data-dir: the client ids are <prefix>-0, <prefix>-1...")
@click.option("--search-tries", type=click.IntRange(1, 10_000), default=128, show_default=True,
              help="With --data-dir: client ids tried before a cohort is reported empty.")
@click.option("--timeout", "timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="For the handshake with its welcome, and for each answer.")
@click.option("--log-level", default="INFO", show_default=True, help="Log level of the JSON log lines (stderr).")
def probe(url: str, token_file: Path | None, data_dir: Path | None, interval: float, once: bool,
          metrics_port: int | None, metrics_host: str, metrics_linger: float, expect: tuple[str, ...],
          client_prefix: str, search_tries: int, timeout: float, log_level: str) -> None:
    """Probe the service at URL with golden batches, as identities in each cohort; report drift by kind."""
    from canaryws.adapters.telemetry.logs import configure_logging
    from canaryws.probe.golden import load_corpus
    from canaryws.probe.identities import IssuedIdentities, TokenFileError, TokenFileIdentities
    from canaryws.probe.metrics import STRATEGIES, ProbeMetrics
    from canaryws.probe.runner import Probe, ProbeSettings

    if (token_file is None) == (data_dir is None):
        raise click.UsageError("give either --token-file FILE or --data-dir DIR")
    if not url.startswith(("ws://", "wss://")):
        raise click.BadParameter("a ws:// or wss:// URL, e.g. ws://127.0.0.1:8000/records", param_hint="'--url'")
    if metrics_linger and (not once or metrics_port is None):
        raise click.UsageError("--metrics-linger needs --once and --metrics-port")
    try:
        configure_logging(level=log_level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--log-level'") from None

    identities: IssuedIdentities | TokenFileIdentities
    if data_dir is not None:
        identities = IssuedIdentities(_issuer(data_dir), STRATEGIES, prefix=client_prefix, tries=search_tries)
        try:
            identities.candidate(0).token()  # the prefix makes valid client ids
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--client-prefix'") from None
    else:
        assert token_file is not None
        try:
            identities = TokenFileIdentities(token_file)
        except TokenFileError as exc:
            raise _SetupError(str(exc)) from None

    metrics = ProbeMetrics.create()
    metrics.interval.set(0 if once else interval)
    if metrics_port is not None:
        try:
            metrics.serve(metrics_host, metrics_port)
        except OSError as exc:
            raise _SetupError(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}") from None
    settings = ProbeSettings(url, open_timeout=timeout, answer_timeout=timeout, expect=expect)
    runner = Probe(settings, load_corpus(), identities, metrics)
    try:
        status = asyncio.run(_main(runner, interval, once, metrics_linger))
    finally:
        metrics.close()
    sys.exit(status)


def _issuer(data_dir: Path) -> Callable[[str], str]:
    """Client id -> a token signed with the service's secret (one hour, synthetic=true); the
    same checks as ``canaryws token issue`` (a data dir without the service's secret.key is
    refused, and nothing is written)."""
    from canaryws.cli.tokens import _service_authority, _settings
    from canaryws.probe.identities import SYNTHETIC_PROPERTY

    try:
        authority = _service_authority(_settings(data_dir))
    except click.ClickException as exc:
        raise _SetupError(exc.message) from None
    properties = dict([SYNTHETIC_PROPERTY])

    def issue(client_id: str) -> str:
        return authority.issue(client_id, ttl_seconds=3600, properties=properties)

    return issue


async def _main(runner: Probe, interval: float, once: bool, linger: float) -> int:
    from canaryws.probe.runner import run_rounds

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not once:
            await run_rounds(runner, interval, stop)
            return 0
        report = await runner.round()
        click.echo(summary(report, runner.settings.url))
        if linger:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), linger)
        return 0 if report.ok else EXIT_FAILED
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def summary(report: RoundReport, url: str) -> str:
    """The round, for a person: what was probed, and each failure."""
    lines = [f"probe round against {url}: {'PASSED' if report.ok else 'FAILED'} in {report.seconds:.2f} s"]
    for checked in report.checked:
        handshake = "-" if checked.handshake_seconds is None else f"{checked.handshake_seconds * 1000:.1f} ms"
        slowest = f"{max(checked.batch_seconds) * 1000:.1f} ms" if checked.batch_seconds else "-"
        lines.append(f"  {checked.identity:<28} {checked.cohort or '?':<10} handshake {handshake:>9}   "
                     f"{checked.batches} golden batches, slowest {slowest}")
    for strategy in report.empty:
        lines.append(f"  cohort {strategy}: empty (no probe identity lands in it under the flags in force)")
    if report.failures:
        lines.append(f"  {len(report.failures)} failure(s): "
                     + ", ".join(f"{kind} {n}" for kind, n in sorted(report.counts().items())))
        for failure in report.failures:
            where = f" batch {failure.batch}" if failure.batch else ""
            lines.append(f"    {failure.kind:<18} {failure.identity}{where}: {failure.detail}")
    return "\n".join(lines)
