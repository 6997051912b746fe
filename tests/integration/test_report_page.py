"""The report page in a real browser: ``canaryws report --html`` (the real CLI) over an hour of
connection summaries written by the service's own exporter, with the strict share stepping
1 → 5 → 25 % and a rollout controller's decisions file, rendered by a headless Chromium
(Debian's ``chromium``: ``make system-deps``) to a PNG. The plots must be there in pixels: the
bands' and the rollout line's colours cover enough of the screenshot, and the same check fails
on the same page with its figures removed, so it can fail.

The screenshots stay in the test's ``tmp_path`` (``report.png``, ``no-plots.png``) to be looked at.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from canaryws.analysis.render.plots import ANYTIME_COLOUR, BAND_COLOUR, ROLLOUT_COLOUR
from harness import run_cli

pytestmark = pytest.mark.integration

START = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)
START_NS = int(START.timestamp()) * 1_000_000_000
HOUR_S = 3600
STAGES = ((0, 0.01), (15 * 60, 0.05), (35 * 60, 0.25))  # (seconds from START, strict share)
ABNORMAL = {"strict": 0.08, "lenient": 0.03}  # the strict canary closes connections more often
ERROR_FRAMES = {"strict": 0.04, "lenient": 0.04}  # and sends as many error frames
MIN_PIXELS = 2_000  # each checked colour, in a 1280-wide screenshot (the page has ~10x as many)


def _share_at(t_s: float) -> float:
    return [share for begin, share in STAGES if begin <= t_s][-1]


def write_hour_of_summaries(path: Path, seed: int = 24) -> None:
    """About 900 connections of 300 clients over an hour, as the service writes their summaries
    (the real exporter): each client is strict while its hash bucket is below the share
    configured when it connects; strict connections close abnormally more often, and most
    clients whose connection closed abnormally reconnect within seconds (a retry)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from canaryws.adapters.telemetry.file_exporter import OtlpJsonFileSpanExporter
    from canaryws.adapters.telemetry.records import RecordsTelemetry
    from canaryws.core.summary import END_CLOSED, ConnectionSummary

    rng = random.Random(seed)
    buckets = [rng.random() for _ in range(300)]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileSpanExporter(path)))
    telemetry = RecordsTelemetry(provider, MeterProvider())
    connections: list[tuple[int, float]] = [(rng.randrange(len(buckets)), rng.uniform(0, HOUR_S - 300))
                                            for _ in range(850)]
    i = 0
    while i < len(connections):
        client, start = connections[i]
        duration = rng.uniform(20, 240)
        share = _share_at(start)
        strategy = "strict" if buckets[client] < share else "lenient"
        abnormal = rng.random() < ABNORMAL[strategy]
        summary = ConnectionSummary(f"conn-{i}", f"client-{client}", strategy, 1, False, "rev", share,
                                    end=END_CLOSED, close_code=1006 if abnormal else 1000)
        summary.batches = rng.randint(5, 40)
        summary.records = summary.accepted = 10 * summary.batches
        summary.errors = 1 if rng.random() < ERROR_FRAMES[strategy] else 0
        summary.latency[8 + rng.randrange(6)] = summary.batches
        summary.latency_sum_s = 0.002 * summary.batches
        start_ns = START_NS + int(start * 1e9)
        telemetry.emit_summary(summary, start_ns, start_ns + int(duration * 1e9), None)
        if abnormal and rng.random() < 0.7 and start + duration + 300 < HOUR_S:  # the client retries
            connections.append((client, start + duration + rng.uniform(1, 10)))
        i += 1
    provider.shutdown()


def _at(minutes: float) -> str:
    return datetime.fromtimestamp(START.timestamp() + minutes * 60, UTC).isoformat(timespec="microseconds")


def write_decisions(path: Path) -> None:
    """A rollout controller's state file: start at 1 %, holds, two promotes, a pause and a resume."""
    decisions: list[dict[str, Any]] = [{"time": _at(0), "kind": "start", "step": 0, "percent": 1,
                                        "reasons": ["rollout started"]}]
    decisions += [{"time": _at(m), "kind": "hold", "step": 0, "percent": 1, "reasons": ["too little evidence"]}
                  for m in (5, 10)]
    decisions.append({"time": _at(15), "kind": "promote", "step": 1, "percent": 5, "reasons": ["all metrics pass"]})
    decisions += [{"time": _at(m), "kind": "hold", "step": 1, "percent": 5, "reasons": ["marginal"]} for m in (20, 25)]
    decisions.append({"time": _at(28), "kind": "pause", "step": 1, "percent": 5, "reasons": ["operator pause"]})
    decisions.append({"time": _at(31), "kind": "resume", "step": 1, "percent": 5, "reasons": ["operator resume"]})
    decisions.append({"time": _at(35), "kind": "promote", "step": 2, "percent": 25, "reasons": ["all metrics pass"]})
    decisions += [{"time": _at(m), "kind": "hold", "step": 2, "percent": 25, "reasons": ["marginal"]}
                  for m in (45, 55)]
    path.write_text(json.dumps({"decisions": decisions, "state": "running", "flag": "records.strict"}))


