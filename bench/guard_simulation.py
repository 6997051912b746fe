"""The guard's error rates, measured by simulation (docs/guard.md has the method and the results).

Healthy traffic (both cohorts identical) of four shapes, and the same shapes with the strict
cohort's abnormal-close rate tripled from a random moment, fed to the real decision rule
(``canaryws.analysis.guard.Guard``: the e-processes of the critical metrics and the rollback
rule ``canaryws guard`` and ``canaryws guard --replay`` apply) every 30 s of simulated time.
What a tick of 30 s brings is drawn per cohort: connections that end ~ Poisson, abnormal
closes among them ~ binomial, retries (clients reconnecting after an abnormal close, 90 %
of them, counted in the next tick) and connections with an error frame (2 %) likewise.

    .venv/bin/python bench/guard_simulation.py                 # the full run (about 5 minutes)
    .venv/bin/python bench/guard_simulation.py --weeks 20 --runs 10 --json out.json

Each healthy guard-week is a fresh guard (a new stage each week: more chances of a false
rollback than one guard left running, whose bound holds for all its weeks together). The
oracle column is the best any rule could do with the same data: it knows the baseline rate
and the moment of the change, and runs a one-sided exact Poisson test of the strict
cohort's abnormal closes since the change at 0.01 every 30 s (without paying for its many
looks).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from canaryws.analysis.guard import Guard
from canaryws.analysis.judge import BASELINE, CANARY, Rules
from canaryws.analysis.sequential import Counts

TICK_S = 30.0
WEEK_S = 7 * 86_400.0
RETRY_SHARE = 0.9
ERROR_RATE = 0.02
METRICS = ("abnormal_close_rate", "error_frame_rate", "retry_rate")  # the critical ones, fed as counts
BATCHES_PER_CONNECTION = 20


@dataclass(frozen=True)
class Shape:
    name: str
    strict_per_5min: float  # connections that end, per 5 minutes
    lenient_per_5min: float
    abnormal: float  # abnormal-close rate of both cohorts when healthy
    blips_per_day: float = 0.0  # network blips: for one minute, 30 % of connections close abnormally in both
    blip_rate: float = 0.30


SHAPES = (
    Shape("100/100, 1 %", 100, 100, 0.01),
    Shape("100/100, 8 % (mobile)", 100, 100, 0.08),
    Shape("5 % canary 20/380, 1 %", 20, 380, 0.01),
    Shape("100/100, 1 %, network blips", 100, 100, 0.01, blips_per_day=6.0),
)


@dataclass
class Traffic:
    """Pre-drawn ticks of one cohort pair."""

    exposure: np.ndarray  # (ticks, 2): strict, lenient
    abnormal: np.ndarray
    errors: np.ndarray
    retries: np.ndarray
    change_tick: int | None = None
    oracle: dict[str, float] = field(default_factory=dict)


def draw(shape: Shape, seconds: float, rng: np.random.Generator, *, triple_from_s: float | None = None) -> Traffic:
    ticks = int(seconds / TICK_S)
    lam = np.array([shape.strict_per_5min, shape.lenient_per_5min]) * TICK_S / 300.0
    exposure = rng.poisson(lam, size=(ticks, 2))
    rate = np.full((ticks, 2), shape.abnormal)
    if shape.blips_per_day:
        blips = rng.random(ticks) < shape.blips_per_day * TICK_S / 86_400.0
        for tick in np.flatnonzero(blips):
            rate[tick: tick + int(60 / TICK_S), :] = shape.blip_rate
            exposure[tick: tick + int(60 / TICK_S), :] *= 2
    change = None
    if triple_from_s is not None:
        change = int(triple_from_s / TICK_S)
        rate[change:, 0] = np.minimum(1.0, rate[change:, 0] * 3)
    abnormal = rng.binomial(exposure, rate)
    errors = rng.binomial(exposure, ERROR_RATE)
    retries = np.zeros_like(abnormal)
    retries[1:] = rng.binomial(abnormal[:-1], RETRY_SHARE)
    return Traffic(exposure, abnormal, errors, np.minimum(retries, exposure), change)


def _counts(traffic: Traffic, tick: int, metric: str) -> Counts:
    e = traffic.exposure[tick]
    x = {"abnormal_close_rate": traffic.abnormal, "error_frame_rate": traffic.errors,
         "retry_rate": traffic.retries}[metric][tick]
    return Counts(int(e[0]), int(e[1]), int(x[0]), int(x[1]))


def feed(guard: Guard, traffic: Traffic, tick: int, t_s: float) -> None:
    """Tick ``tick`` of ``traffic`` into ``guard``, ending ``t_s`` seconds after its stage start
    (20 batches per connection). bench/rollout_simulation.py feeds its guards the same way."""
    counts = {m: _counts(traffic, tick, m) for m in METRICS}
    batches = {CANARY: int(traffic.exposure[tick, 0]) * BATCHES_PER_CONNECTION,
               BASELINE: int(traffic.exposure[tick, 1]) * BATCHES_PER_CONNECTION}
    guard.add_counts(t_s, counts, batches)


def run_guard(traffic: Traffic, rules: Rules) -> float | None:
    """Seconds since the stage start at which the guard rolls back, or None."""
    guard = Guard(rules, since_ns=0)
    ticks = traffic.exposure.shape[0]
    for tick in range(ticks):
        t_s = (tick + 1) * TICK_S
        feed(guard, traffic, tick, t_s)
        if guard.failed():
            return t_s
    return None


def oracle_delay(traffic: Traffic, shape: Shape, alpha: float = 0.01) -> float | None:
    """Seconds after the change at which the oracle test (see the module docstring) rejects."""
    from scipy.stats import poisson

    assert traffic.change_tick is not None
    events = exposure = 0
    for tick in range(traffic.change_tick, traffic.exposure.shape[0]):
        exposure += int(traffic.exposure[tick, 0])
        events += int(traffic.abnormal[tick, 0])
        if events and poisson.sf(events - 1, exposure * shape.abnormal) < alpha:
            return (tick + 1 - traffic.change_tick) * TICK_S
    return None


def healthy(shape: Shape, weeks: int, seed: int, rules: Rules) -> int:
    """Guard-weeks (of ``weeks``) with a false rollback."""
    false = 0
    for week in range(weeks):
        rng = np.random.default_rng([seed, week])
        if run_guard(draw(shape, WEEK_S, rng), rules) is not None:
            false += 1
    return false


def detection(shape: Shape, runs: int, seed: int, rules: Rules,
              horizon_s: float = 3 * 86_400.0) -> dict[str, list[float]]:
    """Minutes from the tripling (uniform in 1 h to 25 h after the stage start) to the rollback."""
    guard_delays: list[float] = []
    oracle_delays: list[float] = []
    for run in range(runs):
        rng = np.random.default_rng([seed, 10_000 + run])
        change_s = float(rng.uniform(3_600.0, 25 * 3_600.0))
        traffic = draw(shape, change_s + horizon_s, rng, triple_from_s=change_s)
        at = run_guard(traffic, rules)
        guard_delays.append(math.inf if at is None else (at - change_s) / 60.0)
        delay = oracle_delay(traffic, shape)
        oracle_delays.append(math.inf if delay is None else delay / 60.0)
    return {"guard": guard_delays, "oracle": oracle_delays}


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _quartiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weeks", type=int, default=300, help="healthy guard-weeks per shape")
    parser.add_argument("--runs", type=int, default=40, help="runs with a tripled rate per shape")
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    rules = Rules()
    results = []
    print(f"{'shape':<32} {'false rollbacks':>18} {'guard median [IQR] min':>26} {'oracle median':>14}")
    for index, shape in enumerate(SHAPES):
        started = time.monotonic()
        false = healthy(shape, args.weeks, args.seed + index, rules)
        delays = detection(shape, args.runs, args.seed + index, rules)
        low, high = _quartiles(delays["guard"])
        row = {
            "shape": shape.name,
            "weeks": args.weeks,
            "false_rollbacks": false,
            "false_rollbacks_per_100_weeks": 100.0 * false / args.weeks,
            "runs": args.runs,
            "guard_median_min": _median(delays["guard"]),
            "guard_quartiles_min": [low, high],
            "guard_missed": sum(math.isinf(d) for d in delays["guard"]),
            "oracle_median_min": _median(delays["oracle"]),
            "seconds": round(time.monotonic() - started, 1),
        }
        results.append(row)
        print(f"{shape.name:<32} {false:>4} / {args.weeks:<4} weeks  "
              f"{row['guard_median_min']:>8.0f} [{low:.0f}, {high:.0f}]      {row['oracle_median_min']:>10.0f}"
              f"   ({row['seconds']} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "rules": rules.to_dict(), "results": results},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
