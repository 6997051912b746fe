"""``canaryws rollout``: the controller on a real service with real clients, in accelerated time
(holds of 1–3 s, looks every 0.2 s): a healthy ramp through every step (flags file and a real
Unleash server), a rollback, a SIGKILL and resume, a manual kill switch, one controller per
state, the webhook, the operator's commands, the shadow stage."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.core.flagdoc import validate_flags_data
from harness import (
    Service,
    UnleashServer,
    flags_doc,
    free_port,
    json_log_lines,
    metric_value,
    records_with_blanks,
    run_cli,
    run_client,
    write_guard_summaries,
)

pytestmark = pytest.mark.integration

FAST = ["--interval", "0.2", "--min-connections", "5", "--min-batches", "5", "--detect-excess", "0.9"]


def strict_at(percent: int, client_id: str) -> bool:
    snapshot = FlagSnapshot.from_document(validate_flags_data(flags_doc(strict_rollout=percent)), source="test")
    return snapshot.evaluate("records.strict", {"userId": client_id}).enabled


# clients strict from the 1 % step on, and clients lenient up to the 50 % step
CANDIDATES = [f"tenant-{i:04d}" for i in range(3000)]
EARLY = [c for c in CANDIDATES if strict_at(1, c)][:6]
LATE = [c for c in CANDIDATES if not strict_at(50, c)][:6]


def clean(n: int) -> list[Any]:
    return ["ok", f"v{n}"]


class Traffic:
    """Clients in a background thread, each opening a connection, sending two batches and
    closing, again and again; with ``give_up``, a strict client whose batch gets rejections
    closes abnormally (4400) and reconnects, as an impatient client would."""

    def __init__(self, service: Service, clients: list[str], *, give_up: bool = False,
                 records: Callable[[int], list[Any]] = clean) -> None:
        self.service, self.clients, self.give_up, self.records = service, clients, give_up, records
        self.connections = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by the test
            self.error = err

    async def _main(self) -> None:
        async def one(cid: str) -> None:
            while not self._stop.is_set():
                await run_client(self.service, cid, batches=2, records=self.records,
                                 give_up_on_rejection=self.give_up, interval=0.01)
                self.connections += 1
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one(c) for c in self.clients))


class Rollout:
    """One ``canaryws rollout start`` process, its log in a file."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None, name: str = "rollout") -> None:
        self.log_path = root / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "canaryws", "rollout", "start", *args],
                                     stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"),
                                     env={**os.environ, **(env or {})})

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the controller did not end within {timeout} s:\n{self.log()[-4000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text()

    def records(self) -> list[dict[str, Any]]:
        return json_log_lines(self.log())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def state_of(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}\n{log()[-3000:]}"
        time.sleep(0.05)


def strict_flag(flags: Path) -> tuple[bool, int]:
    feature = next(f for f in json.loads(flags.read_text())["features"] if f["name"] == "records.strict")
    return feature["enabled"], int(feature["strategies"][0]["parameters"]["rollout"])


def shadow_enabled(flags: Path) -> bool:
    return bool(next(f for f in json.loads(flags.read_text())["features"] if f["name"] == "records.shadow")["enabled"])


def kinds(state: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(d["kind"], d["percent"]) for d in state["decisions"]]


def common(service: Service, state: Path, *more: str) -> list[str]:
    return ["--traces", str(service.data_dir / "traces.jsonl"), "--flags", str(service.flags_path),
            "--state", str(state), *FAST, *more]


def test_the_candidate_clients_are_in_the_cohorts_the_ramp_needs() -> None:
    assert len(EARLY) == 6 and len(LATE) == 6
    assert all(strict_at(p, c) for c in EARLY for p in (1, 5, 25, 50, 100))
    assert not any(strict_at(p, c) for c in LATE for p in (1, 5, 25, 50))


# ---------------------------------------------------------------------- (a) a healthy ramp


def test_a_healthy_canary_goes_through_every_step_on_the_flags_file(tmp_path: Path) -> None:
    state = tmp_path / "rollout.json"
    port = free_port()
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service, \
            Traffic(service, EARLY + LATE) as traffic:
        rollout = Rollout(tmp_path, *common(service, state, "--hold", "1.5s", "--metrics-port", str(port),
                                            "--metrics-linger", "30"))
        try:
            seen: list[tuple[bool, int]] = []

            def ended() -> bool:
                flag = strict_flag(service.flags_path)
                if not seen or seen[-1] != flag:
                    seen.append(flag)
                return state_of(state).get("state") == "completed"
            wait_for(ended, 90, "the rollout to complete", rollout.log)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            rollout.proc.send_signal(signal.SIGTERM)  # ends the metrics linger
            assert rollout.wait(30) == 0, rollout.log()[-3000:]
        finally:
            rollout.stop()
        assert traffic.error is None
    final = state_of(state)
    assert kinds(final) == [("start", None), ("promote", 1), ("promote", 5), ("promote", 25), ("promote", 50),
                            ("complete", 100)], final["decisions"]
    assert [p for enabled, p in seen if enabled] == [1, 5, 25, 50, 100], seen  # every step, in order, once
    assert strict_flag(service.flags_path) == (True, 100)
    # each step held at least its hold, and each promote was judged on that step's own evidence
    times = [d["time_ns"] for d in final["decisions"]]
    assert all(b - a >= 1.5e9 for a, b in itertools.pairwise(times[1:])), times
    assert "no critical metric shows harm" in final["decisions"][1]["reasons"][-1]
    assert "no lenient cohort is left" in final["decisions"][-1]["reasons"][-1]
    assert metric_value(metrics, "canaryws_rollout_state", state="completed") == 1
    assert metric_value(metrics, "canaryws_rollout_state", state="ramping") == 0
    assert metric_value(metrics, "canaryws_rollout_percent") == 100
    assert metric_value(metrics, "canaryws_rollout_step") == 4
    assert metric_value(metrics, "canaryws_rollout_decisions_total", kind="promote") == 4
    assert metric_value(metrics, "canaryws_rollout_paused") == 0
    assert metric_value(metrics, "canaryws_rollout_last_decision_timestamp_seconds") > time.time() - 120
    decisions = [r["decision"] for r in rollout.records() if r["message"].startswith("rollout decision: ")]
    assert [d["kind"] for d in decisions] == ["start", "promote", "promote", "promote", "promote", "complete"]


def test_a_healthy_canary_goes_through_every_step_on_the_unleash_server(tmp_path: Path,
                                                                        unleash: UnleashServer) -> None:
    unleash.set_enabled("records.strict", False)
    unleash.set_rollout("records.strict", 0)
    state = tmp_path / "rollout.json"
    env = {**unleash.service_env, "UNLEASH_REFRESH_INTERVAL": "1"}
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False), env=env) as service:
        service.wait_for_revision(lambda st: st.get("flags_from") == "server", timeout=15)
        with Traffic(service, EARLY + LATE) as traffic:
            rollout = Rollout(tmp_path, *common(service, state, "--hold", "2s"), env=unleash.admin_env)
            try:
                assert rollout.wait(120) == 0, rollout.log()[-3000:]
            finally:
                rollout.stop()
            assert traffic.error is None
    final = state_of(state)
    assert kinds(final) == [("start", None), ("promote", 1), ("promote", 5), ("promote", 25), ("promote", 50),
                            ("complete", 100)], final["decisions"]
    assert final["backend"].startswith(unleash.url)
    feature = next(f for f in unleash.client_features()["features"] if f["name"] == "records.strict")
    assert feature["enabled"] is True
    assert feature["strategies"][0]["parameters"]["rollout"] == "100"
    # the service served each step before it was promoted: each promote judged evidence of its own share
    for decision in final["decisions"][1:-1]:
        assert "no critical metric shows harm" in decision["reasons"][-1], decision


