"""The rollout controller's decisions, measured by simulation (docs/rollout.md has the method and results).

The real controller (``canaryws.analysis.rollout.Controller``) drives a plan of steps over the
traffic model of bench/guard_simulation.py, as ``canaryws rollout`` drives it: when a step's
percentage takes effect (``Controller.applied``) a fresh ``Guard`` starts on that step's
evidence, and every 30 s of simulated time the guard's verdict goes to ``Controller.judge``;
the actions it returns change the strict share of the fleet.

- **The fleet**: ``F`` connections that end per 5 minutes, split by the step's percentage
  (strict ``F x p``, lenient ``F x (1 - p)``), each cohort drawn as in guard_simulation.draw
  (Poisson connections, binomial abnormal closes at 1 %, errors at 2 %, retries 90 % of the
  previous tick's abnormal closes), fresh for each step.
- **A pause** (a step that reached no decision within its maximum hold): the simulated
  operator promotes the step by hand at once (``resume --promote``), the fastest a human can
  be; every pause is counted per step. (``resume``, which keeps the step's evidence, would go
  on as the single steps below do; ``resume --fresh`` would start the step's evidence again.)
- **The verdict** goes through ``step_verdict``, as in the shell: the 100 % step, with no
  lenient cohort, completes after its hold.
- **Healthy**: both cohorts identical. **Harmful**: the strict abnormal-close rate tripled
  from the start (every step).
- **Single steps**: one step alone, with no maximum hold (looked at every 30 s up to the
  maximum hold, every 5 min after). Healthy: when does the guard first say promote? Its 95th
  percentile is the maximum hold a step of that size needs. Harmful (tripled from the start):
  when is it rolled back, and was it promoted first? The guard's own figures
  (docs/guard.md) are for a tripling that starts 1 to 25 h into a stage; these are for one
  that starts with the stage.

Inside a step's hold the controller acts on a rollback only, so there the verdict is the
guard's rollback rule alone (``Guard.failed``, what ``Guard.judge`` returns as ``rollback``);
after the hold each look is a full ``Guard.judge``.

    .venv/bin/python bench/rollout_simulation.py            # the full run (about 5 minutes)
    .venv/bin/python bench/rollout_simulation.py --quick    # a smoke run (under a minute)
    .venv/bin/python bench/rollout_simulation.py --healthy 200 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # guard_simulation, when imported from elsewhere

from guard_simulation import TICK_S, Shape, draw, feed  # the traffic model, shared

from canaryws.analysis.guard import Guard
from canaryws.analysis.judge import Rules
from canaryws.analysis.rollout import (
    COMPLETED,
    FINAL,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    Action,
    Controller,
    Plan,
    RolloutState,
    step_verdict,
)

SEED = 20261206
PLAN = Plan((1, 5, 25, 50, 100), hold_s=600.0, max_hold_s=2400.0)
FLEETS = (400, 4_000, 40_000, 100_000)  # connections that end per 5 minutes, both cohorts together
ABNORMAL = 0.01
HARM = 3.0
THIN_STEPS = (1, 5, 25, 50)
THIN_HORIZON_S = 48 * 3_600.0
THIN_LOOK_S = 300.0  # after the maximum hold, the thin-step runs look every 5 minutes
_NS = 1_000_000_000


def fleet_shape(fleet: int, percent: int, abnormal: float = ABNORMAL) -> Shape:
    """The traffic of a fleet whose strict share is ``percent`` %."""
    strict = fleet * percent / 100.0
    return Shape(f"{fleet}/5 min at {percent} %", strict, fleet - strict, abnormal)


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


@dataclass
class Step:
    """One step as it went: ``outcome`` promote, pause (then promoted by hand), rollback or
    complete; ``strict``: the strict connections that ended during it."""

    percent: int
    start_s: float
    end_s: float = 0.0
    outcome: str = ""
    strict: int = 0
    held_for: tuple[str, ...] = ()  # at a pause: what the judge was still holding for


@dataclass
class Rollout:
    final: str
    duration_s: float
    steps: list[Step] = field(default_factory=list)

    @property
    def rolled_back_at(self) -> int | None:
        return self.steps[-1].percent if self.final == ROLLED_BACK else None

    @property
    def strict(self) -> int:
        return sum(s.strict for s in self.steps)


def _percent_set(actions: list[Action], percent: int) -> int:
    for action in actions:
        if action.kind == "set_rollout" and action.percent is not None:
            percent = action.percent
        elif action.kind == "disable":
            percent = 0
    return percent


def _holding_for(reasons: tuple[str, ...]) -> tuple[str, ...]:
    """What a held verdict waits for, in short: a thin cohort, or a metric's evidence."""
    out = []
    for reason in reasons:
        if "cohort too thin" in reason:
            out.append(reason.split(" cohort")[0] + " cohort too thin")
        elif "too little evidence" in reason:
            out.append(reason.split(":")[0] + ": too little evidence")
        elif "e-value" in reason:
            out.append(reason.split(":")[0] + ": marginal")
    return tuple(dict.fromkeys(out))


