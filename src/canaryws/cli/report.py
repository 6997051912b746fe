"""``canaryws report`` and ``canaryws guard``: judge the canary cohort against the baseline.

``report`` reads OTLP/JSON trace files once and prints the comparison and its verdict.
``guard`` feeds the connections of the growing trace files, as they end, to the same
anytime-valid rule (:class:`canaryws.analysis.guard.Guard`) and, once a critical metric
fails, disables ``records.strict`` through the flag backend (the flags file, or the
Unleash Admin API when ``UNLEASH_URL`` and ``UNLEASH_ADMIN_TOKEN`` are set).
``guard --replay`` runs that rule over recorded trace files on their own clock. The rules
are documented in ``canaryws.analysis.judge`` and docs/report.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from canaryws.adapters.flags.backend import FlagBackend
from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.metrics_http import MetricsEndpoint
from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.analysis.guard import Guard
from canaryws.analysis.judge import COHORTS, Rules, judge
from canaryws.analysis.timeline import parse_decisions, timeline
from canaryws.analysis.traces import Slice, TraceTail, expand_paths, load_slices
from canaryws.analysis.units import DEFAULT_RETRY_WINDOW_S, build_units
from canaryws.core.cohorts import STRICT_FLAG
from canaryws.core.flagdoc import FlagsDocumentError
from canaryws.settings import DEFAULT_DATA_DIR

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

EXIT_CODES = {"promote": 0, "rollback": 1, "hold": 2}
EXIT_ERROR = 3  # unreadable input, bad options: never confused with a verdict

log = logging.getLogger("canaryws.guard")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 15m, 2h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]


def parse_time(text: str, now: float) -> int:
    """An ISO 8601 time (naive means UTC), or a duration meaning that long before now -> ns."""
    try:
        return int((now - parse_duration(text)) * 1e9)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time or duration: {text!r} (examples: 2026-11-24T03:00:00Z, 15m)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


def _iso(ns: int | None) -> str | None:
    return None if ns is None else iso_utc(ns / 1e9, timespec="seconds", utc="+00:00")


class _VerdictCommand(click.Command):
    """Usage errors exit with EXIT_ERROR, not click's 2 (which means ``hold`` here)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            error.exit_code = EXIT_ERROR  # type: ignore[misc]  # click declares it per class
            raise


class _Failure(click.ClickException):
    exit_code = EXIT_ERROR


def _traces_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--traces",
        "traces",
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="OTLP/JSON trace file, or a directory of them (*.json, *.jsonl); repeatable. "
        "The service's data/traces.jsonl and the Collector's file exporter output both work.",
    )(func)


def _rollout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--rollout", type=click.FloatRange(0, 100), default=None,
                        help="Configured strict rollout in percent, for the sample-ratio check "
                        "(default: the share recorded on each connection's summary).")(func)


