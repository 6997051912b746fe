"""``canaryws rollout``: the controller that ramps ``records.strict`` step by step, and the
operator's commands around it (status, pause, resume, abort).

The decisions are :class:`canaryws.analysis.rollout.Controller`'s (pure); this module is its
shell. Each ``--interval`` the running controller (``rollout start``):

1. applies the operators' requests queued in the state file (pause, resume, abort);
2. reads the flags (the backend's ``describe()``) and reports them (:meth:`Controller.observe`:
   a manual change pauses it, and is never overwritten);
3. feeds the summaries the trace files gained to a :class:`~canaryws.analysis.guard.Guard`
   made afresh whenever the step's evidence start (``since_ns``) changes, and passes its
   verdict to :meth:`Controller.judge` (at 100 % no lenient cohort is left to compare: a
   verdict that holds only for that promotes once the hold is over);
4. in the shadow stage, once it lasted ``--shadow-first``, judges its connections with the
   report's rules and passes the unexpected divergence to :meth:`Controller.shadow_checked`;
5. applies the actions through the flag backend, then :meth:`Controller.applied`, and saves
   the state (:class:`~canaryws.adapters.rollout_store.RolloutStore`: atomic, so a controller
   killed at any moment resumes the same step with the same evidence start).

Every decision is a JSON log line, a Prometheus counter, and with ``--webhook`` a POST.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from canaryws.adapters.flags.backend import FlagBackend
from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.metrics_http import MetricsEndpoint
from canaryws.adapters.rollout_store import LeaseHeld, RolloutStore, StoreError
from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.analysis.guard import Guard
from canaryws.analysis.judge import UNEXPECTED_ONLY, Rules, judge
from canaryws.analysis.rollout import (
    ACTIVE,
    COMPLETED,
    DECISION_KINDS,
    FINAL,
    PAUSED,
    PENDING,
    RAMPING,
    ROLLED_BACK,
    SHADOW,
    SHADOW_FLAG,
    STATES,
    STRICT_FLAG,
    Action,
    Controller,
    Decision,
    FlagState,
    Plan,
    RolloutState,
    step_verdict,
)
from canaryws.analysis.traces import Slice, TraceTail
from canaryws.analysis.units import build_units
from canaryws.cli.report import _rules, _rules_options, _traces_option, parse_duration
from canaryws.core.compare import VALUE_MISMATCH
from canaryws.core.flagdoc import FlagEditError, FlagsDocumentError
from canaryws.settings import DEFAULT_DATA_DIR, DEFAULT_FLAGS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

EXIT_COMPLETED = 0
EXIT_ROLLED_BACK = 1
EXIT_STOPPED = 2  # SIGTERM/SIGINT before the end: the state is kept, `rollout start` resumes it
EXIT_ABORTED = 3  # aborted (an operator, or the shadow stage refused the ramp), or refused to start
EXIT_OF = {COMPLETED: EXIT_COMPLETED, ROLLED_BACK: EXIT_ROLLED_BACK}

WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 5.0

log = logging.getLogger("canaryws.rollout")

_BACKEND_ERRORS = (FlagsDocumentError, FlagEditError, UnleashError, OSError)


def _iso(ns: int) -> str:
    return iso_utc(ns / 1e9)


def default_state_path() -> Path:
    """``$CANARYWS_DATA_DIR/rollout.json``, else ``./data/rollout.json``."""
    return Path(os.environ.get("CANARYWS_DATA_DIR") or DEFAULT_DATA_DIR) / "rollout.json"


class _Failure(click.ClickException):
    exit_code = EXIT_ABORTED


class _StartCommand(click.Command):
    """Usage errors exit 3 (refused), not click's 2 (which means "stopped, resumable" here)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            error.exit_code = EXIT_ABORTED  # type: ignore[misc]  # click declares it per class
            raise


def _state_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                        help="The rollout's state file  [default: $CANARYWS_DATA_DIR/rollout.json, else "
                        "./data/rollout.json].")(func)


def _flags_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--flags", "flags_path", type=click.Path(path_type=Path, dir_okay=False),
                        envvar="CANARYWS_FLAGS", default=None,
                        help=f"Flags file (ignored when UNLEASH_URL and UNLEASH_ADMIN_TOKEN select the server)  "
                        f"[default: $CANARYWS_FLAGS, else {DEFAULT_FLAGS}].")(func)