# ------------------------------------------------------------- (b) + (f) a rollback, the webhook


class Hook:
    """A chat webhook on a free port: records what is POSTed; the first POST gets a 500."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if hook.attempts == 1:
                    self.send_response(500)
                else:
                    hook.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-part"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_canary_whose_clients_give_up_is_rolled_back_at_its_first_step(tmp_path: Path) -> None:
    state = tmp_path / "rollout.json"
    hook = Hook()
    try:
        with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service, \
                Traffic(service, EARLY + LATE, give_up=True, records=records_with_blanks):
            rollout = Rollout(tmp_path, *common(service, state, "--hold", "30s", "--webhook", hook.url))
            try:
                assert rollout.wait(60) == 1, rollout.log()[-3000:]
            finally:
                rollout.stop()
        final = state_of(state)
        assert final["state"] == "rolled_back" and final["percent"] == 1
        assert kinds(final) == [("start", None), ("rollback", 1)]
        reasons = final["decisions"][-1]["reasons"]
        assert any(r.startswith(("abnormal_close_rate", "retry_rate")) for r in reasons), reasons
        assert final["reason"] == "; ".join(reasons)
        assert strict_flag(service.flags_path) == (False, 1)  # disabled, its percentage kept
        (logged,) = [r for r in rollout.records() if r["message"] == "rollout decision: rollback"]
        assert logged["level"] == "WARNING" and logged["decision"]["reasons"] == reasons
        # the webhook: a 500 retried, then both decisions with a chat text and their fields
        assert [r["kind"] for r in hook.received] == ["start", "rollback"], hook.received
        assert hook.attempts == 3
        rollback = hook.received[-1]
        assert rollback["text"].startswith("canaryws rollout of records.strict: rollback at 1 % (step 1 of 5): ")
        assert rollback["percent"] == 1 and rollback["reasons"] == reasons and rollback["state"] == "rolled_back"
        failed = [r for r in rollout.records() if r["message"] == "webhook POST failed"]
        assert failed and failed[0]["error"] == "HTTP 500" and failed[0]["webhook"] == hook.url.split("/hooks")[0]
        assert "secret-part" not in rollout.log()  # a webhook URL is a credential: only its host is logged
    finally:
        hook.close()


# ------------------------------------------------------------------ (c) SIGKILL, then resume


def test_a_controller_killed_mid_hold_resumes_the_same_step(tmp_path: Path) -> None:
    state = tmp_path / "rollout.json"
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service, \
            Traffic(service, EARLY + LATE):
        args = common(service, state, "--steps", "1,5", "--hold", "3s")
        first = Rollout(tmp_path, *args, name="first")
        try:
            wait_for(lambda: state_of(state).get("since_ns") is not None, 30, "the first step", first.log)
            time.sleep(1)  # mid-hold
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        finally:
            first.stop()
        before = state_of(state)
        assert (before["state"], before["step"]) == ("ramping", 0) and not before["awaiting"]
        flags_mtime = service.flags_path.stat().st_mtime_ns
        status = run_cli("rollout", "status", "--json", "--state", str(state))
        assert json.loads(status.stdout)["running"] is False  # the kernel released the lease

        second = Rollout(tmp_path, *args, name="second")
        try:
            wait_for(lambda: any(r["message"] == "resuming the rollout" for r in second.records()), 30, "resume",
                     second.log)
            assert second.wait(60) == 0, second.log()[-3000:]
        finally:
            second.stop()
    final = state_of(state)
    assert kinds(final) == [("start", None), ("promote", 1), ("complete", 5)], final["decisions"]
    promote = final["decisions"][1]
    # the same step, the same evidence start: promoted 3 s after the first controller's start of the step,
    # with no second set_rollout of 1 % (the flags file was not written until the promote)
    assert promote["time_ns"] - before["since_ns"] >= 3e9
    changes = [r["actions"] for r in second.records() if r["message"] == "flags changed"]
    assert changes == [[{"kind": "set_rollout", "percent": 5, "enabled": None}]], changes
    (resumed,) = [r for r in second.records() if r["message"] == "resuming the rollout"]
    assert resumed["since"] == before["since"] and resumed["step"] == 0
    assert service.flags_path.stat().st_mtime_ns > flags_mtime  # (written once, by the promote)


# ------------------------------------ (d) + (e) + (g) a manual kill switch, one controller, the commands


def test_a_manual_kill_switch_pauses_and_resume_sets_the_step_again(tmp_path: Path) -> None:
    state = tmp_path / "rollout.json"
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service, \
            Traffic(service, EARLY + LATE):
        args = common(service, state, "--hold", "60s")
        rollout = Rollout(tmp_path, *args)
        try:
            wait_for(lambda: state_of(state).get("since_ns") is not None, 30, "the first step", rollout.log)
            assert strict_flag(service.flags_path) == (True, 1)

            # (e) one controller per state file
            second = run_cli("rollout", "start", *args, timeout=30)
            assert second.returncode == 3, second.stderr
            assert "a rollout controller already runs on this state" in second.stderr
            assert f"pid {rollout.proc.pid}" in second.stderr

            # (d) the kill switch during the hold
            killed = run_cli("flags", "disable", "records.strict", "--flags", str(service.flags_path))
            assert killed.returncode == 0, killed.stderr
            wait_for(lambda: state_of(state).get("state") == "paused", 10, "the pause", rollout.log)
            paused = state_of(state)
            assert paused["decisions"][-1]["kind"] == "manual_change"
            assert "records.strict was disabled (the kill switch)" in paused["reason"]
            time.sleep(1)  # several looks: not overwritten
            assert strict_flag(service.flags_path) == (False, 1)
            status = run_cli("rollout", "status", "--state", str(state))
            assert status.returncode == 0 and "paused, step 1 of 5 (1 %)" in status.stdout, status.stdout
            assert f"controller: running, pid {rollout.proc.pid}" in status.stdout
            assert "kill switch" in status.stdout

            # (g) resume through the running controller: the step is set again, its hold starts afresh
            resumed = run_cli("rollout", "resume", "--state", str(state))
            assert resumed.returncode == 0 and "the running controller" in resumed.stdout, resumed.stdout
            def resumed_and_set() -> bool:
                # one read: the controller writes "ramping" first and the step's since_ns once the flag is set
                now = state_of(state)
                return now.get("state") == "ramping" and (now.get("since_ns") or 0) > paused["since_ns"]

            wait_for(resumed_and_set, 10, "the resume", rollout.log)
            assert strict_flag(service.flags_path) == (True, 1)

            # pause, then abort: records.strict goes back to lenient and the controller exits 3
            assert run_cli("rollout", "pause", "--state", str(state), "--reason", "a look").returncode == 0
            wait_for(lambda: state_of(state).get("state") == "paused", 10, "the pause", rollout.log)
            assert state_of(state)["reason"] == "a look"
            assert run_cli("rollout", "abort", "--state", str(state)).returncode == 0
            assert rollout.wait(30) == 3, rollout.log()[-3000:]
        finally:
            rollout.stop()
    final = state_of(state)
    assert final["state"] == "aborted"
    assert kinds(final) == [("start", None), ("manual_change", 1), ("resume", 1), ("pause", 1), ("abort", 1)]
    assert strict_flag(service.flags_path) == (False, 1)


def test_the_operator_commands_with_no_controller_running(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, strict_close=1000)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=0, strict_enabled=False)))
    state = tmp_path / "rollout.json"
    args = ["--traces", str(traces), "--flags", str(flags), "--state", str(state), *FAST, "--hold", "60s"]
    rollout = Rollout(tmp_path, *args)
    try:
        wait_for(lambda: state_of(state).get("since_ns") is not None, 30, "the first step", rollout.log)
        rollout.proc.send_signal(signal.SIGTERM)
        assert rollout.wait(30) == 2  # stopped: the state is kept
    finally:
        rollout.stop()
    assert state_of(state)["state"] == "ramping"

    paused = run_cli("rollout", "pause", "--state", str(state))
    assert paused.returncode == 0 and "no controller is running: applied pause" in paused.stdout, paused.stdout
    assert state_of(state)["state"] == "paused"
    assert strict_flag(flags) == (True, 1)
    resumed = run_cli("rollout", "resume", "--state", str(state))  # the step's evidence goes on: no flag to set
    assert resumed.returncode == 0 and "applied resume" in resumed.stdout, resumed.stdout
    assert state_of(state)["state"] == "ramping" and not state_of(state).get("pending_actions")
    assert run_cli("rollout", "pause", "--state", str(state)).returncode == 0
    fresh = run_cli("rollout", "resume", "--fresh", "--state", str(state))  # the step is set again
    assert "the flags follow when `canaryws rollout start` runs it" in fresh.stdout, fresh.stdout
    assert state_of(state)["state"] == "ramping" and state_of(state)["pending_actions"]
    both = run_cli("rollout", "resume", "--fresh", "--promote", "--state", str(state))
    assert both.returncode == 3 and "exclude each other" in both.stderr, both.stderr
    other = run_cli("rollout", "start", *args, "--steps", "1,50", timeout=30)
    assert other.returncode == 3 and "run `canaryws rollout abort` first" in other.stderr, other.stderr
    aborted = run_cli("rollout", "abort", "--state", str(state))
    assert aborted.returncode == 0 and "records.strict disabled on" in aborted.stdout, aborted.stdout
    assert state_of(state)["state"] == "aborted" and strict_flag(flags) == (False, 1)
    again = run_cli("rollout", "abort", "--state", str(state))
    assert again.returncode == 3 and "already ended (aborted)" in again.stderr
    status = json.loads(run_cli("rollout", "status", "--json", "--state", str(state)).stdout)
    assert status["state"] == "aborted" and status["running"] is False
    assert [d["kind"] for d in status["decisions"]][-5:] == ["pause", "resume", "pause", "resume", "abort"]

    # a new start replaces a finished rollout (archived beside it)
    rollout = Rollout(tmp_path, *args, "--steps", "1,50", name="again")
    try:
        wait_for(lambda: state_of(state).get("plan", {}).get("steps") == [1, 50] and state_of(state).get(
            "since_ns") is not None, 30, "the new rollout", rollout.log)
        assert [p.name for p in tmp_path.glob("rollout.json.*.done")]
        rollout.proc.send_signal(signal.SIGTERM)
        assert rollout.wait(30) == 2
    finally:
        rollout.stop()


# ------------------------------------------------------------------------ (h) the shadow stage


def with_control_character(n: int) -> list[Any]:
    return ["ok", f" v{n} ", "", "a\x01b"]


def test_the_shadow_stage_passes_on_a_healthy_service(tmp_path: Path) -> None:
    state = tmp_path / "rollout.json"
    with Service(tmp_path, flags_doc(strict_rollout=0, strict_enabled=False)) as service, \
            Traffic(service, EARLY + LATE, records=with_control_character):
        rollout = Rollout(tmp_path, *common(service, state, "--steps", "1,100", "--hold", "1.5s",
                                            "--shadow-first", "2s"))
        try:
            wait_for(lambda: state_of(state).get("state") == "shadow" and state_of(state).get("since_ns"), 30,
                     "the shadow stage", rollout.log)
            assert shadow_enabled(service.flags_path) and strict_flag(service.flags_path) == (True, 0)
            assert rollout.wait(60) == 0, rollout.log()[-3000:]
        finally:
            rollout.stop()
    final = state_of(state)
    assert kinds(final)[:3] == [("start", None), ("shadow_start", None), ("shadow_pass", None)], final["decisions"]
    assert kinds(final)[3:] == [("promote", 1), ("complete", 100)]
    assert not shadow_enabled(service.flags_path)
    (shadow,) = [r for r in json_log_lines(rollout.log()) if r["message"] == "rollout judged the shadow stage"]
    assert shadow["batches_compared"] > 0 and shadow["unexpected"] == 0
    # the intended divergence (strict rejects a control character lenient accepts) does not refuse the ramp
    assert set(shadow["by_kind"]) == {"accepted_by_lenient_only"}, shadow
    assert shadow["by_kind"]["accepted_by_lenient_only"]["control_character"] > 0


def write_divergent_summaries(path: Path, count: int = 10) -> None:
    """Lenient connections whose shadow (strict) accepted other values: VALUE_MISMATCH, which strict
    cannot produce by construction (it accepts a subset of what lenient accepts, with the same
    values), so it is written here as the service would write it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
    from canaryws.adapters.telemetry.records import RecordsTelemetry
    from canaryws.core.compare import VALUE_MISMATCH
    from canaryws.core.summary import END_CLOSED, ConnectionSummary

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(path)))
    telemetry = RecordsTelemetry(provider, MeterProvider())
    now = time.time_ns()
    for i in range(count):
        summary = ConnectionSummary(f"div-{i}", f"client-{i}", "lenient", 1, True, "rev", 0.0, end=END_CLOSED,
                                    close_code=1000)
        summary.batches = summary.records = summary.accepted = 4
        summary.shadow_batches, summary.shadow_records, summary.shadow_divergent = 4, 4, 2
        summary.divergence[(VALUE_MISMATCH, "accepted")] = 2
        telemetry.emit_summary(summary, now - 200_000_000, now, None)
    provider.shutdown()


def test_the_shadow_stage_refuses_the_ramp_on_unexpected_divergence(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=0, strict_enabled=False)))
    state = tmp_path / "rollout.json"
    rollout = Rollout(tmp_path, "--traces", str(traces), "--flags", str(flags), "--state", str(state), *FAST,
                      "--hold", "1s", "--shadow-first", "1.5s")
    try:
        wait_for(lambda: state_of(state).get("since_ns") is not None, 30, "the shadow stage", rollout.log)
        time.sleep(0.2)
        write_divergent_summaries(traces)
        assert rollout.wait(30) == 3, rollout.log()[-3000:]
    finally:
        rollout.stop()
    final = state_of(state)
    assert final["state"] == "aborted" and final["reason"] == "the shadow showed unexpected divergence"
    assert kinds(final) == [("start", None), ("shadow_start", None), ("shadow_fail", None)]
    assert final["decisions"][-1]["reasons"] == ["the ramp is refused: value_mismatch/accepted: 20 records"]
    assert strict_flag(flags) == (True, 0) and not shadow_enabled(flags)  # no client was ever moved to strict