def _rules_options(func: Callable[..., Any]) -> Callable[..., Any]:
    defaults = Rules()
    options = [
        click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=defaults.alpha,
                     show_default=True, help="The false-rollback probability (shared by the critical metrics; "
                     "anytime-valid: it holds however often the evidence is looked at)."),
        click.option("--detect-ratio", type=click.FloatRange(1, min_open=True), default=defaults.detect_ratio,
                     show_default=True, help="A promote needs enough connections that a strict rate this many times "
                     "the lenient one (or --detect-excess more) would have reached the rollback threshold."),
        click.option("--detect-excess", type=click.FloatRange(0, 1, min_open=True), default=defaults.detect_excess,
                     show_default=True, help="The absolute increase of a rate that matters where the lenient rate "
                     "is near 0 (0.02: two percentage points)."),
        click.option("--min-connections", type=click.IntRange(1), default=defaults.min_connections,
                     show_default=True, help="Connections each cohort needs before it is judged."),
        click.option("--min-batches", type=click.IntRange(1), default=defaults.min_batches, show_default=True,
                     help="Batches each cohort needs before it is judged."),
        click.option("--retry-window", type=str, default=f"{DEFAULT_RETRY_WINDOW_S:g}s", show_default=True,
                     help="A connection opened this soon after the same client's abnormal close is a retry."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _rules(alpha: float, min_connections: int, min_batches: int, detect_ratio: float, detect_excess: float) -> Rules:
    return dataclasses.replace(
        Rules(), alpha=alpha, min_connections=min_connections, min_batches=min_batches,
        min_values=min(Rules().min_values, min_connections), detect_ratio=detect_ratio, detect_excess=detect_excess,
    )


def _evaluate(slices: Sequence[Slice], rules: Rules, rollout: float | None, retry_window_s: float,
              start_ns: int | None = None, end_ns: int | None = None,
              decisions: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The judgement, and its ``timeline`` (the page's time plots; docs/report.md)."""
    units = build_units(slices, retry_window_s=retry_window_s)
    result = judge(units, rules, expected_strict_share=None if rollout is None else rollout / 100, start_ns=start_ns)
    result["timeline"] = timeline(units, rules, start_ns=start_ns, end_ns=end_ns, decisions=decisions)
    return result


def _read_decisions(path: Path) -> list[dict[str, Any]]:
    """A rollout controller's decisions file (``{"decisions": [...], ...}``), parsed."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    try:
        return parse_decisions(document)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _without_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report for --json: per-connection value lists are for plots only."""
    result = dict(report)
    result["metrics"] = [{k: v for k, v in m.items() if k != "values"} for m in report.get("metrics", [])]
    return result


# -------------------------------------------------------------------------- report


@click.command("report", cls=_VerdictCommand)
@_traces_option
@click.option("--since", default=None, help="Only connection summaries that ended after this time "
              "(ISO 8601, or a duration before now such as 15m).")
@click.option("--until", default=None, help="Only connection summaries that ended before this time.")
@_rollout_option
@_rules_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the tables.")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a self-contained HTML page: the critical rates' difference over time with its "
              "confidence bands, the rollout percentage and the decisions, and the cohorts' plots side by side.")
@click.option("--decisions", "decisions_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A rollout controller's decisions file (JSON: {\"decisions\": [{\"time\", \"kind\", \"step\", "
              "\"percent\", \"reasons\"}, ...]}): its decisions are drawn on the time plots, and their percent is "
              "the rollout step line (default: the share recorded on the connections).")
@click.option("--sink", "sink_url", default=None, metavar="URL",
              help="Cross-check with the sink the service commits to (its CANARYWS_SINK: sqlite, sqlite:///PATH, "
              "postgresql://...): what each cohort committed over the same window against what the spans counted. "
              "A mismatch is reported (terminal, --json's \"sink\", --html); the verdict and exit code stay "
              "the spans'.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="CANARYWS_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True,
              help="With --sink: the service's data dir, where a sqlite sink without a path lives.")
def report(
    traces: tuple[Path, ...],
    since: str | None,
    until: str | None,
    rollout: float | None,
    alpha: float,
    detect_ratio: float,
    detect_excess: float,
    min_connections: int,
    min_batches: int,
    retry_window: str,
    as_json: bool,
    html_path: Path | None,
    decisions_path: Path | None,
    sink_url: str | None,
    data_dir: Path,
) -> None:
    """Compare the strict (canary) and lenient (baseline) cohorts and give a verdict.

    The unit of analysis is the connection. What counts against the canary is what its
    clients suffer (abnormal closes, error frames, retries: critical, judged by
    anytime-valid rate-ratio tests with a relative tolerance and an absolute floor; latency:
    hold) and what reaches downstream (accepted rate: hold); strict rejecting what lenient
    skipped does not. Thin cohorts are inconclusive (hold), and so is too little evidence
    to promote; a cohort split that does not match the configured rollout is a
    sample-ratio mismatch (hold). The same rule as `canaryws guard`. Synthetic connections
    (a probe's: token property synthetic=true) are left out of the comparison and counted apart.

    With --sink, what each cohort committed to the sink over the same window is counted and
    compared, exactly, with what the spans say it answered: a mismatch is shown, and changes
    neither the verdict nor the exit code.

    Exit code: 0 promote, 1 rollback, 2 hold, 3 error. See docs/report.md.
    """
    now = time.time()
    try:
        since_ns = None if since is None else parse_time(since, now)
        until_ns = None if until is None else parse_time(until, now)
        retry_window_s = parse_duration(retry_window)
        files = expand_paths(traces)
        slices = load_slices(files, since_ns, until_ns)
        decisions = None if decisions_path is None else _read_decisions(decisions_path)
    except (ValueError, OSError) as error:
        raise _Failure(str(error)) from None
    rules = _rules(alpha, min_connections, min_batches, detect_ratio, detect_excess)
    result = _evaluate(slices, rules, rollout, retry_window_s, since_ns, until_ns, decisions)
    result["window"] = {
        "start": _iso(since_ns if since_ns is not None else min((s[1] for s in slices), default=None)),
        "end": _iso(until_ns if until_ns is not None else max((s[2] for s in slices), default=None)),
        "files": [str(f) for f in files],
        "spans": len(slices),
        "connections": sum(result["cohorts"][c]["connections"] for c in COHORTS),
    }
    if sink_url is not None:
        start_ns = since_ns if since_ns is not None else min((s[1] for s in slices), default=None)
        end_ns = until_ns if until_ns is not None else max((s[2] for s in slices), default=None)
        result["sink"] = _sink_check(sink_url, data_dir, slices, start_ns, end_ns)
    if html_path is not None:
        from canaryws.analysis.render.html import render_html

        try:
            html_path.write_text(render_html(result), encoding="utf-8")
        except OSError as error:
            raise _Failure(f"cannot write {html_path}: {error}") from None
    if as_json:
        click.echo(json.dumps(_without_values(result), allow_nan=False, sort_keys=False))
    else:
        from rich.console import Console

        from canaryws.analysis.render.terminal import render_terminal

        render_terminal(result, Console())
    sys.exit(EXIT_CODES[result["verdict"]])


def _sink_check(value: str, data_dir: Path, slices: Sequence[Slice], start_ns: int | None,
                end_ns: int | None) -> dict[str, Any]:
    """The report's ``sink``: the sink's counts over ``[start_ns, end_ns]`` against the spans'
    (:func:`canaryws.analysis.sink_check.cross_check`), with the sink's redacted URL and the window."""
    from canaryws.adapters.sink.counts import SinkReadError, committed_counts, sink_label
    from canaryws.analysis.sink_check import cross_check, span_counts

    try:
        source = sink_label(value, data_dir)
        committed = committed_counts(value, data_dir, start_ns, end_ns)
    except (SinkReadError, ValueError) as error:
        raise _Failure(f"--sink: {error}") from None
    return {"source": source, "window": {"start": _iso(start_ns), "end": _iso(end_ns)},
            **cross_check(span_counts(slices), committed)}


# --------------------------------------------------------------------------- guard


@click.command("guard", cls=_VerdictCommand)
@_traces_option
@click.option("--flags", "flags_path", type=click.Path(path_type=Path, dir_okay=False), envvar="CANARYWS_FLAGS",
              default=Path("flags/features.json"), show_default=True,
              help="Flags file to roll back (ignored when UNLEASH_URL and UNLEASH_ADMIN_TOKEN select the server).")
@click.option("--interval", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds between judgements.")
@click.option("--since", default=None,
              help="Start the evidence here (ISO 8601, or a duration before now such as 2h) instead of at the "
              "first connection of the current configuration.")
@click.option("--once", is_flag=True, help="Judge the evidence in the trace files once and exit.")
@click.option("--dry-run", is_flag=True, help="Only say what would be done; change no flag.")
@click.option("--replay", is_flag=True,
              help="Run the rule over the trace files on their own clock, from their first connection to their last, "
              "printing every judgement and the action it would take; change no flag.")
@click.option("--json", "as_json", is_flag=True, help="With --replay: one JSON object per judgement.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics (judgements, rollbacks, last judgement) on this port "
              "at /metrics (default: no metrics).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint binds (0.0.0.0 for every interface).")
@click.option("--metrics-linger", type=click.FloatRange(0), default=None,
              help="With --metrics-port: seconds to keep serving metrics after a rollback before exiting 1, "
              "so that Prometheus scrapes it  [default: 60].")
@_rules_options
def guard(
    traces: tuple[Path, ...],
    flags_path: Path,
    interval: float,
    since: str | None,
    once: bool,
    dry_run: bool,
    replay: bool,
    as_json: bool,
    metrics_port: int | None,
    metrics_host: str,
    metrics_linger: float | None,
    alpha: float,
    detect_ratio: float,
    detect_excess: float,
    min_connections: int,
    min_batches: int,
    retry_window: str,
) -> None:
    """Watch the cohorts and disable records.strict once a critical metric shows harm.

    The guard reads what the trace files gain every --interval seconds and feeds the
    connections, as they end, to anytime-valid rate-ratio tests (abnormal closes, error
    frames, retries; docs/report.md): the evidence accumulates since the current
    configuration took effect (the strict share recorded on the summaries; --since to
    choose), and the probability of rolling back a healthy canary stays below --alpha
    however long it runs. When a critical metric fails it disables records.strict through
    the flag backend, logs what it did and why, and exits 1. With --dry-run it only logs
    what it would do (exit 1 still means "would have rolled back"). --once judges the
    files as they are and exits (0 without a rollback).

    --replay runs the same rule over recorded trace files on their own clock, every
    --interval seconds of it, and prints each judgement and what the guard would have done;
    it changes nothing (exit 1 if it would have rolled back, else 0).

    With --metrics-port it serves canaryws_guard_windows_total{verdict} (judgements),
    canaryws_guard_rollbacks_total and canaryws_guard_last_judgement_timestamp_seconds at
    /metrics, and after a rollback keeps serving them for --metrics-linger seconds (default
    60; SIGTERM ends the wait) before it exits 1.
    """
    from canaryws.adapters.flags.backend_selection import open_backend
    from canaryws.adapters.telemetry.logs import configure_logging

    now = time.time()
    try:
        retry_window_s = parse_duration(retry_window)
        since_ns = None if since is None else parse_time(since, now)
    except ValueError as error:
        raise _Failure(str(error)) from None
    if metrics_linger is not None and metrics_port is None:
        raise _Failure("--metrics-linger needs --metrics-port")
    if as_json and not replay:
        raise _Failure("--json needs --replay")
    rules = _rules(alpha, min_connections, min_batches, detect_ratio, detect_excess)
    guard_state = Guard(rules, since_ns=since_ns, retry_window_s=retry_window_s)
    if replay:
        try:
            slices = load_slices(expand_paths(traces), since_ns)
        except (ValueError, OSError) as error:
            raise _Failure(str(error)) from None
        sys.exit(_replay(guard_state, slices, interval, as_json))
    configure_logging()
    backend = open_backend(flags_path)
    metrics = None if metrics_port is None else GuardMetrics.serve(metrics_host, metrics_port)
    tail = TraceTail(list(traces))
    while True:
        guard_state.add_slices(tail.poll())
        result = guard_state.judge(time.time_ns())
        verdict = result["verdict"]
        if metrics is not None:
            metrics.judged(verdict)
        log.info(
            "guard judged the evidence",
            extra={
                "verdict": verdict,
                "reasons": result["reasons"],
                "connections": result["connections"],
                "synthetic": result["synthetic"],
                "stage_start": _iso(result["stage"]["start_ns"]),
                "strict_share": result["stage"]["strict_share"],
                "e_values": {m["name"]: m["e_value"] for m in result["metrics"]},
            },
        )
        if verdict == "rollback":
            _roll_back(backend, result, dry_run)
            if metrics is not None:
                if not dry_run:
                    metrics.rolled_back()
                _linger(metrics, 60.0 if metrics_linger is None else metrics_linger)
            sys.exit(1)
        if once:
            sys.exit(0)
        time.sleep(interval)


def replay_judgements(guard_state: Guard, slices: Sequence[Slice], interval: float) -> list[dict[str, Any]]:
    """The judgements the guard would have made over ``slices``, every ``interval`` seconds
    of their own clock (the slices each arrive when their span ended), up to its first
    rollback or the last slice: each with its time and the action it takes."""
    ordered = sorted(slices, key=lambda s: s[2])
    if not ordered:
        return []
    step = int(interval * 1e9)
    clock = ordered[0][2] + step
    last = ordered[-1][2]
    index = 0
    judgements: list[dict[str, Any]] = []
    while True:
        upto = index
        while upto < len(ordered) and ordered[upto][2] <= clock:
            upto += 1
        guard_state.add_slices(ordered[index:upto])
        index = upto
        result = guard_state.judge(clock)
        result["time"] = _iso(clock)
        result["action"] = f"disable {STRICT_FLAG}" if result["verdict"] == "rollback" else None
        judgements.append(result)
        if result["verdict"] == "rollback" or clock >= last:
            return judgements
        clock += step


def _replay(guard_state: Guard, slices: Sequence[Slice], interval: float, as_json: bool) -> int:
    judgements = replay_judgements(guard_state, slices, interval)
    for result in judgements:
        if as_json:
            click.echo(json.dumps(result, allow_nan=False))
            continue
        e_values = ", ".join(f"{m['name']} e={m['e_value']:.3g}" for m in result["metrics"])
        connections = " / ".join(f"{c} {result['connections'][c]}" for c in COHORTS)
        synthetic = result["synthetic"]["connections"]
        left_out = f" ({synthetic} synthetic left out)" if synthetic else ""
        line = f"{result['time']} {result['verdict']:<8} {connections} connections{left_out}; {e_values}"
        click.echo(line + (f"; would {result['action']}" if result["action"] else ""))
    if not judgements:
        click.echo("no connection summaries to replay", err=True)
    rolled_back = bool(judgements) and judgements[-1]["verdict"] == "rollback"
    if rolled_back:
        click.echo(f"the guard would have rolled back at {judgements[-1]['time']}: "
                   f"{'; '.join(judgements[-1]['reasons'])}", err=True)
    return 1 if rolled_back else 0


def _roll_back(backend: FlagBackend, result: Mapping[str, Any], dry_run: bool) -> None:
    why = {"reasons": result["reasons"], "backend": backend.location}
    if dry_run:
        log.warning(f"dry run: would disable {STRICT_FLAG}", extra=why)
        return
    try:
        change = backend.set_enabled(STRICT_FLAG, False)
    except (FlagsDocumentError, UnleashError, OSError) as error:
        log.error(f"rollback failed: could not disable {STRICT_FLAG}: {error}", extra=why)
        raise _Failure(f"rollback failed: {error}") from None
    log.warning(
        f"rolled back: disabled {STRICT_FLAG}",
        extra={**why, "revision_before": change.old_revision, "revision_after": change.new_revision,
               "changed": change.changed},
    )


class GuardMetrics:
    """The guard's Prometheus metrics, in a registry of their own, served over HTTP by a
    prometheus_client thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        self.registry = registry
        self.address = ""
        self._windows = Counter("canaryws_guard_windows", "Judgements the guard made, by verdict",
                                ["verdict"], registry=registry)
        for verdict in EXIT_CODES:  # every verdict from 0, so rate() and increase() see the first one
            self._windows.labels(verdict=verdict)
        self._rollbacks = Counter("canaryws_guard_rollbacks", f"Times the guard disabled {STRICT_FLAG}",
                                  registry=registry)
        self._last = Gauge("canaryws_guard_last_judgement_timestamp_seconds",
                           "Unix time of the guard's last judgement (0: none yet)", registry=registry)
        self._endpoint: MetricsEndpoint | None = None

    @classmethod
    def serve(cls, host: str, port: int) -> GuardMetrics:
        from prometheus_client import CollectorRegistry

        metrics = cls(CollectorRegistry(auto_describe=True))
        try:
            metrics._endpoint = MetricsEndpoint.start(metrics.registry, host, port, log, "guard")
        except OSError as error:
            raise _Failure(f"cannot serve metrics on {host}:{port}: {error}") from None
        metrics.address = metrics._endpoint.address
        return metrics

    def judged(self, verdict: str) -> None:
        self._windows.labels(verdict=verdict).inc()
        self._last.set(time.time())

    def rolled_back(self) -> None:
        self._rollbacks.inc()

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


class _LingerInterrupted(Exception):
    pass


def _linger(metrics: GuardMetrics, seconds: float) -> None:
    """Keep serving the metrics for ``seconds`` after a rollback, so that a scrape sees it;
    SIGTERM or Ctrl+C end the wait early (the guard still exits 1)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise _LingerInterrupted

    log.info("serving metrics before exiting", extra={"metrics_url": metrics.address, "linger_seconds": seconds})
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        time.sleep(seconds)
    except (_LingerInterrupted, KeyboardInterrupt):
        log.info("metrics linger interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
        metrics.close()


__all__ = ["EXIT_CODES", "GuardMetrics", "guard", "parse_duration", "parse_time", "report"]
