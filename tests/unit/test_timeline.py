"""The report's time series (canaryws.analysis.timeline): known counts give known rates and
intervals, the bands cover the true difference as documented (seeded simulations), the rollout
step line and a rollout controller's decisions."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from scipy.stats import binomtest

from canaryws.analysis.judge import Rules, judge
from canaryws.analysis.sequential import beta_binomial_cs
from canaryws.analysis.timeline import (
    MAX_STEPS,
    anytime_difference,
    iso,
    newcombe,
    parse_decisions,
    parse_iso,
    rate_series,
    rollout_from_units,
    timeline,
    wilson,
)
from canaryws.analysis.units import ConnectionUnit

T0 = parse_iso("2026-12-06T20:00:00+00:00")
S = 1_000_000_000


def unit(i: int, strategy: str, end_s: float, *, abnormal: bool = False, share: float | None = 0.5,
         start_s: float | None = None, closed: bool = True, synthetic: bool = False) -> ConnectionUnit:
    start = T0 + int((end_s - 10 if start_s is None else start_s) * S)
    return ConnectionUnit(f"k{i}", f"c{i}", strategy, start, T0 + int(end_s * S), closed=closed,
                          close_code=1006 if abnormal else 1000, batches=5, records=5, accepted=5,
                          strict_share=share, synthetic=synthetic)


# -- intervals ---------------------------------------------------------------------------


@pytest.mark.parametrize(("events", "n"), [(0, 1), (0, 20), (1, 20), (3, 40), (20, 40), (39, 40), (40, 40),
                                           (7, 1000), (500, 1000)])
def test_wilson_is_scipys_wilson_interval(events: int, n: int) -> None:
    expected = binomtest(events, n).proportion_ci(0.95, method="wilson")
    low, high = wilson(events, n) or (math.nan, math.nan)
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)


def test_wilson_without_connections_and_bad_counts() -> None:
    assert wilson(0, 0) is None
    with pytest.raises(ValueError, match="events"):
        wilson(5, 4)


# Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score), 95 %.
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_reproduces_the_published_table(counts: tuple[int, int, int, int],
                                                 expected: tuple[float, float]) -> None:
    low, high = newcombe(*counts) or (math.nan, math.nan)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize(("counts", "_"), NEWCOMBE_TABLE_II)
def test_the_anytime_band_is_the_cohorts_sequences_and_wider(counts: tuple[int, int, int, int], _: Any) -> None:
    x_c, n_c, x_b, n_b = counts
    low, high = anytime_difference(*counts) or (math.nan, math.nan)
    low_c, high_c = beta_binomial_cs(x_c, n_c, 0.025)
    low_b, high_b = beta_binomial_cs(x_b, n_b, 0.025)
    assert (low, high) == pytest.approx((low_c - high_b, high_c - low_b), abs=1e-9)
    pointwise = newcombe(*counts) or (math.nan, math.nan)
    assert low < pointwise[0] + 1e-12 and high > pointwise[1] - 1e-12
    assert anytime_difference(1, 0, 1, 1) is None and newcombe(1, 1, 0, 0) is None


def _simulate(rng: random.Random, n: int, p: float) -> list[int]:
    return [1 if rng.random() < p else 0 for _ in range(n)]


def test_the_pointwise_band_covers_the_true_difference_95_percent_at_one_time() -> None:
    """Seeded: 4,000 comparisons of 150 strict and 600 lenient connections at 6 % and 3 %."""
    rng = random.Random(2024)
    p_c, p_b, covered, runs = 0.06, 0.03, 0, 4000
    for _ in range(runs):
        x_c = sum(_simulate(rng, 150, p_c))
        x_b = sum(_simulate(rng, 600, p_b))
        low, high = newcombe(x_c, 150, x_b, 600) or (math.nan, math.nan)
        covered += low <= p_c - p_b <= high
    assert 0.935 <= covered / runs <= 0.965, covered / runs


def test_the_anytime_band_covers_the_whole_series_at_least_95_percent_and_the_pointwise_does_not() -> None:
    """Seeded: 300 series of 40 points (rate_series over connections ending through an hour);
    the anytime band covers the true difference at every point at once in at least 95 % of them,
    the pointwise band, read along the series, in fewer."""
    rng = random.Random(7)
    p_c, p_b, runs = 0.08, 0.04, 300
    anytime = pointwise = 0
    for _ in range(runs):
        units = [unit(i, "strict" if i % 4 == 0 else "lenient", rng.uniform(1, 3600),
                      abnormal=rng.random() < (p_c if i % 4 == 0 else p_b)) for i in range(800)]
        series = rate_series(units, ["abnormal_close_rate"], T0, T0 + 3600 * S)["abnormal_close_rate"]
        points = [p for p in series if p["difference"] is not None]
        assert len(points) >= 35
        anytime += all(p["cs_low"] <= p_c - p_b <= p["cs_high"] for p in points)
        pointwise += all(p["low"] <= p_c - p_b <= p["high"] for p in points)
    assert anytime / runs >= 0.95, anytime / runs
    assert pointwise < anytime and pointwise / runs < 0.95, (pointwise / runs, anytime / runs)


# -- the series --------------------------------------------------------------------------


def test_known_counts_give_known_rates_and_intervals() -> None:
    """Four points over 400 s: strict 1 abnormal of 2, 2 of 3, 2 of 4; lenient 0 of 4, then 1 of 8."""
    units = [
        unit(0, "strict", 50, abnormal=True), unit(1, "strict", 90),
        unit(2, "lenient", 20), unit(3, "lenient", 40), unit(4, "lenient", 60), unit(5, "lenient", 100),
        unit(6, "strict", 250, abnormal=True), unit(7, "strict", 390),
        unit(8, "lenient", 210, abnormal=True), *(unit(9 + i, "lenient", 220 + i) for i in range(3)),
        unit(20, "strict", 395, closed=False),  # still open: not counted
        unit(21, "shadow-only", 395),  # not a cohort: not counted
    ]
    series = rate_series(units, ["abnormal_close_rate", "retry_rate"], T0, T0 + 400 * S, points=4)
    points = series["abnormal_close_rate"]
    assert [p["time"] for p in points] == [iso(T0 + k * 100 * S) for k in (1, 2, 3, 4)]
    assert [(p["strict"]["events"], p["strict"]["n"], p["lenient"]["events"], p["lenient"]["n"]) for p in points] \
        == [(1, 2, 0, 4), (1, 2, 0, 4), (2, 3, 1, 8), (2, 4, 1, 8)]
    last = points[-1]
    assert last["strict"]["rate"] == 0.5 and last["lenient"]["rate"] == 0.125
    assert last["difference"] == 0.375
    assert (last["strict"]["low"], last["strict"]["high"]) == wilson(2, 4)
    assert (last["low"], last["high"]) == newcombe(2, 4, 1, 8)
    assert (last["cs_low"], last["cs_high"]) == anytime_difference(2, 4, 1, 8)
    assert all(p["difference"] == 0.0 and p["strict"]["events"] == 0 for p in series["retry_rate"])


def test_a_point_without_connections_in_a_cohort_has_no_difference() -> None:
    units = [unit(0, "lenient", 10), unit(1, "strict", 90)]
    first, last = rate_series(units, ["abnormal_close_rate"], T0, T0 + 100 * S, points=2)["abnormal_close_rate"]
    assert first["difference"] is None and first["low"] is None and first["cs_high"] is None
    assert first["strict"] == {"n": 0, "events": 0, "rate": None, "low": None, "high": None}
    assert last["difference"] == 0.0


def test_the_timeline_ends_with_the_judges_totals_and_leaves_synthetic_connections_out() -> None:
    rng = random.Random(3)
    units = [unit(i, "strict" if i % 2 else "lenient", rng.uniform(0, 1800), abnormal=rng.random() < 0.1)
             for i in range(300)]
    units += [unit(1000 + i, "strict", 900, abnormal=True, synthetic=True) for i in range(20)]
    report = judge(units, Rules())
    line = timeline(units)
    assert set(line["metrics"]) == {"abnormal_close_rate", "error_frame_rate", "retry_rate"}  # the critical ones
    for metric in report["metrics"]:
        if metric["test"] != "rate-ratio":
            continue
        last = line["metrics"][metric["name"]][-1]
        for cohort in ("strict", "lenient"):
            assert (last[cohort]["n"], last[cohort]["events"]) == (metric[cohort]["n"], metric[cohort]["events"])
    assert len(line["metrics"]["abnormal_close_rate"]) == 40
    assert line["start"] == iso(min(u.start_ns for u in units if not u.synthetic))
    assert "pointwise 95%" in line["band"] and "anytime-valid 95%" in line["anytime_band"]


def test_an_empty_window_has_empty_series() -> None:
    line = timeline([])
    assert line["start"] is None and all(points == [] for points in line["metrics"].values())
    assert line["rollout"] == {"source": "connections", "steps": []} and line["decisions"] == []


# -- rollout and decisions ---------------------------------------------------------------


def test_the_rollout_from_connections_steps_at_each_configured_share() -> None:
    units = [unit(i, "lenient", 0, start_s=s, share=share)
             for i, (s, share) in enumerate([(0, 0.01), (60, 0.01), (900, 0.05), (1000, None), (1200, 0.05),
                                             (2100, 0.25), (3000, 0.25)])]
    assert rollout_from_units(units) == [{"time": iso(T0), "percent": 1.0}, {"time": iso(T0 + 900 * S), "percent": 5.0},
                                         {"time": iso(T0 + 2100 * S), "percent": 25.0}]


def test_a_flickering_rollout_is_resampled() -> None:
    units = [unit(i, "lenient", 0, start_s=i, share=0.05 if i % 2 else 0.25) for i in range(2 * MAX_STEPS)]
    steps = rollout_from_units(units, points=10)
    assert 1 <= len(steps) <= 11 and {s["percent"] for s in steps} <= {5.0, 25.0}


DECISIONS = {
    "flag": "records.strict",  # other keys are ignored
    "decisions": [
        {"time": "2026-12-06T20:35:00.000000+00:00", "kind": "promote", "step": 2, "percent": 25, "reasons": ["ok"]},
        {"time": "2026-12-06T19:00:00Z", "kind": "start", "step": 0, "percent": 1, "reasons": []},
        {"time": "2026-12-06T20:15:00+00:00", "kind": "promote", "step": 1, "percent": 5, "reasons": ["ok"]},
        {"time": "2026-12-06T20:20:00", "kind": "hold", "step": 1, "percent": 5},
        {"time": "2026-12-06T23:00:00+01:00", "kind": "rollback", "step": 2, "percent": 0, "reasons": ["harm"]},
    ],
}


def test_decisions_are_parsed_in_time_order() -> None:
    decisions = parse_decisions(DECISIONS)
    assert [d["kind"] for d in decisions] == ["start", "promote", "hold", "promote", "rollback"]
    assert decisions[2] == {"time": "2026-12-06T20:20:00.000+00:00", "kind": "hold", "step": 1, "percent": 5.0,
                            "reasons": []}
    assert decisions[-1]["time"] == "2026-12-06T22:00:00.000+00:00"


@pytest.mark.parametrize(("document", "message"), [
    ([], "JSON object"),
    ({"decisions": {}}, "JSON object"),
    ({"decisions": ["promote"]}, "not an object"),
    ({"decisions": [{"kind": "hold"}]}, '"time"'),
    ({"decisions": [{"time": "yesterday", "kind": "hold"}]}, "ISO 8601"),
    ({"decisions": [{"time": "2026-12-06T20:00:00Z"}]}, '"kind"'),
    ({"decisions": [{"time": "2026-12-06T20:00:00Z", "kind": "hold", "percent": 120}]}, "percent"),
    ({"decisions": [{"time": "2026-12-06T20:00:00Z", "kind": "hold", "percent": "5"}]}, "percent"),
])
def test_a_bad_decisions_file_is_refused(document: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_decisions(document)


def test_decisions_draw_the_rollout_and_those_in_the_window_are_kept() -> None:
    units = [unit(i, "strict" if i % 2 else "lenient", 60 + i * 36, share=0.5) for i in range(100)]
    line = timeline(units, start_ns=T0, end_ns=T0 + 3600 * S, decisions=parse_decisions(DECISIONS))
    assert line["rollout"] == {"source": "decisions", "steps": [
        {"time": iso(T0), "percent": 1.0},  # the start before the window: its percent from the window's start
        {"time": "2026-12-06T20:15:00.000+00:00", "percent": 5.0},
        {"time": "2026-12-06T20:35:00.000+00:00", "percent": 25.0},
    ]}
    assert [d["kind"] for d in line["decisions"]] == ["promote", "hold", "promote"]
    without = timeline(units, start_ns=T0, end_ns=T0 + 3600 * S)
    assert without["rollout"] == {"source": "connections", "steps": [{"time": iso(T0 + 50 * S), "percent": 50.0}]}
