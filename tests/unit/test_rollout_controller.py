"""The rollout controller's decisions (canaryws.analysis.rollout), on a clock of the test's."""

from __future__ import annotations

from typing import Any

import pytest

from canaryws.analysis.judge import Rules
from canaryws.analysis.rollout import (
    ABORTED,
    COMPLETED,
    PAUSED,
    RAMPING,
    ROLLED_BACK,
    SHADOW,
    Action,
    Controller,
    FlagState,
    Plan,
    RolloutState,
    step_verdict,
)

S = 1_000_000_000
PLAN = Plan((1, 5, 25, 50, 100), hold_s=60, max_hold_s=240)


def started(plan: Plan = PLAN) -> Controller:
    controller = Controller(RolloutState(plan))
    assert controller.start(0) == [Action("set_rollout", percent=plan.steps[0])]
    controller.applied(1 * S)
    return controller


def test_a_healthy_rollout_goes_through_every_step_after_its_hold() -> None:
    c = started()
    t = 1 * S
    for step, percent in enumerate(PLAN.steps):
        assert c.state.state == RAMPING and c.state.percent == percent and c.state.since_ns == t
        assert c.judge(t + 59 * S, "promote", ["fine"]) == []  # inside the hold: nothing yet
        actions = c.judge(t + 60 * S, "promote", ["fine"])
        if step + 1 < len(PLAN.steps):
            assert actions == [Action("set_rollout", percent=PLAN.steps[step + 1])]
            t += 61 * S
            c.applied(t)
        else:
            assert actions == []
    assert c.state.state == COMPLETED
    assert [d.kind for d in c.state.decisions] == ["start", "promote", "promote", "promote", "promote", "complete"]
    assert [d.percent for d in c.state.decisions] == [None, 1, 5, 25, 50, 100]


def test_a_rollback_disables_the_flag_at_once_even_inside_the_hold() -> None:
    c = started()
    assert c.judge(2 * S, "rollback", ["abnormal_close_rate: e-value 41 >= 40"]) == [Action("disable")]
    assert c.state.state == ROLLED_BACK and c.state.decisions[-1].reasons == ("abnormal_close_rate: e-value 41 >= 40",)
    assert c.judge(3 * S, "promote", []) == [] and c.observe(3 * S, FlagState(False, 1)) == []  # final


def test_holding_pauses_for_a_human_at_the_maximum_hold() -> None:
    c = started()
    assert c.judge(61 * S, "hold", ["strict cohort too thin: 3 connections < 30"]) == []
    assert c.judge(120 * S, "hold", ["strict cohort too thin: 5 connections < 30"]) == []
    assert [d.kind for d in c.state.decisions] == ["start", "hold"]  # one hold recorded per step, not every look
    assert c.judge(241 * S, "hold", ["strict cohort too thin: 9 connections < 30"]) == []
    assert c.state.state == PAUSED and "maximum hold of 240 s" in (c.state.reason or "")
    # the human holds longer on the same evidence: another maximum hold, nothing set again
    assert c.resume(300 * S) == []
    assert c.state.state == RAMPING and c.state.since_ns == 1 * S
    assert c.judge(400 * S, "hold", ["thin"]) == []
    assert c.state.state == RAMPING  # 399 s held < 480 s
    assert c.judge(482 * S, "hold", ["thin"]) == []
    assert c.state.state == PAUSED and "maximum hold of 480 s" in (c.state.reason or "")
    # or starts the step's evidence afresh: the step is set again
    assert c.resume(490 * S, fresh=True) == [Action("set_rollout", percent=1)]
    assert c.state.since_ns is None and c.state.extended_s == 0
    c.applied(491 * S)
    assert c.judge(492 * S, "promote", []) == []  # a new hold
    # or promotes by hand
    c.pause(493 * S, "look")
    assert c.resume(494 * S, promote=True) == [Action("set_rollout", percent=5)]
    assert c.state.decisions[-1].kind == "promote" and c.state.decisions[-1].reasons == ("promoted by an operator",)


def test_an_operators_pause_keeps_the_evidence() -> None:
    c = started()
    c.pause(10 * S, "looking at latency")
    assert c.judge(70 * S, "promote", []) == []  # paused: nothing is decided
    assert c.resume(80 * S) == [] and c.state.since_ns == 1 * S
    assert c.judge(81 * S, "promote", ["fine"]) == [Action("set_rollout", percent=5)]


