"""The connection benchmarks of ``make bench``: ``bench/storm.py`` (the reconnect storm) on a
small crowd, both servers restarted for real, every connection closed with 1012 and every one
answering again; ``bench/handshake.py`` (canaryws' own parts of a connection's life)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_storm_restarts_each_server_and_every_connection_answers_again(tmp_path: Path) -> None:
    out = tmp_path / "storm.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "storm.py"), "--connections", "120", "--rounds", "1",
         "--timeout", "120", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert set(result["rounds"]) == {"lean", "canaryws"}
    for name, (run,) in result["rounds"].items():
        assert run["connections"] == 120
        assert run["closed_by_restart"] == 120, name  # every connection was closed by the restart
        # the new server came up after the old one drained, and everyone answered after that
        assert 0 < run["drain_s"] < run["restart_s"] < run["recovered_after_signal_s"], name
        assert run["recovered_after_ready_s"] > 0 and run["server_cpu_s"] > 0, name
        assert run["failed_handshakes"] > 0, name  # the clients came back while the server was down
    assert "canaryws / lean: time to answering again" in done.stdout


def test_the_handshake_parts_are_each_measured(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "handshake.py"), "--rounds", "2", "--n", "50", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    medians = result["medians"]
    assert set(medians) == {"token (first time)", "token (remembered)", "admission", "cohort decision",
                            "cohort decision (50 %)",
                            "connect span", "welcome", "connection metrics", "summary span", "logs (INFO)"}
    assert all(len(values) == 2 and min(values) > 0 for values in result["us_per_call"].values())
    # a remembered token skips the signature: far cheaper than the first verification
    assert medians["token (remembered)"] * 5 < medians["token (first time)"]
    assert result["life_us"] < result["life_with_logs_us"]
    assert "a connection, in all" in done.stdout


def test_the_in_process_benchmark_times_every_variant_and_the_core_parts() -> None:
    """bench/inprocess.py (docs/benchmarks.md, "The work itself"): its variants on a few batches,
    and ``--core``'s decode, strict and encode per shape."""
    bench = str(ROOT / "bench" / "inprocess.py")
    done = subprocess.run([sys.executable, bench, "--batches", "200", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for variant in ("lean", "lean-both", "canaryws", "canaryws-telemetry-off", "canaryws-shadow"):
        assert any(line.split()[:1] == [variant] for line in done.stdout.splitlines()), (variant, done.stdout)
    done = subprocess.run([sys.executable, bench, "--core"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("today", "mixed-script"))]
    assert len(rows) == 7, done.stdout
    for row in rows:
        decode, strict, encode, total = (float(v) for v in row[-4:])
        # the whole path is timed on its own: more than any of its parts, about their sum
        assert 0 < max(decode, strict, encode) < total < 1.5 * (decode + strict + encode), row
