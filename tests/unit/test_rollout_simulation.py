"""Simulated traffic replayed through the real rollout controller and guard, step by step.

The full measurement (1,000 healthy and 200 harmful rollouts per fleet size, and the thin
steps) is bench/rollout_simulation.py and docs/rollout.md; here, a fixed seed set small
enough for the suite: a few seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import rollout_simulation as sim

from canaryws.analysis.judge import Rules
from canaryws.analysis.rollout import COMPLETED, ROLLED_BACK

SEEDS = tuple(range(12))
LARGE = 40_000  # connections that end per 5 minutes: 400 strict ones at the 1 % step
LARGEST = 100_000  # 1,000 strict ones at 1 %: a tripled rate is caught there (at 40,000, 15 % of the time at 5 %)


def test_healthy_traffic_through_all_steps_rolls_back_nothing() -> None:
    for seed in SEEDS:
        rollout = sim.run_rollout(LARGE, sim.PLAN, Rules(), np.random.default_rng([seed, 1]))
        assert rollout.final == COMPLETED, (seed, rollout)
        assert [s.percent for s in rollout.steps] == list(sim.PLAN.steps)
        assert not any(s.outcome == "rollback" for s in rollout.steps)
        # the judge promoted every step from 5 % to 50 % after its hold; 100 % has no lenient cohort to
        # compare with, so it completes after its hold (docs/rollout.md, "The last step")
        for step in rollout.steps[1:-1]:
            assert step.outcome == "promote" and step.end_s - step.start_s >= sim.PLAN.hold_s, (seed, step)
        last = rollout.steps[-1]
        assert last.outcome == "complete" and sim.PLAN.hold_s <= last.end_s - last.start_s < sim.PLAN.max_hold_s


def test_a_harmful_canary_is_rolled_back_at_the_first_step_of_a_large_fleet() -> None:
    for seed in SEEDS:
        rollout = sim.run_rollout(LARGEST, sim.PLAN, Rules(), np.random.default_rng([seed, 2]), harm=sim.HARM)
        assert rollout.final == ROLLED_BACK and rollout.rolled_back_at == 1, (seed, rollout)
        assert rollout.duration_s < sim.PLAN.max_hold_s and rollout.strict < 3_000


def test_a_step_too_thin_to_decide_pauses_at_its_maximum_hold() -> None:
    # 400 connections per 5 minutes: 4 strict ones at 1 %, far from the ~800 a decision needs
    rollout = sim.run_rollout(400, sim.PLAN, Rules(), np.random.default_rng([0, 3]))
    first = rollout.steps[0]
    assert first.percent == 1 and first.outcome == "pause"
    assert first.end_s - first.start_s == sim.PLAN.max_hold_s
    assert any("too little evidence" in why or "too thin" in why for why in first.held_for)
    assert rollout.final == COMPLETED  # the simulated operator promoted it by hand (resume --promote)
