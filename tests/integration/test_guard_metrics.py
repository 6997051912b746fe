"""``canaryws guard --metrics-port``: a real guard process, scraped over HTTP while it judges,
after it rolls back (while it lingers), and gone once it has exited 1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness import flags_doc, free_port, json_log_lines, metric_value, run_cli, write_guard_summaries

pytestmark = pytest.mark.integration

WINDOWS = "canaryws_guard_windows_total"
ROLLBACKS = "canaryws_guard_rollbacks_total"
LAST = "canaryws_guard_last_judgement_timestamp_seconds"


class Guard:
    """One ``canaryws guard`` subprocess serving its metrics on a free port."""

    def __init__(self, tmp_path: Path, strict_close: int, *args: str) -> None:
        self.traces = tmp_path / "traces.jsonl"
        write_guard_summaries(self.traces, strict_close)
        self.flags = tmp_path / "features.json"
        self.flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
        self.port = free_port()
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "canaryws", "guard", "--traces", str(self.traces), "--flags", str(self.flags),
             "--interval", "0.2", "--metrics-port", str(self.port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stderr = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> str:
        response = httpx.get(self.url, timeout=2)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    def scrape_until(self, done: Callable[[str], bool], timeout: float = 30) -> str:
        """Scrape until ``done(text)``; fails if the guard exits or time runs out first."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"guard exited {self.proc.returncode} early:\n{self.finish()}\nlast scrape:\n{text}")
            try:
                text = self.scrape()
            except httpx.TransportError:
                text = ""
            if text and done(text):
                return text
            time.sleep(0.05)
        pytest.fail(f"no such scrape within {timeout} s; last:\n{text}")

    def finish(self, timeout: float = 30) -> str:
        _out, self.stderr = self.proc.communicate(timeout=timeout)
        return self.stderr

    def strict_enabled(self) -> bool:
        doc = json.loads(self.flags.read_text())
        return bool(next(f for f in doc["features"] if f["name"] == "records.strict")["enabled"])


@pytest.fixture
def guards() -> Iterator[list[Guard]]:
    started: list[Guard] = []
    yield started
    for guard in started:  # never leave a guard (or its port) behind
        if guard.proc.poll() is None:
            guard.proc.kill()
            guard.proc.communicate()


def windows(text: str, verdict: str) -> float:
    return metric_value(text, WINDOWS, verdict=verdict)


def test_guard_serves_its_judgements_while_it_watches(tmp_path: Path, guards: list[Guard]) -> None:
    guard = Guard(tmp_path, 1000, "--detect-excess", "0.9")
    guards.append(guard)
    text = guard.scrape_until(lambda t: windows(t, "promote") >= 3)
    assert windows(text, "rollback") == 0 and windows(text, "hold") == 0  # every verdict is there from 0
    assert f"{ROLLBACKS} 0.0" in text.splitlines()
    assert guard.started <= metric_value(text, LAST) <= time.time()
    later = guard.scrape_until(lambda t: windows(t, "promote") > windows(text, "promote"))
    assert metric_value(later, LAST) > metric_value(text, LAST)

    guard.proc.send_signal(signal.SIGINT)  # the guard runs until interrupted
    stderr = guard.finish()
    judged = [r for r in json_log_lines(stderr) if r["message"] == "guard judged the evidence"]
    assert judged and all(r["verdict"] == "promote" for r in judged)
    served = [r for r in json_log_lines(stderr) if r["message"] == "guard metrics served"]
    assert [r["metrics_url"] for r in served] == [guard.url]
    assert guard.strict_enabled()


def test_guard_serves_the_rollback_while_it_lingers_then_exits_1(tmp_path: Path, guards: list[Guard]) -> None:
    guard = Guard(tmp_path, 1011, "--metrics-linger", "4")
    guards.append(guard)
    text = guard.scrape_until(lambda t: metric_value(t, ROLLBACKS) >= 1)
    rolled_back_seen = time.monotonic()
    assert metric_value(text, ROLLBACKS) == 1
    assert windows(text, "rollback") == 1
    assert windows(text, "promote") == 0 and windows(text, "hold") == 0
    assert not guard.strict_enabled()  # the flag was disabled before the count went up

    again = guard.scrape()  # still served, unchanged: no judging while lingering
    assert metric_value(again, ROLLBACKS) == 1 and windows(again, "rollback") == 1
    assert metric_value(again, LAST) == metric_value(text, LAST)

    stderr = guard.finish()
    lingered = time.monotonic() - rolled_back_seen
    assert guard.proc.returncode == 1, stderr
    assert 2.5 <= lingered <= 15, lingered
    records = json_log_lines(stderr)
    (linger,) = [r for r in records if r["message"] == "serving metrics before exiting"]
    assert linger["linger_seconds"] == 4
    assert [r for r in records if r["message"].startswith("rolled back")]
    with pytest.raises(httpx.TransportError):
        httpx.get(guard.url, timeout=2)


def test_guard_lingers_60s_by_default_and_sigterm_ends_it_with_exit_1(tmp_path: Path, guards: list[Guard]) -> None:
    guard = Guard(tmp_path, 1011, "--once")
    guards.append(guard)
    text = guard.scrape_until(lambda t: metric_value(t, ROLLBACKS) >= 1)
    assert metric_value(text, ROLLBACKS) == 1 and windows(text, "rollback") == 1
    time.sleep(3)
    assert guard.proc.poll() is None, guard.finish()  # a --once guard would have exited by now
    assert metric_value(guard.scrape(), ROLLBACKS) == 1

    stopping = time.monotonic()
    guard.proc.send_signal(signal.SIGTERM)
    stderr = guard.finish(timeout=10)
    assert guard.proc.returncode == 1, stderr
    assert time.monotonic() - stopping < 5
    (linger,) = [r for r in json_log_lines(stderr) if r["message"] == "serving metrics before exiting"]
    assert linger["linger_seconds"] == 60
    assert [r for r in json_log_lines(stderr) if r["message"] == "metrics linger interrupted"]


def test_dry_run_counts_the_verdicts_but_no_rollback(tmp_path: Path, guards: list[Guard]) -> None:
    guard = Guard(tmp_path, 1011, "--once", "--dry-run", "--metrics-linger", "3")
    guards.append(guard)
    text = guard.scrape_until(lambda t: windows(t, "rollback") >= 1)
    assert metric_value(text, ROLLBACKS) == 0
    stderr = guard.finish()
    assert guard.proc.returncode == 1, stderr
    assert guard.strict_enabled()


def test_metrics_linger_without_metrics_port_is_an_error(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    write_guard_summaries(traces, 1011)
    flags = tmp_path / "features.json"
    flags.write_text(json.dumps(flags_doc(strict_rollout=50)))
    done = run_cli("guard", "--traces", str(traces), "--flags", str(flags), "--once", "--metrics-linger", "5")
    assert done.returncode == 3, done.stderr
    assert "--metrics-linger needs --metrics-port" in done.stderr
    assert json.loads(flags.read_text())["features"][0]["enabled"] is True
