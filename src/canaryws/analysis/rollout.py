"""The rollout controller's decisions: a plan of steps, the state it is in, and what to do
next. Pure (no I/O, no clock): time and evidence come in as arguments, and what the flags
must become goes out as :class:`Action` values for the shell (``canaryws rollout``) to apply.
The same object is driven by the service's trace files and by the simulations of
docs/rollout.md, so the figures measured there are the controller's.

**The states.** ``pending`` → (``shadow`` →) ``ramping`` at step 0, 1, … → ``completed``;
from any active state: ``paused`` (for a human: an operator's pause, a manual change of the
flag, a step that reached no decision within its maximum hold), ``rolled_back`` (a critical
metric showed harm: ``records.strict`` is disabled at once), ``aborted`` (by an operator;
or the shadow stage showed unexpected divergence and the ramp is refused).

**A step.** Setting the step's percentage is one action; its *evidence starts when it took
effect* (:meth:`Controller.applied`, which the shell calls once the flag backend accepted the
change). The step then holds at least ``hold_s``; after that, the judge's verdict on the
step's evidence (the guard's anytime-valid rule, :class:`~canaryws.analysis.guard.Guard`)
decides: ``promote`` advances (or completes after the last step), ``rollback`` disables the
flag and stops (at any time, also inside the hold), ``hold`` keeps holding until
``max_hold_s``, when the controller pauses and asks a human (a 1 % step of a small fleet may
never have enough strict connections to decide: the operator then resumes it to hold
longer, promotes it by hand, or aborts).

**Manual changes win.** The shell reports the flag as it finds it (:meth:`Controller.observe`);
when it differs from what the controller last set (the kill switch, another percentage), the
controller pauses instead of overwriting it, and ``resume`` sets its step again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryws.analysis.judge import BASELINE, CANARY, Rules

STRICT_FLAG = "records.strict"
SHADOW_FLAG = "records.shadow"

PENDING = "pending"
SHADOW = "shadow"
RAMPING = "ramping"
PAUSED = "paused"
ROLLED_BACK = "rolled_back"
COMPLETED = "completed"
ABORTED = "aborted"
STATES = (PENDING, SHADOW, RAMPING, PAUSED, ROLLED_BACK, COMPLETED, ABORTED)
ACTIVE = frozenset({PENDING, SHADOW, RAMPING, PAUSED})  # a controller still owns the flag
FINAL = frozenset({ROLLED_BACK, COMPLETED, ABORTED})

DECISION_KINDS = ("start", "shadow_start", "shadow_pass", "shadow_fail", "promote", "hold", "rollback", "pause",
                  "resume", "abort", "complete", "manual_change")
MAX_HOLD = "max_hold"  # the kind of pause at a step's maximum hold
MAX_DECISIONS = 1000  # a state file stays small however long a rollout runs (holds are not all kept)


@dataclass(frozen=True, slots=True)
class Plan:
    """``steps``: strictly increasing percentages of client ids on strict, 1–100;
    ``hold_s``: the least time at each step; ``max_hold_s``: when a step with no decision
    pauses for a human; ``shadow_first_s``: the shadow stage before the first step (0: none)."""

    steps: tuple[int, ...]
    hold_s: float
    max_hold_s: float
    shadow_first_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a plan has at least one step")
        if any(not 1 <= s <= 100 for s in self.steps) or any(a >= b for a, b in zip(self.steps, self.steps[1:],
                                                                                    strict=False)):
            raise ValueError(f"steps are strictly increasing percentages from 1 to 100, got {list(self.steps)}")
        if self.hold_s < 0 or self.shadow_first_s < 0:
            raise ValueError("hold and shadow times are not negative")
        if self.max_hold_s < self.hold_s:
            raise ValueError(f"the maximum hold ({self.max_hold_s:g} s) is at least the hold ({self.hold_s:g} s)")

    def to_json(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "hold_s": self.hold_s, "max_hold_s": self.max_hold_s,
                "shadow_first_s": self.shadow_first_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(tuple(int(s) for s in data["steps"]), float(data["hold_s"]), float(data["max_hold_s"]),
                   float(data.get("shadow_first_s", 0.0)))


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing the controller decided, with why; ``time_ns`` on the wall clock."""

    time_ns: int
    kind: str
    step: int | None
    percent: int | None
    reasons: tuple[str, ...] = ()

    def to_json(self, iso: Any) -> dict[str, Any]:
        return {"time": iso(self.time_ns), "time_ns": self.time_ns, "kind": self.kind, "step": self.step,
                "percent": self.percent, "reasons": list(self.reasons)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(int(data["time_ns"]), str(data["kind"]), data.get("step"), data.get("percent"),
                   tuple(str(r) for r in data.get("reasons", ())))


@dataclass(frozen=True, slots=True)
class FlagState:
    """``records.strict`` as the controller set it or as the shell found it (``shadow``:
    ``records.shadow`` enabled, None when the controller does not manage it)."""

    enabled: bool
    rollout: int | None
    shadow: bool | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """What the shell must do to the flags: ``set_rollout`` (``records.strict`` enabled at
    ``percent``), ``disable`` (``records.strict`` off: the kill switch) or ``shadow``
    (``records.shadow`` enabled or not)."""

    kind: Literal["set_rollout", "disable", "shadow"]
    percent: int | None = None
    enabled: bool | None = None


@dataclass
class RolloutState:
    """Everything the controller must remember across a restart (the durable state)."""

    plan: Plan
    state: str = PENDING
    step: int = -1  # index into plan.steps; -1 before the first
    since_ns: int | None = None  # when the current step (or the shadow stage) took effect
    paused_from: str | None = None
    paused_kind: str | None = None  # pause (an operator), manual_change, max_hold
    reason: str | None = None
    extended_s: float = 0.0  # more maximum hold granted to the current step by resumes
    expected: FlagState | None = None  # what the controller last set (None: nothing yet)
    awaiting: bool = False  # actions were issued and not yet confirmed applied
    decisions: list[Decision] = field(default_factory=list)

    @property
    def percent(self) -> int | None:
        return self.plan.steps[self.step] if 0 <= self.step < len(self.plan.steps) else None

    def to_json(self, iso: Any) -> dict[str, Any]:
        return {
            "version": 1,
            "flag": STRICT_FLAG,
            "plan": self.plan.to_json(),
            "state": self.state,
            "step": self.step,
            "percent": self.percent,
            "since": None if self.since_ns is None else iso(self.since_ns),
            "since_ns": self.since_ns,
            "paused_from": self.paused_from,
            "paused_kind": self.paused_kind,
            "reason": self.reason,
            "extended_s": self.extended_s,
            "expected": None if self.expected is None else {
                "enabled": self.expected.enabled, "rollout": self.expected.rollout, "shadow": self.expected.shadow},
            "awaiting": self.awaiting,
            "decisions": [d.to_json(iso) for d in self.decisions],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutState:
        if data.get("version") != 1:
            raise ValueError(f"unknown rollout state version {data.get('version')!r}")
        if data.get("state") not in STATES:
            raise ValueError(f"unknown rollout state {data.get('state')!r}")
        expected = data.get("expected")
        return cls(
            plan=Plan.from_json(data["plan"]),
            state=str(data["state"]),
            step=int(data["step"]),
            since_ns=None if data.get("since_ns") is None else int(data["since_ns"]),
            paused_from=data.get("paused_from"),
            paused_kind=data.get("paused_kind"),
            reason=data.get("reason"),
            extended_s=float(data.get("extended_s", 0.0)),
            expected=None if expected is None else FlagState(bool(expected["enabled"]), expected.get("rollout"),
                                                             expected.get("shadow")),
            awaiting=bool(data.get("awaiting", False)),
            decisions=[Decision.from_json(d) for d in data.get("decisions", ())],
        )


class Controller:
    """The decisions on a :class:`RolloutState` (see the module docstring). Each method
    returns the actions to apply, in order; after applying them the shell calls
    :meth:`applied` (the new step's evidence starts then) and saves :attr:`state`."""

    def __init__(self, state: RolloutState) -> None:
        self.state = state

    # -- the operator ---------------------------------------------------------------------
    def start(self, now_ns: int) -> list[Action]:
        s = self.state
        if s.state != PENDING:
            return []
        self._decide(now_ns, "start", [f"plan: steps {list(s.plan.steps)} %, hold {s.plan.hold_s:g} s, "
                                       f"at most {s.plan.max_hold_s:g} s"])
        if s.plan.shadow_first_s > 0:
            s.state = SHADOW
            self._decide(now_ns, "shadow_start", [f"records.shadow on for {s.plan.shadow_first_s:g} s first"])
            return self._expect(FlagState(True, 0, True), [Action("set_rollout", percent=0),
                                                           Action("shadow", enabled=True)])
        return self._enter_step(now_ns, 0, "start")

    def pause(self, now_ns: int, reason: str, kind: str = "pause") -> list[Action]:
        s = self.state
        if s.state not in (SHADOW, RAMPING, PENDING):
            return []
        s.paused_from, s.paused_kind, s.state, s.reason = s.state, kind, PAUSED, reason
        self._decide(now_ns, "pause" if kind == MAX_HOLD else kind, [reason])
        return []

    def resume(self, now_ns: int, *, promote: bool = False, fresh: bool = False,
               reason: str = "resumed by an operator") -> list[Action]:
        """Back to where it paused. The step's evidence goes on (it was gathered under the
        same flags) and a step paused at its maximum hold gets another ``max_hold_s``; after a
        manual change of the flag, or with ``fresh``, the step is set again and its evidence
        and hold start afresh (a *marginal* verdict, which never clears within its evidence,
        needs that). ``promote``: a human promotes the step instead (the next one, or complete)."""
        s = self.state
        if s.state != PAUSED:
            return []
        back, kind = s.paused_from or RAMPING, s.paused_kind
        s.paused_from, s.paused_kind, s.reason = None, None, None
        how = " (promoted by hand)" if promote else " (fresh evidence)" if fresh else ""
        self._decide(now_ns, "resume", [reason + how])
        if back == PENDING:
            s.state = PENDING
            return self.start(now_ns)
        if back == SHADOW:
            s.state = SHADOW
            return self._expect(FlagState(True, 0, True), [Action("set_rollout", percent=0),
                                                           Action("shadow", enabled=True)])
        s.state = RAMPING
        if promote:
            return self._promote(now_ns, ["promoted by an operator"])
        if fresh or kind == "manual_change" or s.since_ns is None or s.awaiting:
            return self._enter_step(now_ns, s.step, None)
        if kind == MAX_HOLD:
            s.extended_s += s.plan.max_hold_s
        return []

    def abort(self, now_ns: int, *, roll_back: bool, reason: str = "aborted by an operator") -> list[Action]:
        s = self.state
        if s.state in FINAL:
            return []
        s.state, s.reason = ABORTED, reason
        done = "; records.strict disabled" if roll_back else "; flags left as they are"
        self._decide(now_ns, "abort", [reason + done])
        return self._expect(FlagState(False, s.expected.rollout if s.expected else None, None),
                            [Action("disable")]) if roll_back else []

    # -- the shell's reports ----------------------------------------------------------------
    def applied(self, now_ns: int) -> None:
        """The last actions took effect: the current step's (or shadow stage's) clock starts."""
        if self.state.awaiting:
            self.state.awaiting = False
            self.state.since_ns = now_ns

    def observe(self, now_ns: int, found: FlagState) -> list[Action]:
        """The flag as found: a difference from what the controller set pauses it."""
        s, expected = self.state, self.state.expected
        if s.state not in (SHADOW, RAMPING) or expected is None or s.awaiting:
            return []
        changes = []
        if found.enabled != expected.enabled:
            changes.append("records.strict was disabled (the kill switch)" if not found.enabled
                           else "records.strict was enabled")
        elif found.enabled and found.rollout != expected.rollout:
            changes.append(f"records.strict's rollout is {found.rollout} %, the controller set {expected.rollout} %")
        if expected.shadow is not None and found.shadow is not None and found.shadow != expected.shadow:
            changes.append(f"records.shadow was turned {'on' if found.shadow else 'off'}")
        if not changes:
            return []
        return self.pause(now_ns, f"a manual change: {'; '.join(changes)}; not overwritten", kind="manual_change")

    def judge(self, now_ns: int, verdict: str, reasons: Sequence[str]) -> list[Action]:
        """The judge's verdict on the current step's evidence (since :attr:`RolloutState.since_ns`)."""
        s = self.state
        if s.state != RAMPING or s.since_ns is None or s.awaiting:
            return []
        if verdict == "rollback":
            s.state, s.reason = ROLLED_BACK, "; ".join(reasons)
            self._decide(now_ns, "rollback", reasons)
            return self._expect(FlagState(False, s.percent, None), [Action("disable")])
        held = (now_ns - s.since_ns) / 1e9
        if held < s.plan.hold_s:
            return []
        if verdict == "promote":
            return self._promote(now_ns, reasons)
        if held >= s.plan.max_hold_s + s.extended_s:
            return self.pause(now_ns, f"no decision within the maximum hold of {s.plan.max_hold_s + s.extended_s:g} s "
                                      f"at {s.percent} %: " + "; ".join(reasons), kind=MAX_HOLD)
        self._hold(now_ns, reasons)
        return []

    def shadow_checked(self, now_ns: int, divergence: Sequence[str]) -> list[Action]:
        """The shadow stage's result once it lasted ``shadow_first_s``: ``divergence`` names
        the unexpected divergence found (empty: none). Call it only then (:meth:`shadow_due`)."""
        s = self.state
        if s.state != SHADOW:
            return []
        if divergence:
            s.state, s.reason = ABORTED, "the shadow showed unexpected divergence"
            self._decide(now_ns, "shadow_fail", ["the ramp is refused: " + "; ".join(divergence)])
            return self._expect(FlagState(True, 0, False), [Action("shadow", enabled=False)])
        self._decide(now_ns, "shadow_pass", [f"no unexpected divergence in {s.plan.shadow_first_s:g} s of shadow"])
        return [Action("shadow", enabled=False), *self._enter_step(now_ns, 0, None)]

    def shadow_due(self, now_ns: int) -> bool:
        s = self.state
        return s.state == SHADOW and s.since_ns is not None and not s.awaiting and \
            (now_ns - s.since_ns) / 1e9 >= s.plan.shadow_first_s

    # -- inside -----------------------------------------------------------------------------
    def _promote(self, now_ns: int, reasons: Sequence[str]) -> list[Action]:
        s = self.state
        if s.step + 1 >= len(s.plan.steps):
            s.state, s.reason = COMPLETED, None
            self._decide(now_ns, "complete", [f"the last step ({s.percent} %) promoted", *reasons])
            return []
        self._decide(now_ns, "promote", reasons)
        return self._enter_step(now_ns, s.step + 1, None)

    def _enter_step(self, now_ns: int, step: int, kind: str | None) -> list[Action]:
        s = self.state
        s.state, s.step, s.extended_s = RAMPING, step, 0.0
        if kind is not None and kind != "start":
            self._decide(now_ns, kind, [])
        return self._expect(FlagState(True, s.plan.steps[step], None),
                            [Action("set_rollout", percent=s.plan.steps[step])])

    def _expect(self, flags: FlagState, actions: list[Action]) -> list[Action]:
        self.state.expected = flags
        self.state.awaiting = True
        self.state.since_ns = None
        return actions

    def _hold(self, now_ns: int, reasons: Sequence[str]) -> None:
        """A hold is recorded once per step (the first after the hold time), not every look."""
        last = self.state.decisions[-1] if self.state.decisions else None
        if last is None or last.kind != "hold" or last.step != self.state.step:
            self._decide(now_ns, "hold", reasons)

    def _decide(self, now_ns: int, kind: str, reasons: Sequence[str]) -> None:
        s = self.state
        s.decisions.append(Decision(now_ns, kind, s.step if s.step >= 0 else None, s.percent, tuple(reasons)))
        del s.decisions[:-MAX_DECISIONS]

    @property
    def last_decision(self) -> Decision | None:
        return self.state.decisions[-1] if self.state.decisions else None


def step_verdict(percent: int | None, result: Mapping[str, Any], rules: Rules) -> tuple[str, list[str]]:
    """The guard's verdict for the controller. A promote needs the evidence of the step's own
    strict share (the summaries record the share the service served: until the service
    applies the step, the evidence is the previous step's, which holds; a rollback is a
    rollback whatever the share). At 100 % no lenient cohort is left: a hold for that alone
    promotes (the last step completes after its hold; the SLOs and alerts watch it from then
    on)."""
    verdict, reasons = str(result["verdict"]), [str(r) for r in result["reasons"]]
    share = result["stage"]["strict_share"]
    if verdict == "promote" and percent is not None and share is not None and abs(share * 100 - percent) > 1e-6:
        return "hold", [f"the evidence is of a strict share of {share * 100:g} %, not the step's {percent} %: the "
                        "service does not serve the step yet", *reasons]
    lenient = int(result["connections"].get(BASELINE, 0))
    strict = int(result["connections"].get(CANARY, 0))
    if (percent == 100 and verdict == "hold" and share in (None, 1.0) and lenient < rules.min_connections
            and strict >= rules.min_connections):
        return "promote", [f"at 100 % no lenient cohort is left to compare ({lenient} lenient connections, {strict} "
                           "strict): the last step completes after its hold; the SLOs and alerts watch it from here"]
    return verdict, reasons