def verdict(guard: Guard, now_s: float, held_s: float, plan: Plan, percent: int) -> tuple[str, list[str]]:
    """The guard's verdict as the controller needs it (``step_verdict``, as the shell applies
    it: at 100 % a hold for want of a lenient cohort completes): inside the hold only a
    rollback matters (``Guard.failed`` is ``Guard.judge``'s rollback rule), after it the full
    judgement."""
    if held_s < plan.hold_s and not guard.failed():
        return "hold", ["inside the hold"]
    return step_verdict(percent, guard.judge(_ns(now_s)), guard.rules)


def run_rollout(fleet: int, plan: Plan, rules: Rules, rng: np.random.Generator, *, harm: float = 1.0) -> Rollout:
    """One rollout of ``plan`` over a fleet, the strict abnormal-close rate ``harm`` times the
    lenient one; pauses are promoted by hand at once."""
    if harm not in (1.0, HARM):
        raise ValueError("the traffic model triples a rate or leaves it")
    controller = Controller(RolloutState(plan))
    now_s, percent = 0.0, 0
    actions = controller.start(_ns(now_s))
    steps: list[Step] = []
    ticks = int(plan.max_hold_s // TICK_S) + 1
    while controller.state.state not in FINAL:
        percent = _percent_set(actions, percent)
        controller.applied(_ns(now_s))  # the flag took effect: the step's evidence starts now
        index = controller.state.step
        step = Step(percent, now_s)
        steps.append(step)
        guard = Guard(rules, since_ns=_ns(now_s))  # a new guard for the new step, as the shell does
        traffic = draw(fleet_shape(fleet, percent), ticks * TICK_S, rng,
                       triple_from_s=0.0 if harm != 1.0 else None)
        start_s = now_s
        for tick in range(ticks):
            now_s = start_s + (tick + 1) * TICK_S
            feed(guard, traffic, tick, now_s - start_s)
            step.strict += int(traffic.exposure[tick, 0])
            said, reasons = verdict(guard, now_s, now_s - start_s, plan, percent)
            actions = controller.judge(_ns(now_s), said, reasons)
            state = controller.state.state
            if state == PAUSED:
                step.outcome, step.held_for = "pause", _holding_for(tuple(reasons))
                actions = controller.resume(_ns(now_s), promote=True, reason="the simulated operator")
            elif state == ROLLED_BACK:
                step.outcome = "rollback"
            elif state == COMPLETED:
                step.outcome = "complete"
            elif controller.state.step != index:
                step.outcome = "promote"
            if step.outcome:
                break
        else:
            raise AssertionError(f"step {percent} % went past its maximum hold without a pause")
        step.end_s = now_s
        assert controller.state.state in FINAL or controller.state.state == RAMPING
    return Rollout(controller.state.state, now_s, steps)


@dataclass
class Single:
    """One step alone, with no maximum hold: seconds to the first promote verdict and to the
    first rollback (None: none within the horizon; on healthy traffic the run ends at the
    promote), and the strict connections that had ended by each."""

    promote_s: float | None = None
    rollback_s: float | None = None
    strict_at_promote: int = 0
    strict_at_rollback: int = 0


def single_step(fleet: int, percent: int, plan: Plan, rules: Rules, rng: np.random.Generator,
                horizon_s: float = THIN_HORIZON_S, *, harm: float = 1.0) -> Single:
    traffic = draw(fleet_shape(fleet, percent), horizon_s, rng, triple_from_s=0.0 if harm != 1.0 else None)
    guard = Guard(rules, since_ns=0)
    out, strict = Single(), 0
    every = int(THIN_LOOK_S // TICK_S)
    for tick in range(traffic.exposure.shape[0]):
        t_s = (tick + 1) * TICK_S
        feed(guard, traffic, tick, t_s)
        strict += int(traffic.exposure[tick, 0])
        if guard.failed():
            out.rollback_s, out.strict_at_rollback = t_s, strict
            return out
        if out.promote_s is not None or t_s < plan.hold_s or (t_s > plan.max_hold_s and (tick + 1) % every):
            continue
        if guard.judge(_ns(t_s))["verdict"] == "promote":
            out.promote_s, out.strict_at_promote = t_s, strict
            if harm == 1.0:
                return out
    return out


# -- figures ------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float | None]:
    """Median, quartiles, 5th/95th percentiles, min and max (order statistics; None for inf)."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    out = {"median": statistics.median(ordered), "q1": at(0.25), "q3": at(0.75), "p5": at(0.05),
           "p95": at(0.95), "min": ordered[0], "max": ordered[-1]}
    return {k: None if math.isinf(v) else round(v, 1) for k, v in out.items()}


def upper95(events: int, runs: int) -> float:
    """The exact (Clopper–Pearson) one-sided 95 % upper bound of a proportion."""
    if events >= runs:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(0.95, events + 1, runs - events))


def healthy(fleet: int, runs: int, seed: int, plan: Plan, rules: Rules) -> dict[str, Any]:
    rollouts = [run_rollout(fleet, plan, rules, np.random.default_rng([seed, 1, fleet, run])) for run in range(runs)]
    false = sum(r.final == ROLLED_BACK for r in rollouts)
    pauses = {p: sum(any(s.percent == p and s.outcome == "pause" for s in r.steps) for r in rollouts)
              for p in plan.steps}
    held_for: dict[int, Counter[str]] = {p: Counter() for p in plan.steps}
    step_min: dict[int, list[float]] = {p: [] for p in plan.steps}
    for r in rollouts:
        for s in r.steps:
            held_for[s.percent].update(s.held_for)
            step_min[s.percent].append((s.end_s - s.start_s) / 60.0)
    return {
        "fleet_per_5min": fleet, "runs": runs,
        "false_rollbacks": false, "false_rollback_share": false / runs,
        "false_rollback_upper95": upper95(false, runs),
        "completed": sum(r.final == COMPLETED for r in rollouts),
        "completion_min": spread([r.duration_s / 60.0 for r in rollouts if r.final == COMPLETED]),
        "pauses_per_step": pauses,
        "pause_share_per_step": {p: n / runs for p, n in pauses.items()},
        "held_for_at_pause": {p: dict(c.most_common()) for p, c in held_for.items()},
        "step_min": {p: spread(v) for p, v in step_min.items()},
        "human_promotes": spread([float(sum(s.outcome == "pause" for s in r.steps)) for r in rollouts]),
    }


def harmful(fleet: int, runs: int, seed: int, plan: Plan, rules: Rules) -> dict[str, Any]:
    rollouts = [run_rollout(fleet, plan, rules, np.random.default_rng([seed, 2, fleet, run]), harm=HARM)
                for run in range(runs)]
    caught = [r for r in rollouts if r.final == ROLLED_BACK]
    at = Counter(r.rolled_back_at for r in caught)
    return {
        "fleet_per_5min": fleet, "runs": runs,
        "rolled_back": len(caught),
        "rolled_back_at_step": {p: at.get(p, 0) for p in plan.steps},
        "completed": sum(r.final == COMPLETED for r in rollouts),
        "time_to_rollback_min": spread([r.duration_s / 60.0 for r in caught]),
        "strict_exposed": spread([float(r.strict) for r in caught]),
        "strict_exposed_in_missed": spread([float(r.strict) for r in rollouts if r.final != ROLLED_BACK]),
        "paused_before_rollback": sum(any(s.outcome == "pause" for s in r.steps) for r in caught),
        "missed_after_hand_promotes": sum(any(s.outcome == "pause" and s.percent < 100 for s in r.steps)
                                          for r in rollouts if r.final != ROLLED_BACK),
    }


def thin(fleet: int, percent: int, runs: int, seed: int, plan: Plan, rules: Rules,
         horizon_s: float) -> dict[str, Any]:
    results = [single_step(fleet, percent, plan, rules, np.random.default_rng([seed, 3, fleet, percent, run]),
                           horizon_s) for run in range(runs)]
    times = [math.inf if r.promote_s is None else r.promote_s / 60.0 for r in results]
    within = sum(t * 60.0 <= plan.max_hold_s for t in times)
    harmed = [single_step(fleet, percent, plan, rules, np.random.default_rng([seed, 4, fleet, percent, run]),
                          horizon_s, harm=HARM) for run in range(runs)]
    caught = [r for r in harmed if r.rollback_s is not None]
    return {
        "fleet_per_5min": fleet, "percent": percent, "runs": runs, "horizon_h": horizon_s / 3600.0,
        "decided_within_max_hold": within, "decided_within_max_hold_share": within / runs,
        "undecided_in_horizon": sum(math.isinf(t) for t in times),
        "false_rollbacks": sum(r.rollback_s is not None for r in results),
        "promote_min": spread(times),
        "strict_at_promote": spread([float(r.strict_at_promote) for r in results if r.promote_s is not None]),
        "harmful_runs": runs,
        "harmful_rolled_back": len(caught),
        "harmful_rollback_min": spread([math.inf if r.rollback_s is None else r.rollback_s / 60.0 for r in harmed]),
        "harmful_strict_at_rollback": spread([float(r.strict_at_rollback) for r in caught]),
        "harmful_promoted_first": sum(r.promote_s is not None and (r.rollback_s is None or r.promote_s < r.rollback_s)
                                      for r in harmed),
    }


# -- the run ------------------------------------------------------------------------------------------


def _fmt(s: dict[str, float | None], key: str = "median") -> str:
    value = s.get(key)
    return "-" if value is None else f"{value:.0f}"


def _iqr(s: dict[str, float | None]) -> str:
    return f"{_fmt(s)} [{_fmt(s, 'q1')}, {_fmt(s, 'q3')}]" if s else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--healthy", type=int, default=1000, help="healthy rollouts per fleet")
    parser.add_argument("--harmful", type=int, default=200, help="harmful rollouts per fleet")
    parser.add_argument("--thin", type=int, default=100, help="single-step runs per fleet and thin step")
    parser.add_argument("--fleets", type=int, nargs="+", default=list(FLEETS),
                        help="connections that end per 5 minutes, both cohorts")
    parser.add_argument("--hold-min", type=float, default=PLAN.hold_s / 60.0)
    parser.add_argument("--max-hold-min", type=float, default=None, help="default: 4 x the hold")
    parser.add_argument("--horizon-h", type=float, default=THIN_HORIZON_S / 3600.0,
                        help="how long a thin-step run waits for a promote")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few runs of each")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.healthy, args.harmful, args.thin, args.horizon_h = 10, 5, 5, 12.0
    hold = args.hold_min * 60.0
    plan = Plan(PLAN.steps, hold_s=hold, max_hold_s=4 * hold if args.max_hold_min is None else args.max_hold_min * 60)
    rules = Rules()
    print(f"plan: steps {list(plan.steps)} %, hold {plan.hold_s / 60:g} min, max hold {plan.max_hold_s / 60:g} min; "
          f"seed {args.seed}; abnormal closes {ABNORMAL:.0%}, harm x{HARM:g}")
    out: dict[str, Any] = {"seed": args.seed, "plan": plan.to_json(), "rules": rules.to_dict(),
                           "abnormal": ABNORMAL, "harm": HARM, "healthy": [], "harmful": [], "thin": []}
    steps = plan.steps
    print(f"\nhealthy: {'fleet':>6} {'runs':>5} {'false rollbacks':>16} {'complete (min) median [IQR]':>28}  "
          + "  ".join(f"pause@{p}%" for p in steps))
    for fleet in args.fleets:
        started = time.monotonic()
        row = healthy(fleet, args.healthy, args.seed, plan, rules)
        row["seconds"] = round(time.monotonic() - started, 1)
        out["healthy"].append(row)
        pauses = "  ".join(f"{row['pause_share_per_step'][p]:>{len(f'pause@{p}%')}.0%}" for p in steps)
        bound = f"(<= {row['false_rollback_upper95']:.1%})"
        print(f"         {fleet:>6} {row['runs']:>5} {row['false_rollbacks']:>5} {bound}"
              f" {_iqr(row['completion_min']):>28}  {pauses}   ({row['seconds']} s)", flush=True)
    print(f"\nharmful: {'fleet':>6} {'runs':>5} {'rolled back at ' + '/'.join(map(str, steps)) + ' %':>28} "
          f"{'missed':>6} {'minutes median [IQR]':>22} {'strict exposed median [IQR]':>28}")
    for fleet in args.fleets:
        started = time.monotonic()
        row = harmful(fleet, args.harmful, args.seed, plan, rules)
        row["seconds"] = round(time.monotonic() - started, 1)
        out["harmful"].append(row)
        at = "/".join(str(row["rolled_back_at_step"][p]) for p in steps)
        print(f"         {fleet:>6} {row['runs']:>5} {at:>28} {row['runs'] - row['rolled_back']:>6} "
              f"{_iqr(row['time_to_rollback_min']):>22} {_iqr(row['strict_exposed']):>28}   ({row['seconds']} s)",
              flush=True)
    print(f"\nsingle steps, no maximum hold ({args.horizon_h:g} h at most); healthy: the first promote, harmful: "
          f"the rollback\n{'fleet':>7} {'step':>5} {'runs':>5} {'<= max hold':>11} {'promote (min) median [IQR]':>27} "
          f"{'p95':>6} {'none':>5} {'strict':>7} | {'rollback (min) median [IQR]':>28} {'promoted first':>14} "
          f"{'strict':>7}")
    for fleet in args.fleets:
        for percent in THIN_STEPS:
            started = time.monotonic()
            row = thin(fleet, percent, args.thin, args.seed, plan, rules, args.horizon_h * 3600.0)
            row["seconds"] = round(time.monotonic() - started, 1)
            out["thin"].append(row)
            print(f"{fleet:>7} {percent:>4}% {row['runs']:>5} {row['decided_within_max_hold_share']:>11.0%} "
                  f"{_iqr(row['promote_min']):>27} {_fmt(row['promote_min'], 'p95'):>6} "
                  f"{row['undecided_in_horizon']:>5} {_fmt(row['strict_at_promote']):>7} | "
                  f"{_iqr(row['harmful_rollback_min']):>28} {row['harmful_promoted_first']:>14} "
                  f"{_fmt(row['harmful_strict_at_rollback']):>7}   ({row['seconds']} s)", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