@pytest.mark.parametrize(("found", "says"), [
    (FlagState(False, 1), "kill switch"),
    (FlagState(True, 50), "rollout is 50 %, the controller set 1 %"),
])
def test_a_manual_change_pauses_instead_of_being_overwritten(found: FlagState, says: str) -> None:
    c = started()
    assert c.observe(5 * S, FlagState(True, 1)) == []  # as set: nothing
    assert c.observe(6 * S, found) == []  # no action: the operator's change stays
    assert c.state.state == PAUSED and says in (c.state.reason or "")
    assert c.state.decisions[-1].kind == "manual_change"
    assert c.judge(100 * S, "promote", []) == []  # paused: the judge is not acted on
    # resuming sets the step again, on fresh evidence (the old one was not under these flags)
    assert c.resume(110 * S) == [Action("set_rollout", percent=1)] and c.state.since_ns is None


def test_no_observation_counts_while_a_change_is_being_applied() -> None:
    c = Controller(RolloutState(PLAN))
    c.start(0)
    assert c.observe(0, FlagState(True, 0)) == []  # not applied yet: the old value is expected
    assert c.state.state == RAMPING


def test_the_shadow_stage_comes_first_and_can_refuse_the_ramp() -> None:
    plan = Plan((5, 100), hold_s=10, max_hold_s=20, shadow_first_s=30)
    c = Controller(RolloutState(plan))
    assert c.start(0) == [Action("set_rollout", percent=0), Action("shadow", enabled=True)]
    c.applied(1 * S)
    assert c.state.state == SHADOW and not c.shadow_due(30 * S) and c.shadow_due(31 * S)
    assert c.shadow_checked(31 * S, []) == [Action("shadow", enabled=False), Action("set_rollout", percent=5)]
    assert c.state.state == RAMPING

    refused = Controller(RolloutState(plan))
    refused.start(0)
    refused.applied(1 * S)
    assert refused.shadow_checked(31 * S, ["12 value_mismatch divergences"]) == [Action("shadow", enabled=False)]
    assert refused.state.state == ABORTED and refused.state.decisions[-1].kind == "shadow_fail"


def test_abort_rolls_back_or_leaves_the_flags() -> None:
    c = started()
    assert c.abort(2 * S, roll_back=True) == [Action("disable")]
    assert c.state.state == ABORTED
    c = started()
    assert c.abort(2 * S, roll_back=False) == [] and c.state.state == ABORTED


def test_the_state_survives_a_round_trip_through_json() -> None:
    c = started()
    c.judge(61 * S, "hold", ["thin"])
    c.judge(62 * S, "promote", ["fine"])
    data = c.state.to_json(lambda ns: f"t{ns}")
    again = RolloutState.from_json(data)
    assert again == c.state
    assert data["decisions"][-1] == {"time": f"t{62 * S}", "time_ns": 62 * S, "kind": "promote", "step": 0,
                                     "percent": 1, "reasons": ["fine"]}


@pytest.mark.parametrize("steps", [(), (5, 5), (10, 5), (0, 5), (5, 101)])
def test_a_plan_is_checked(steps: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        Plan(steps, hold_s=1, max_hold_s=2)


def judged(verdict: str, share: float | None, lenient: int, reasons: list[str] | None = None) -> dict[str, Any]:
    return {"verdict": verdict, "reasons": reasons or ["r"], "stage": {"strict_share": share},
            "connections": {"strict": 100, "lenient": lenient}}


def test_a_promote_needs_the_steps_own_share_and_100_percent_completes_without_lenient() -> None:
    rules = Rules()
    assert step_verdict(5, judged("promote", 0.05, 100), rules) == ("promote", ["r"])
    said, why = step_verdict(5, judged("promote", 0.01, 100), rules)  # the previous step's evidence
    assert said == "hold" and "not the step's 5 %" in why[0]
    assert step_verdict(5, judged("rollback", 0.01, 100), rules)[0] == "rollback"  # harm is harm
    said, why = step_verdict(100, judged("hold", 1.0, 0), rules)
    assert said == "promote" and "no lenient cohort" in why[0]
    assert step_verdict(100, judged("hold", 1.0, rules.min_connections), rules)[0] == "hold"
    assert step_verdict(100, judged("rollback", 1.0, 0), rules)[0] == "rollback"
    nothing = {**judged("hold", None, 0), "connections": {"strict": 0, "lenient": 0}}
    assert step_verdict(100, nothing, rules)[0] == "hold"  # no evidence at all is not a completion