def _steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--steps is a comma-separated list of percentages, got {text!r}") from None


# ----------------------------------------------------------------------- the group


@click.group("rollout")
def rollout_group() -> None:
    """Ramp records.strict step by step, judged by the guard's rule (docs/operating.md)."""


@rollout_group.command("start", cls=_StartCommand)
@click.option("--steps", default="1,5,25,50,100", show_default=True,
              help="The strict rollout percentages, strictly increasing, 1 to 100.")
@click.option("--hold", "hold", default="10m", show_default=True,
              help="The least time at each step before it may be promoted (90s, 10m, 2h).")
@click.option("--max-hold", "max_hold", default=None,
              help="A step with no decision after this long pauses for a human  [default: 4 × --hold].")
@click.option("--shadow-first", "shadow_first", default=None,
              help="First run records.shadow this long at 0 % strict; unexpected divergence refuses the ramp.")
@_flags_option
@_traces_option
@_state_option
@click.option("--interval", type=click.FloatRange(0.05), default=10.0, show_default=True,
              help="Seconds between looks at the flags, requests and evidence.")
@click.option("--webhook", default=None,
              help="POST each decision here as JSON with a `text` field (Slack/Mattermost incoming webhooks). "
              "Never logged beyond its host.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve Prometheus metrics (step, percent, state, decisions) on this port at /metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics endpoint binds (0.0.0.0 for every interface).")
@click.option("--metrics-linger", type=click.FloatRange(0), default=None,
              help="With --metrics-port: seconds to keep serving metrics once the rollout ended, so that Prometheus "
              "scrapes the end (SIGTERM ends the wait)  [default: 60].")