def screenshot(chromium: str, page: Path, png: Path) -> Image.Image:
    """``page`` rendered by headless Chromium, 1280 px wide (its height is the window's)."""
    done = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
         f"--user-data-dir={png.parent / 'chromium-profile'}", f"--screenshot={png}",
         "--window-size=1280,5200", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]
    return Image.open(png).convert("RGB")


def pixels_of(image: Image.Image, colour: str, tolerance: int = 6) -> int:
    """How many pixels of ``image`` are ``colour`` (``#rrggbb``), within ``tolerance`` per channel."""
    want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=int)
    rgb = np.asarray(image, dtype=int)
    return int(np.all(np.abs(rgb - want) <= tolerance, axis=-1).sum())


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `make system-deps` installs Debian's chromium")
    return path


def test_the_report_page_draws_time_plots_in_a_real_browser(tmp_path: Path, chromium: str) -> None:
    traces, decisions, page = tmp_path / "traces.jsonl", tmp_path / "decisions.json", tmp_path / "report.html"
    write_hour_of_summaries(traces)
    write_decisions(decisions)

    done = run_cli("report", "--traces", str(traces), "--decisions", str(decisions), "--html", str(page), "--json")
    assert done.returncode in (0, 1, 2), done.stderr
    report = json.loads(done.stdout)
    line = report["timeline"]
    assert line["rollout"]["source"] == "decisions"
    assert [s["percent"] for s in line["rollout"]["steps"]] == [1, 5, 25]
    assert [d["kind"] for d in line["decisions"]].count("promote") == 2
    for name in ("abnormal_close_rate", "error_frame_rate", "retry_rate"):
        points = line["metrics"][name]
        assert 30 <= len(points) <= 60
        last = points[-1]
        metric = next(m for m in report["metrics"] if m["name"] == name)
        assert (last["strict"]["n"], last["strict"]["events"]) == (metric["strict"]["n"], metric["strict"]["events"])
    assert len(done.stdout) < 200_000  # tens of points per metric, not the connections

    html = page.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""\b(?:src|href)\s*=\s*(?:"(?!#)|'(?!#)|[^\s"'#>])""", html)  # only #fragments
    assert "@import" not in html and "<link" not in html
    urls = set(re.findall(r"https?://[^\s\"')<]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls  # namespaces only
    assert html.count("<figure>") >= 3 + 5  # three time figures; rates, latency, accepted, batch latency
    assert "anytime-valid" in html and "pointwise" in html

    image = screenshot(chromium, page, tmp_path / "report.png")
    counts = {colour: pixels_of(image, colour) for colour in (BAND_COLOUR, ANYTIME_COLOUR, ROLLOUT_COLOUR)}
    assert all(n >= MIN_PIXELS for n in counts.values()), counts

    # The same page without its figures: the check above fails on it.
    bare = tmp_path / "no-plots.html"
    bare.write_text(re.sub(r"<figure>.*?</figure>", "", html, flags=re.S))
    bare_image = screenshot(chromium, bare, tmp_path / "no-plots.png")
    bare_counts = {colour: pixels_of(bare_image, colour) for colour in counts}
    assert all(n < MIN_PIXELS for n in bare_counts.values()), bare_counts


def test_a_bad_decisions_file_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    traces, decisions = tmp_path / "traces.jsonl", tmp_path / "decisions.json"
    write_hour_of_summaries(traces)
    for text, message in (("{not json", "is not JSON"), ('{"decisions": [{"kind": "hold"}]}', 'has no "time"'),
                          ('{"state": "running"}', '"decisions" list')):
        decisions.write_text(text)
        done = run_cli("report", "--traces", str(traces), "--decisions", str(decisions), "--json")
        assert done.returncode == 3, (text, done.stdout[-500:], done.stderr)
        assert message in done.stderr and str(decisions) in done.stderr, done.stderr
    done = run_cli("report", "--traces", str(traces), "--decisions", str(tmp_path / "missing.json"), "--json")
    assert done.returncode == 3 and "cannot read" in done.stderr, done.stderr
