"""The anytime-valid rate-ratio monitor: its guarantee under continuous looking, its power,
its interval, and the guard built on it (stages, units as they close, the replay).

The full measurement (300 guard-weeks per traffic shape) is bench/guard_simulation.py and
docs/guard.md; a reduced run of it is at the end of this file."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from canaryws.analysis.guard import Guard, UnitStream
from canaryws.analysis.judge import Rules
from canaryws.analysis.sequential import (
    MULTIPLIERS,
    Counts,
    RateRatioMonitor,
    beta_binomial_cs,
    exposure_to_detect,
    start_weight_log,
)
from canaryws.core.summary import END_CLOSED, END_COHORT_CHANGED, ConnectionSummary

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import guard_simulation


def test_the_start_weights_sum_to_one() -> None:
    head = sum(math.exp(start_weight_log(k)) for k in range(200_000))
    # the tail beyond, by the integral bound: sum_{k >= K} k^-s <= K^(1-s) / (s - 1) + K^-s
    tail = 0.5 / 4.595111825842942 * (200_000 ** -0.25 / 0.25 + 200_000 ** -1.25)
    assert head < 1.0 < head + tail + 1e-9


def test_no_evidence_is_an_e_value_of_one() -> None:
    monitor = RateRatioMonitor(1.1)
    assert monitor.log_e == 0.0 and monitor.p_value == 1.0
    monitor.add(30.0, Counts(10, 10, 0, 0))
    monitor.add(7 * 86_400.0, Counts(10, 10, 0, 0))  # many blocks start, nothing is learnt
    assert monitor.log_e == pytest.approx(0.0, abs=1e-9) and monitor.p_value == 1.0


def _feed(monitor: RateRatioMonitor, rng: np.random.Generator, ticks: int, n_c: float, n_b: float,
          p_c: float, p_b: float, start: int = 0) -> float:
    worst = 0.0
    for tick in range(start, start + ticks):
        e_c, e_b = rng.poisson(n_c), rng.poisson(n_b)
        monitor.add((tick + 1) * 30.0, Counts(int(e_c), int(e_b), int(rng.binomial(e_c, p_c)),
                                              int(rng.binomial(e_b, p_b))))
        worst = max(worst, monitor.log_e)
    return worst


@pytest.mark.parametrize(("n_c", "n_b", "p"), [(10, 10, 0.08), (2, 38, 0.05), (10, 10, 0.3)])
def test_looking_every_tick_keeps_the_false_alarm_rate_below_alpha(n_c: float, n_b: float, p: float) -> None:
    """Healthy cohorts (the same rate; the null allows up to 1.1 times), looked at every tick for
    a day: the share of runs whose e-value ever reached 1/alpha stays below alpha."""
    alpha, runs = 0.1, 40
    crossed = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        if _feed(RateRatioMonitor(1.1), rng, 2880, n_c, n_b, p, p) >= math.log(1 / alpha):
            crossed += 1
    assert crossed <= 0.2 * runs, crossed  # measured: 0 in each shape; alpha = 0.1 would allow 4


def test_a_tripled_rate_from_the_start_is_found_and_a_late_one_too() -> None:
    rng = np.random.default_rng(7)
    early = RateRatioMonitor(1.1)
    assert _feed(early, rng, 120, 10, 10, 0.24, 0.08) > math.log(300)  # within an hour
    late = RateRatioMonitor(1.1)
    _feed(late, rng, 2880, 10, 10, 0.08, 0.08)  # a healthy day first
    assert late.log_e < 0.0
    assert _feed(late, rng, 240, 10, 10, 0.24, 0.08, start=2880) > math.log(300)  # still found within 2 h


def test_a_blip_in_both_cohorts_moves_nothing() -> None:
    monitor = RateRatioMonitor(1.1)
    monitor.add(30.0, Counts(500, 500, 150, 150))  # 30 % of every connection, at once
    assert monitor.log_e < 0.0


def test_the_ratio_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        monitor = RateRatioMonitor(1.1)
        _feed(monitor, rng, 60, 10, 30, 0.06, 0.03)
        low, high = monitor.interval(0.05)
        covered += low is not None and high is not None and low <= 2.0 <= high
    assert covered >= 190  # at least 95 %; the confidence sequence is conservative


def test_beta_binomial_confidence_sequence() -> None:
    low, high = beta_binomial_cs(30, 100, 0.05)
    assert 0.15 < low < 0.3 < high < 0.47
    assert beta_binomial_cs(0, 50, 0.05)[0] == 0.0


def test_exposure_needed_and_exposure_to_detect() -> None:
    monitor = RateRatioMonitor(1.1)
    monitor.add(30.0, Counts(200, 200, 12, 4))
    needed = monitor.exposure_needed(1 / 300)
    assert needed is not None and 0 < needed < 5000
    healthy = RateRatioMonitor(1.1)
    healthy.add(30.0, Counts(200, 200, 4, 4))
    assert healthy.exposure_needed(1 / 300) is None  # within the tolerance: nothing would decide
    assert exposure_to_detect(Counts(0, 100, 0, 1), 1.1, 3.0, 0.02, 0.01) is None
    common = exposure_to_detect(Counts(500, 500, 40, 40), 1.1, 3.0, 0.02, 1 / 300)
    rare = exposure_to_detect(Counts(5000, 5000, 50, 50), 1.1, 3.0, 0.02, 1 / 300)
    none = exposure_to_detect(Counts(1000, 1000, 0, 0), 1.1, 3.0, 0.02, 1 / 300)
    assert common is not None and rare is not None and none is not None
    assert common < 600 < 1000 < none < 2000 < rare  # measured: 477, 1545, 3816 connections
    unbalanced = exposure_to_detect(Counts(250, 4750, 50, 50), 1.1, 3.0, 0.02, 1 / 300)
    assert unbalanced is not None and unbalanced > rare  # a 5 % canary needs more connections in all


def test_multipliers_are_above_the_tolerance() -> None:
    assert min(MULTIPLIERS) > 1.0


# -- units as they close --------------------------------------------------------------------


def summary(connection: str, client: str, strategy: str, *, seq: int = 0, end: str = END_CLOSED,
            close_code: int | None = 1000, share: float | None = 0.5) -> ConnectionSummary:
    return ConnectionSummary(connection, client, strategy, 1, False, "rev", share, seq=seq, end=end,
                             close_code=close_code if end == END_CLOSED else None)


def test_units_are_handed_on_when_their_connection_closes_with_retries_marked() -> None:
    stream = UnitStream(retry_window_s=30)
    s = 1_000_000_000
    assert stream.add([(summary("a", "c1", "strict", end=END_COHORT_CHANGED), 0, 5 * s)]) == []
    closed = stream.add([(summary("a", "c1", "lenient", seq=1, close_code=1011), 5 * s, 10 * s)])
    assert [(u.connection_id, u.strategy, u.abnormal_close) for u in closed] == [("a", "lenient", True)]
    assert stream.open_units == 0  # the strict part of the same connection is gone too
    (retry,) = stream.add([(summary("b", "c1", "lenient"), 12 * s, 20 * s)])
    assert retry.retry
    (late,) = stream.add([(summary("c", "c1", "lenient"), 100 * s, 120 * s)])
    assert not late.retry


def test_open_units_are_bounded() -> None:
    stream = UnitStream(max_open_s=60)
    s = 1_000_000_000
    stream.add([(summary(f"open-{i}", f"c{i}", "strict", end=END_COHORT_CHANGED), 0, s) for i in range(100)])
    assert stream.open_units == 100
    stream.add([(summary("new", "c", "strict"), 0, 120 * s)])
    assert stream.open_units == 0


def test_a_new_strict_share_starts_a_new_stage() -> None:
    guard = Guard(Rules(min_connections=1, min_batches=0))
    s = 1_000_000_000
    bad = [(summary(f"x{i}", f"c{i}", "strict", close_code=1011), i * s, i * s + 1) for i in range(40)]
    good = [(summary(f"y{i}", f"d{i}", "lenient"), i * s, i * s + 1) for i in range(40)]
    guard.add_slices(bad + good)
    assert guard.judge(100 * s)["verdict"] == "rollback"
    guard.add_slices([(summary("z", "e", "lenient", share=0.1), 200 * s, 201 * s)])
    result = guard.judge(300 * s)
    assert result["stage"] == {"start_ns": 200 * s, "strict_share": 0.1, "number": 2}
    assert result["connections"] == {"strict": 0, "lenient": 1} and result["verdict"] == "hold"
    # a connection that opened under the old share and closes now is left out
    guard.add_slices([(summary("old", "f", "strict", close_code=1011), 150 * s, 310 * s)])
    assert guard.judge(400 * s)["connections"] == {"strict": 0, "lenient": 1}


# -- the measured error rates, reduced ----------------------------------------------------------


def test_reduced_simulation_false_rollbacks_and_detection() -> None:
    """Forty healthy guard-weeks (two shapes) without a false rollback is what a rate of at
    most 1 in 100 gives with probability >= 0.67; seeing 3 or more would reject that rate at
    the 1 % level (binomial). A tripled 8 % rate is found in every run, within hours."""
    rules = Rules()
    canary, mobile = guard_simulation.SHAPES[2], guard_simulation.SHAPES[1]
    false = guard_simulation.healthy(canary, 20, 1, rules) + guard_simulation.healthy(mobile, 20, 2, rules)
    assert false <= 2, false
    delays = guard_simulation.detection(mobile, 8, 3, rules)["guard"]
    assert all(math.isfinite(d) for d in delays), delays
    assert sorted(delays)[len(delays) // 2] <= 60, delays  # the full run's median: see docs/guard.md