@_rules_options
def start(
    steps: str,
    hold: str,
    max_hold: str | None,
    shadow_first: str | None,
    flags_path: Path | None,
    traces: tuple[Path, ...],
    state_path: Path | None,
    interval: float,
    webhook: str | None,
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
    """Run a rollout of records.strict in the foreground until it ends.

    Each step sets records.strict's rollout; its evidence starts when the flag backend took
    the change. After --hold, the guard's anytime-valid rule on that evidence promotes it
    (the next step, or done after the last); a critical metric that shows harm disables
    records.strict at once (a rollback, also inside the hold); a step still undecided at
    --max-hold pauses for a human (`rollout resume` holds it again, `rollout resume
    --promote` promotes it, `rollout abort` ends it). A manual change of the flag (the kill
    switch `canaryws flags disable records.strict`, another percentage) pauses the
    controller; it is never overwritten. With --shadow-first, records.shadow runs that long
    at 0 % strict first, and unexpected divergence refuses the ramp (aborted).

    The state file is written atomically after every change: a controller stopped or killed
    resumes the same step with the same evidence start when started again with the same
    plan. One controller per state file: a second one is refused at once (an flock lease,
    released by the kernel when the holder dies).

    Exit code: 0 completed, 1 rolled back, 2 stopped by SIGTERM/SIGINT (state kept: start
    again to resume), 3 aborted (by an operator or the shadow stage) or refused (a running
    controller, an unfinished rollout with another plan, bad options).
    """
    from canaryws.adapters.flags.backend_selection import open_backend
    from canaryws.adapters.telemetry.logs import configure_logging

    try:
        hold_s = parse_duration(hold)
        plan = Plan(_steps(steps), hold_s, 4 * hold_s if max_hold is None else parse_duration(max_hold),
                    0.0 if shadow_first is None else parse_duration(shadow_first))
        retry_window_s = parse_duration(retry_window)
    except ValueError as error:
        raise _Failure(str(error)) from None
    if metrics_linger is not None and metrics_port is None:
        raise _Failure("--metrics-linger needs --metrics-port")
    configure_logging()
    store = RolloutStore(state_path or default_state_path())
    try:
        lease = store.acquire()
    except LeaseHeld as error:
        raise _Failure(f"{error}; `canaryws rollout status` shows it, `pause`/`resume`/`abort` talk to it") from None
    except OSError as error:
        raise _Failure(f"cannot take the lease {store.lease_path}: {error}") from None
    try:
        state, extra = _load_for_start(store, plan)
        backend = open_backend(flags_path or DEFAULT_FLAGS)
        rules = _rules(alpha, min_connections, min_batches, detect_ratio, detect_excess)
        metrics = None if metrics_port is None else RolloutMetrics.serve(metrics_host, metrics_port)
        notifier = None if webhook is None else Webhook(webhook)
        runner = Runner(store, Controller(state), backend, rules, retry_window_s, list(traces), interval,
                        metrics, notifier, extra, lease.holder)
        code = runner.run()
        if metrics is not None and code != EXIT_STOPPED:
            runner.linger(60.0 if metrics_linger is None else metrics_linger)
        if notifier is not None:
            notifier.close(WEBHOOK_TIMEOUT_S * 2)
        if metrics is not None:
            metrics.close()
    finally:
        lease.release()
    sys.exit(code)


def _load_for_start(store: RolloutStore, plan: Plan) -> tuple[RolloutState, dict[str, Any]]:
    """The state to run: the unfinished one of the same plan (resumed), or a new one (a
    finished state is archived first). An unfinished one with another plan is refused."""
    try:
        doc = store.read()
        if doc is not None and doc.get("state") in ACTIVE:
            state = RolloutState.from_json(doc)
            if state.plan != plan:
                raise _Failure(
                    f"an unfinished rollout with another plan is in {store.path} ({state.state} at step "
                    f"{state.step + 1} of {list(state.plan.steps)}; this plan: {list(plan.steps)} %, hold "
                    f"{plan.hold_s:g} s, max hold {plan.max_hold_s:g} s, shadow {plan.shadow_first_s:g} s): run "
                    "`canaryws rollout abort` first, or start it again with its own plan to resume it")
            log.info("resuming the rollout", extra={"state": state.state, "step": state.step, "percent": state.percent,
                                                    "since": state.since_ns and _iso(state.since_ns)})
            return state, {k: doc[k] for k in ("last_judgement", "pending_actions", "started") if k in doc}
        if doc is not None:
            archived = store.archive()
            log.info("the previous rollout ended; its state was archived",
                     extra={"state": doc.get("state"), "archived_to": str(archived)})
    except (StoreError, ValueError, KeyError, TypeError) as error:
        raise _Failure(f"{error}") from None
    except OSError as error:
        raise _Failure(f"cannot archive {store.path}: {error}") from None
    return RolloutState(plan), {"started": _iso(time.time_ns())}


# ------------------------------------------------------------------------ the shell


def apply_actions(backend: FlagBackend, actions: Sequence[Action]) -> None:
    """The actions on the flags, in order. ``set_rollout`` sets the percentage before it
    enables the flag, so that enabling it never serves an old percentage for a moment."""
    for action in actions:
        if action.kind == "set_rollout":
            assert action.percent is not None
            backend.set_rollout(STRICT_FLAG, action.percent)
            backend.set_enabled(STRICT_FLAG, True)
        elif action.kind == "disable":
            backend.set_enabled(STRICT_FLAG, False)
        else:
            backend.set_enabled(SHADOW_FLAG, bool(action.enabled))


def action_to_json(action: Action) -> dict[str, Any]:
    return {"kind": action.kind, "percent": action.percent, "enabled": action.enabled}


def action_from_json(data: Mapping[str, Any]) -> Action:
    return Action(data["kind"], data.get("percent"), data.get("enabled"))


def found_flags(backend: FlagBackend, expected: FlagState | None) -> FlagState:
    """records.strict (and records.shadow, when the controller manages it) as the backend has them."""
    rows = {row.name: row for row in backend.describe().flags}
    strict = rows.get(STRICT_FLAG)
    if strict is None:
        raise FlagsDocumentError(f"{STRICT_FLAG} is not in the flags")
    shadow = None
    if expected is not None and expected.shadow is not None and SHADOW_FLAG in rows:
        shadow = rows[SHADOW_FLAG].enabled
    return FlagState(strict.enabled, strict.rollout, shadow)


def unexpected_divergence(report: Mapping[str, Any]) -> list[str]:
    """The unexpected kinds of the report's shadow section (strict accepting what lenient did
    not, or accepting another value), one line per kind and reason."""
    by_kind = report["shadow"]["by_kind"]
    return [f"{kind}/{reason}: {n} records" for kind in (VALUE_MISMATCH, UNEXPECTED_ONLY)
            for reason, n in by_kind.get(kind, {}).items()]


class Runner:
    """One controller's loop (see the module docstring)."""

    def __init__(self, store: RolloutStore, controller: Controller, backend: FlagBackend, rules: Rules,
                 retry_window_s: float, traces: list[Path], interval: float, metrics: RolloutMetrics | None,
                 notifier: Webhook | None, extra: dict[str, Any], holder: Mapping[str, Any]) -> None:
        self.store, self.controller, self.backend, self.rules = store, controller, backend, rules
        self.retry_window_s, self.traces, self.interval = retry_window_s, traces, interval
        self.metrics, self.notifier, self.holder = metrics, notifier, dict(holder)
        self.tail = TraceTail(traces)
        self.guard: Guard | None = None
        self.guard_since: int | None = None
        self.shadow_slices: list[Slice] = []
        self.last_judgement: dict[str, Any] | None = extra.get("last_judgement")
        self.started = extra.get("started") or _iso(time.time_ns())
        self.pending = [action_from_json(a) for a in extra.get("pending_actions") or []]
        self.stop = threading.Event()
        self._emitted = len(controller.state.decisions)  # decisions already told (before a restart)
        self._last_logged: tuple[int, str] | None = None

    @property
    def state(self) -> RolloutState:
        return self.controller.state

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.state.state == PENDING and not self.state.decisions:
                self._issue(self.controller.start(time.time_ns()))
            elif self.state.awaiting and not self.pending:
                self.pending = self._restore_actions()
            self._flush()
            while True:
                self.step()
                if self.state.state in FINAL:
                    return EXIT_OF.get(self.state.state, EXIT_ABORTED)
                if self.stop.wait(self.interval):
                    log.warning("rollout controller stopped; the state is kept and `canaryws rollout start` with "
                                "the same plan resumes it", extra=self._where())
                    return EXIT_STOPPED
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stop.set()

    def step(self) -> None:
        """One look: requests, flags, evidence, decisions, actions, state."""
        for request in self.store.take_requests():
            self._issue(self._request(request))
        self._flush()
        if self.state.state in FINAL or self.state.awaiting:
            return
        try:
            found = found_flags(self.backend, self.state.expected)
        except _BACKEND_ERRORS as error:
            log.error("cannot read the flags; nothing is judged until they can be read",
                      extra={"error": str(error), "backend": self.backend.location})
            return
        now = time.time_ns()
        self._issue(self.controller.observe(now, found))
        self._feed()
        if self.state.state == RAMPING and self.guard is not None:
            result = self.guard.judge(now)
            verdict, reasons = step_verdict(self.state.percent, result, self.rules)
            self._judged(now, verdict, reasons, result)
            self._issue(self.controller.judge(now, verdict, reasons))
        elif self.controller.shadow_due(now):
            self._issue(self._check_shadow(now))
        self._flush()

    def _feed(self) -> None:
        """New summaries to the step's guard (a fresh one when the step's evidence start changed)."""
        slices = self.tail.poll()
        since = self.state.since_ns
        if since is None:
            self.guard = None
            return
        if self.guard is None or self.guard_since != since:
            self.guard = Guard(self.rules, since_ns=since, retry_window_s=self.retry_window_s)
            self.guard_since = since
            self.shadow_slices = []
        self.guard.add_slices(slices)
        if self.state.state == SHADOW:
            self.shadow_slices.extend(s for s in slices if s[2] >= since)

    def _check_shadow(self, now: int) -> list[Action]:
        since = self.state.since_ns
        report = judge(build_units(self.shadow_slices, retry_window_s=self.retry_window_s), self.rules,
                       start_ns=since)
        shadow = report["shadow"]
        self.last_judgement = {"time": _iso(now), "stage": "shadow", "batches_compared": shadow["batches"],
                               "records_compared": shadow["records"], "unexpected": shadow["unexpected"],
                               "by_kind": shadow["by_kind"]}
        log.info("rollout judged the shadow stage", extra=self.last_judgement)
        if not shadow["batches"]:
            shadow_s = self.state.plan.shadow_first_s
            return self.controller.pause(now, f"the shadow stage compared no batch in {shadow_s:g} s (is "
                                              "records.shadow served, and is there traffic?): resume to shadow "
                                              "again, or abort")
        return self.controller.shadow_checked(now, unexpected_divergence(report))

    def _judged(self, now: int, verdict: str, reasons: list[str], result: Mapping[str, Any]) -> None:
        held = (now - (self.state.since_ns or now)) / 1e9
        self.last_judgement = {
            "time": _iso(now), "stage": "step", "step": self.state.step, "percent": self.state.percent,
            "verdict": verdict, "reasons": reasons, "held_s": round(held, 3),
            "connections": result["connections"], "stage_start": result["stage"]["start_ns"] and _iso(
                result["stage"]["start_ns"]),
            "e_values": {m["name"]: m["e_value"] for m in result["metrics"]},
        }
        key = (self.state.step, verdict)
        if key != self._last_logged:  # a line when the verdict changes, not every look
            self._last_logged = key
            log.info("rollout judged the step's evidence", extra=self.last_judgement)

    def _request(self, request: Mapping[str, Any]) -> list[Action]:
        now = time.time_ns()
        kind, reason = request.get("kind"), request.get("reason")
        log.info("rollout request", extra={"request": kind, "reason": reason, "by": request.get("by")})
        if kind == "pause":
            return self.controller.pause(now, reason or "paused by an operator")
        if kind == "resume":
            return self.controller.resume(now, promote=bool(request.get("promote")), fresh=bool(request.get("fresh")),
                                          reason=reason or "resumed by an operator")
        if kind == "abort":
            return self.controller.abort(now, roll_back=bool(request.get("roll_back", True)),
                                         reason=reason or "aborted by an operator")
        log.warning("unknown rollout request ignored", extra={"request": kind})
        return []

    def _restore_actions(self) -> list[Action]:
        """After a restart with actions issued and not confirmed: the flags as the controller
        expects them (idempotent)."""
        expected = self.state.expected
        if expected is None:
            return []
        actions = [Action("set_rollout", percent=expected.rollout or 0) if expected.enabled else Action("disable")]
        if expected.shadow is not None:
            actions.append(Action("shadow", enabled=expected.shadow))
        return actions

    # -- actions, state, decisions ----------------------------------------------------------
    def _issue(self, actions: list[Action]) -> None:
        self.pending.extend(actions)
        self._tell()

    def _flush(self) -> None:
        """Save; apply the pending actions (saved first, so a crash re-applies them); confirm
        them to the controller; save again."""
        self._save()
        if not self.pending and not self.state.awaiting:
            return
        try:
            apply_actions(self.backend, self.pending)
        except _BACKEND_ERRORS as error:
            log.error("could not change the flags; retrying at the next look",
                      extra={"actions": [action_to_json(a) for a in self.pending], "error": str(error),
                             "backend": self.backend.location})
            return
        log.info("flags changed", extra={"actions": [action_to_json(a) for a in self.pending],
                                         "backend": self.backend.location})
        self.pending = []
        self.controller.applied(time.time_ns())
        self._save()

    def _save(self) -> None:
        doc = self.state.to_json(_iso)
        doc.update({
            "started": self.started,
            "backend": self.backend.location,
            "traces": [str(t) for t in self.traces],
            "last_judgement": self.last_judgement,
            "pending_actions": [action_to_json(a) for a in self.pending],
            "controller": self.holder,
        })
        try:
            self.store.save(doc)
        except StoreError as error:
            log.error("cannot save the rollout state", extra={"error": str(error)})
        if self.metrics is not None:
            self.metrics.update(self.state)

    def _tell(self) -> None:
        """Each new decision: a log line, the metrics, the webhook."""
        decisions = self.state.decisions
        self._emitted = min(self._emitted, len(decisions))
        for decision in decisions[self._emitted:]:
            record = decision_record(decision, self.state)
            level = logging.WARNING if decision.kind in ("rollback", "pause", "manual_change", "abort",
                                                          "shadow_fail") else logging.INFO
            log.log(level, f"rollout decision: {decision.kind}", extra={"decision": record})
            if self.metrics is not None:
                self.metrics.decided(decision)
            if self.notifier is not None:
                self.notifier.send(record)
        self._emitted = len(decisions)

    def _where(self) -> dict[str, Any]:
        return {"state": self.state.state, "step": self.state.step, "percent": self.state.percent,
                "state_file": str(self.store.path)}

    def linger(self, seconds: float) -> None:
        if seconds <= 0:
            return
        log.info("serving metrics before exiting", extra={"linger_seconds": seconds})
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.stop.wait(seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def decision_record(decision: Decision, state: RolloutState) -> dict[str, Any]:
    """A decision as logged and POSTed: its fields, the rollout's state, and a ``text`` for a chat."""
    record = decision.to_json(_iso)
    record.update({"flag": STRICT_FLAG, "state": state.state, "steps": list(state.plan.steps)})
    where = "" if decision.percent is None else f" at {decision.percent} %"
    step = "" if decision.step is None else f" (step {decision.step + 1} of {len(state.plan.steps)})"
    why = "; ".join(decision.reasons)
    record["text"] = f"canaryws rollout of {STRICT_FLAG}: {decision.kind}{where}{step}" + (f": {why}" if why else "")
    return record


# ------------------------------------------------------------------ decisions out


class Webhook:
    """POSTs records to a chat webhook from a thread of its own: a failure is logged (with
    the URL's host only: a webhook URL is a credential) and retried a few times; it never
    blocks or stops the controller."""

    def __init__(self, url: str, attempts: int = WEBHOOK_ATTEMPTS, backoff_s: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Failure("--webhook is an http(s) URL")
        self._url = url
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO line per request names the whole URL
        self.host = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self._attempts, self._backoff_s = attempts, backoff_s
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="rollout-webhook", daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            log.error("webhook queue full: a decision was not posted", extra={"webhook": self.host})

    def close(self, timeout: float) -> None:
        """Post what is queued (for at most ``timeout`` seconds), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False) as client:
            while (record := self._queue.get()) is not None:
                self._post(client, record)

    def _post(self, client: Any, record: dict[str, Any]) -> None:
        import httpx

        for attempt in range(1, self._attempts + 1):
            problem = None
            try:
                response = client.post(self._url, json=record)
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            log.warning("webhook POST failed", extra={"webhook": self.host, "attempt": attempt, "error": problem,
                                                      "kind": record.get("kind")})
            if attempt < self._attempts:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.error("webhook gave up on a decision", extra={"webhook": self.host, "kind": record.get("kind")})


class RolloutMetrics:
    """The controller's Prometheus metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        self.registry = registry
        self.address = ""
        self._step = Gauge("canaryws_rollout_step", "The rollout's current step (index from 0; -1 before the first)",
                           registry=registry)
        self._percent = Gauge("canaryws_rollout_percent", "records.strict's rollout the controller set (percent)",
                              registry=registry)
        self._state = Gauge("canaryws_rollout_state", "1 for the rollout's current state, 0 for the others",
                            ["state"], registry=registry)
        self._paused = Gauge("canaryws_rollout_paused", "1 while the rollout is paused for a human", registry=registry)
        self._decisions = Counter("canaryws_rollout_decisions", "The controller's decisions, by kind", ["kind"],
                                  registry=registry)
        self._last = Gauge("canaryws_rollout_last_decision_timestamp_seconds",
                           "Unix time of the controller's last decision (0: none yet)", registry=registry)
        for kind in DECISION_KINDS:
            self._decisions.labels(kind=kind)
        self._endpoint: MetricsEndpoint | None = None

    @classmethod
    def serve(cls, host: str, port: int) -> RolloutMetrics:
        from prometheus_client import CollectorRegistry

        metrics = cls(CollectorRegistry(auto_describe=True))
        try:
            metrics._endpoint = MetricsEndpoint.start(metrics.registry, host, port, log, "rollout")
        except OSError as error:
            raise _Failure(f"cannot serve metrics on {host}:{port}: {error}") from None
        metrics.address = metrics._endpoint.address
        return metrics

    def update(self, state: RolloutState) -> None:
        self._step.set(state.step)
        self._percent.set(state.percent or 0)
        for name in STATES:
            self._state.labels(state=name).set(1 if state.state == name else 0)
        self._paused.set(1 if state.state == PAUSED else 0)

    def decided(self, decision: Decision) -> None:
        self._decisions.labels(kind=decision.kind).inc()
        self._last.set(decision.time_ns / 1e9)

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


# -------------------------------------------------------------- the operator's commands


def _open_state(store: RolloutStore) -> dict[str, Any]:
    try:
        doc = store.read()
    except StoreError as error:
        raise _Failure(str(error)) from None
    if doc is None:
        raise _Failure(f"no rollout state in {store.path} (`canaryws rollout start` makes one; --state to choose)")
    return doc


def _operate(state_path: Path | None, request: dict[str, Any], flags_path: Path | None = None) -> None:
    """Queue ``request`` for the running controller, or apply it to the state (and the
    flags, for an abort) when none holds the lease."""
    from canaryws.adapters.flags.backend_selection import open_backend

    store = RolloutStore(state_path or default_state_path())
    doc = _open_state(store)
    if doc.get("state") in FINAL:
        raise _Failure(f"the rollout in {store.path} already ended ({doc.get('state')}); nothing to {request['kind']}")
    request = {**request, "time": _iso(time.time_ns()), "by": os.environ.get("USER") or str(os.getuid())}
    holder = store.holder()
    if holder is not None:
        store.add_request(request)
        click.echo(f"requested {request['kind']}: the running controller (pid {holder.get('pid')} on "
                   f"{holder.get('host')}) applies it within one interval; `canaryws rollout status` shows it")
        return
    try:
        lease = store.acquire()  # no controller may start while this edits the state
    except LeaseHeld:
        store.add_request(request)
        click.echo(f"requested {request['kind']}: a controller just started and applies it within one interval")
        return
    try:
        doc = _open_state(store)
        try:
            controller = Controller(RolloutState.from_json(doc))
        except (ValueError, KeyError, TypeError) as error:
            raise _Failure(f"the rollout state {store.path} is not usable: {error}") from None
        now = time.time_ns()
        kind = request["kind"]
        if kind == "pause":
            actions = controller.pause(now, request.get("reason") or "paused by an operator")
        elif kind == "resume":
            actions = controller.resume(now, promote=bool(request.get("promote")), fresh=bool(request.get("fresh")),
                                        reason=request.get("reason") or "resumed by an operator")
        else:
            actions = controller.abort(now, roll_back=bool(request["roll_back"]),
                                       reason=request.get("reason") or "aborted by an operator")
        changed = ""
        if kind == "abort" and actions:
            location = doc.get("backend")
            path = flags_path or (Path(location) if isinstance(location, str) and "://" not in location
                                  else DEFAULT_FLAGS)
            backend = open_backend(path)
            try:
                apply_actions(backend, actions)
            except _BACKEND_ERRORS as error:
                raise _Failure(f"could not disable {STRICT_FLAG} on {backend.location}: {error}; the state is "
                               f"unchanged: disable it by hand (`canaryws flags disable {STRICT_FLAG}`)") from None
            controller.applied(now)
            actions, changed = [], f"; {STRICT_FLAG} disabled on {backend.location}"
        new = controller.state.to_json(_iso)
        for key in ("started", "backend", "traces", "last_judgement", "controller"):
            if key in doc:
                new[key] = doc[key]
        new["pending_actions"] = [*doc.get("pending_actions", []), *(action_to_json(a) for a in actions)]
        store.save(new)
    finally:
        lease.release()
    for decision in controller.state.decisions[len(doc.get("decisions", [])):]:
        log.info(f"rollout decision: {decision.kind}", extra={"decision": decision_record(decision, controller.state)})
    if len(controller.state.decisions) == len(doc.get("decisions", [])):
        click.echo(f"nothing to {request['kind']}: the rollout is {controller.state.state}")
        return
    then = " (the flags follow when `canaryws rollout start` runs it)" if controller.state.awaiting else ""
    click.echo(f"no controller is running: applied {request['kind']} to {store.path} directly; the rollout is "
               f"{controller.state.state}{changed}{then}")


@rollout_group.command("pause")
@_state_option
@click.option("--reason", default=None, help="Why (recorded in the state and the decision).")
def pause(state_path: Path | None, reason: str | None) -> None:
    """Pause the rollout: the controller keeps the flags as they are and decides nothing until resumed."""
    _operate(state_path, {"kind": "pause", "reason": reason})


@rollout_group.command("resume")
@_state_option
@click.option("--promote", is_flag=True, help="Promote the paused step instead of holding it again.")
@click.option("--fresh", is_flag=True, help="Set the step again and start its evidence and hold afresh (after a "
              "marginal verdict, which never clears on the same evidence).")
@click.option("--reason", default=None, help="Why (recorded in the state and the decision).")
def resume(state_path: Path | None, promote: bool, fresh: bool, reason: str | None) -> None:
    """Resume a paused rollout. The step's evidence goes on, and a step paused at its maximum
    hold gets another one; after a manual change of the flag, or with --fresh, the step is set
    again and its evidence and hold start afresh. --promote: a human promotes the step instead."""
    if promote and fresh:
        raise _Failure("--promote and --fresh exclude each other")
    _operate(state_path, {"kind": "resume", "promote": promote, "fresh": fresh, "reason": reason})


@rollout_group.command("abort")
@_state_option
@_flags_option
@click.option("--keep-flags", is_flag=True, help="Leave the flags as they are (default: disable records.strict).")
@click.option("--reason", default=None, help="Why (recorded in the state and the decision).")
def abort(state_path: Path | None, flags_path: Path | None, keep_flags: bool, reason: str | None) -> None:
    """End the rollout: records.strict is disabled (back to lenient) unless --keep-flags."""
    _operate(state_path, {"kind": "abort", "roll_back": not keep_flags, "reason": reason}, flags_path)


@rollout_group.command("status")
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--decisions", "last", type=click.IntRange(0), default=5, show_default=True,
              help="How many of the last decisions to show.")
def status(state_path: Path | None, as_json: bool, last: int) -> None:
    """Where the rollout is: state, step, percent, since, reason, the last decisions and judgement,
    and which controller (if any) holds the lease."""
    store = RolloutStore(state_path or default_state_path())
    doc = _open_state(store)
    holder = store.holder()
    summary = {
        "state": doc.get("state"), "step": doc.get("step"), "steps": doc.get("plan", {}).get("steps"),
        "percent": doc.get("percent"), "since": doc.get("since"), "reason": doc.get("reason"),
        "awaiting": doc.get("awaiting"), "requests": doc.get("requests", []),
        "decisions": doc.get("decisions", [])[-last:] if last else [],
        "last_judgement": doc.get("last_judgement"), "controller": holder, "running": holder is not None,
        "backend": doc.get("backend"), "state_file": str(store.path), "plan": doc.get("plan"),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    steps = summary["steps"] or []
    step = doc.get("step", -1)
    where = f"step {step + 1} of {len(steps)} ({summary['percent']} %)" if step is not None and step >= 0 else \
        "before the first step"
    click.echo(f"rollout of {STRICT_FLAG}: {summary['state']}, {where}, steps {steps} %")
    click.echo(f"since: {summary['since'] or '-'}")
    if summary["reason"]:
        click.echo(f"reason: {summary['reason']}")
    click.echo("controller: " + (f"running, pid {holder.get('pid')} on {holder.get('host')} since "
                                 f"{holder.get('started')}" if holder is not None else "none running"))
    if summary["requests"]:
        click.echo(f"requests waiting: {', '.join(str(r.get('kind')) for r in summary['requests'])}")
    judgement = summary["last_judgement"]
    if judgement:
        verdict = judgement.get("verdict") or f"shadow, {judgement.get('unexpected')} unexpected"
        reasons = "; ".join(judgement.get("reasons", []))
        click.echo(f"last judgement: {judgement.get('time')} {verdict}" + (f": {reasons}" if reasons else ""))
    if summary["decisions"]:
        click.echo("decisions:")
        for d in summary["decisions"]:
            at = "" if d.get("percent") is None else f" at {d['percent']} %"
            click.echo(f"  {d.get('time')} {d.get('kind')}{at}" + (f": {'; '.join(d['reasons'])}" if d.get(
                "reasons") else ""))


__all__ = ["EXIT_ABORTED", "EXIT_COMPLETED", "EXIT_ROLLED_BACK", "EXIT_STOPPED", "RolloutMetrics", "Runner",
           "Webhook", "rollout_group"]
