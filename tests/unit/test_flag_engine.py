"""FlagSnapshot: the Unleash engine behind the FlagSnapshotView shape."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.core.cohorts import (
    SHADOW_FLAG,
    STRICT_FLAG,
    CohortDecision,
    EvaluationContext,
    FlagEvaluation,
    FlagSnapshotView,
    decide_cohort,
    expected_strict_share,
)
from canaryws.core.flagdoc import (
    FlagsDocument,
    compute_revision,
    parse_flags_document,
    validate_flags_data,
    with_enabled,
    with_rollout,
)

REPO_FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"
CLIENTS = [f"client-{i}" for i in range(2000)]


def shipped() -> FlagsDocument:
    return parse_flags_document(REPO_FLAGS.read_bytes())


def snapshot(doc: FlagsDocument) -> FlagSnapshot:
    return FlagSnapshot.from_document(doc, source="test", loaded_at=1_700_000_000.0)


def strict_at(percent: int) -> FlagSnapshot:
    return snapshot(with_rollout(shipped(), STRICT_FLAG, percent))


def enabled_clients(snap: FlagSnapshot, clients: list[str] = CLIENTS) -> set[str]:
    return {c for c in clients if snap.evaluate(STRICT_FLAG, {"userId": c, "sessionId": "s"}).enabled}


def test_snapshot_exposes_its_document_and_origin() -> None:
    doc = shipped()
    snap = snapshot(doc)
    view: FlagSnapshotView = snap
    assert view.revision == doc.revision
    assert snap.document is doc
    assert snap.source == "test"
    assert snap.loaded_at == 1_700_000_000.0
    assert "revision=" in repr(snap)


def test_loaded_at_defaults_to_now() -> None:
    before = time.time()
    snap = FlagSnapshot.from_document(shipped(), source="test")
    assert before <= snap.loaded_at <= time.time()


def test_unknown_flag_is_an_error_evaluation() -> None:
    snap = snapshot(shipped())
    assert snap.evaluate("nope", {"userId": "a"}) == FlagEvaluation(
        key="nope", enabled=False, found=False, variant="off", reason="error", version=snap.revision
    )


def test_disabled_feature() -> None:
    snap = snapshot(shipped())  # records.shadow ships disabled
    assert snap.evaluate(SHADOW_FLAG, {"userId": "a"}) == FlagEvaluation(
        SHADOW_FLAG, False, True, "off", "disabled", snap.revision
    )


def test_rollout_zero_is_default_off_and_hundred_is_a_targeting_match() -> None:
    zero = strict_at(0)
    full = strict_at(100)
    assert zero.evaluate(STRICT_FLAG, {"userId": "a"}) == FlagEvaluation(
        STRICT_FLAG, False, True, "off", "default", zero.revision
    )
    assert full.evaluate(STRICT_FLAG, {"userId": "a"}) == FlagEvaluation(
        STRICT_FLAG, True, True, "on", "targeting_match", full.revision
    )


def test_partial_rollout_is_a_split_on_both_sides() -> None:
    snap = strict_at(25)
    evaluations = [snap.evaluate(STRICT_FLAG, {"userId": c}) for c in CLIENTS[:200]]
    assert {e.reason for e in evaluations} == {"split"}
    assert {(e.enabled, e.variant) for e in evaluations} == {(True, "on"), (False, "off")}
    assert {e.version for e in evaluations} == {snap.revision}


def test_rollout_25_enables_about_a_quarter_of_clients() -> None:
    share = len(enabled_clients(strict_at(25))) / len(CLIENTS)
    assert 0.22 <= share <= 0.28


def test_ramping_up_never_turns_an_enabled_client_off() -> None:
    previous: set[str] = set()
    for percent in (0, 1, 5, 10, 25, 50, 75, 99, 100):
        current = enabled_clients(strict_at(percent))
        assert previous <= current, f"clients lost at {percent}%"
        previous = current
    assert previous == set(CLIENTS)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 100), st.integers(0, 100))
def test_rollout_is_monotonic(a: int, b: int) -> None:
    low, high = sorted((a, b))
    clients = CLIENTS[:300]
    assert enabled_clients(strict_at(low), clients) <= enabled_clients(strict_at(high), clients)


def test_the_cohort_is_sticky_per_client_not_per_connection() -> None:
    snap = strict_at(50)
    for client in CLIENTS[:50]:
        outcomes = {snap.evaluate(STRICT_FLAG, {"userId": client, "sessionId": f"s{i}"}).enabled for i in range(5)}
        assert len(outcomes) == 1


def test_disabling_is_the_kill_switch() -> None:
    snap = snapshot(with_enabled(with_rollout(shipped(), STRICT_FLAG, 100), STRICT_FLAG, False))
    assert enabled_clients(snap, CLIENTS[:100]) == set()
    assert snap.evaluate(STRICT_FLAG, {"userId": "a"}).reason == "disabled"


def test_context_may_be_any_mapping_and_constraints_target_properties() -> None:
    data: dict[str, Any] = {
        "version": 2,
        "features": [
            {
                "name": "f",
                "enabled": True,
                "strategies": [
                    {
                        "name": "default",
                        "constraints": [{"contextName": "clientVersion", "operator": "SEMVER_GT", "value": "1.0.0"}],
                    }
                ],
            }
        ],
    }
    snap = snapshot(validate_flags_data(data))
    new = MappingProxyType({"userId": "a", "properties": {"clientVersion": "1.2.0"}})
    old = {"userId": "a", "properties": {"clientVersion": "0.9.0"}}
    assert snap.evaluate("f", new).reason == "targeting_match"
    assert snap.evaluate("f", old) == FlagEvaluation("f", False, True, "off", "default", snap.revision)


def test_decide_cohort_reads_the_snapshot() -> None:
    snap = snapshot(with_enabled(with_rollout(shipped(), STRICT_FLAG, 100), SHADOW_FLAG, True))
    decision = decide_cohort(
        snap, EvaluationContext(client_id="c1", connection_id="conn-1"), {"strict": 1, "lenient": 1}
    )
    assert decision.cohort.strategy == "strict"
    assert decision.cohort.shadow is True
    assert decision.cohort.flags_revision == snap.revision
    assert [e.reason for e in decision.evaluations] == ["targeting_match", "targeting_match"]


# -- CANARYWS_DEFAULT_STRATEGY: the strategy while records.strict is absent ---------------

VERSIONS = {"strict": 1, "lenient": 1}


def without_strict() -> FlagSnapshot:
    """The shipped document with records.strict deleted (records.shadow kept, disabled)."""
    data = shipped().data
    features = [f for f in data["features"] if f["name"] != STRICT_FLAG]
    return snapshot(validate_flags_data({**data, "features": features}))


def decide(snap: FlagSnapshot, default_strategy: str | None = None, client: str = "c1") -> CohortDecision:
    ctx = EvaluationContext(client_id=client, connection_id="conn-1")
    if default_strategy is None:
        return decide_cohort(snap, ctx, VERSIONS)
    return decide_cohort(snap, ctx, VERSIONS, default_strategy)


@pytest.mark.parametrize("default_strategy", ["lenient", "strict"])
def test_a_missing_strict_flag_gives_the_default_strategy(default_strategy: str) -> None:
    snap = without_strict()
    assert not snap.has_flag(STRICT_FLAG) and snap.has_flag(SHADOW_FLAG)
    for client in CLIENTS[:200]:
        decision = decide(snap, default_strategy, client)
        assert decision.cohort.strategy == default_strategy
        assert decision.cohort.shadow is False
        assert decision.cohort.flags_revision == snap.revision
    strict_ev, shadow_ev = decide(snap, default_strategy).evaluations
    # the evaluation reports the value used; the reason says the flag was not found
    on = default_strategy == "strict"
    assert strict_ev == FlagEvaluation(STRICT_FLAG, on, False, "on" if on else "off", "error", snap.revision)
    assert shadow_ev.reason == "disabled"


def test_the_default_default_is_lenient() -> None:
    snap = without_strict()
    decision = decide(snap)
    assert decision.cohort.strategy == "lenient"
    assert decision.evaluations[0] == FlagEvaluation(STRICT_FLAG, False, False, "off", "error", snap.revision)


@pytest.mark.parametrize("default_strategy", ["lenient", "strict"])
@pytest.mark.parametrize(
    ("snap", "expected", "reason"),
    [
        (lambda: strict_at(100), "strict", "targeting_match"),
        (lambda: strict_at(0), "lenient", "default"),
        (lambda: snapshot(with_enabled(with_rollout(shipped(), STRICT_FLAG, 100), STRICT_FLAG, False)), "lenient",
         "disabled"),
    ],
    ids=["enabled-at-100", "rollout-0", "disabled"],
)
def test_a_present_strict_flag_ignores_the_default(
    default_strategy: str, snap: Callable[[], FlagSnapshot], expected: str, reason: str
) -> None:
    flags = snap()
    for client in CLIENTS[:200]:
        decision = decide(flags, default_strategy, client)
        assert decision.cohort.strategy == expected
        assert decision.evaluations[0].found is True
        assert decision.evaluations[0].reason == reason
        assert decision.evaluations[0].enabled is (expected == "strict")


def test_a_split_flag_ignores_the_default() -> None:
    flags = strict_at(50)
    lenient = {c: decide(flags, "lenient", c).cohort.strategy for c in CLIENTS[:400]}
    strict = {c: decide(flags, "strict", c).cohort.strategy for c in CLIENTS[:400]}
    assert lenient == strict
    assert 0 < sum(s == "strict" for s in strict.values()) < 400


def test_expected_strict_share_follows_the_default_only_when_the_flag_is_missing() -> None:
    missing = without_strict()
    assert expected_strict_share(missing, "strict") == 1.0
    assert expected_strict_share(missing, "lenient") == 0.0
    assert expected_strict_share(missing) == 0.0
    disabled = snapshot(with_enabled(with_rollout(shipped(), STRICT_FLAG, 100), STRICT_FLAG, False))
    for default_strategy in ("lenient", "strict"):
        assert expected_strict_share(strict_at(0), default_strategy) == 0.0
        assert expected_strict_share(strict_at(25), default_strategy) == 0.25
        assert expected_strict_share(strict_at(100), default_strategy) == 1.0
        assert expected_strict_share(disabled, default_strategy) == 0.0


def test_snapshots_are_independent() -> None:
    low, high = strict_at(0), strict_at(100)
    assert not low.evaluate(STRICT_FLAG, {"userId": "a"}).enabled
    assert high.evaluate(STRICT_FLAG, {"userId": "a"}).enabled
    assert not low.evaluate(STRICT_FLAG, {"userId": "a"}).enabled


def test_a_flag_the_engine_cannot_parse_is_left_out_and_reported() -> None:
    """Safety net: a flag that bypassed validation (a numeric parameter makes the engine drop
    the whole state): the engine is asked flag by flag, that one is left out, the rest loads."""
    data = validate_flags_data(
        {"version": 2, "features": [{"name": "f", "enabled": True, "strategies": [{"name": "default"}]},
                                    {"name": "g", "enabled": True, "strategies": [{"name": "default"}]}]}
    ).data
    data["features"][0]["strategies"][0]["parameters"] = {"rollout": 25}
    bypassed = FlagsDocument(data=data, revision=compute_revision(data))
    snapshot = FlagSnapshot.from_document(bypassed, source="test")
    assert [(p.flag, p.kind, str(p)) for p in snapshot.assessment.problems] == [
        ("f", "invalid_shape", "features[0]: the Unleash engine cannot parse this flag; it is not evaluated")]
    assert not snapshot.has_flag("f")
    assert snapshot.evaluate("g", {}).enabled


# -- flags on for everyone: answered without the engine, as the engine answers ----------------

def _rollout(percent: object, stickiness: str | None, **extra: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"rollout": percent, "groupId": "g"}
    if stickiness is not None:
        parameters["stickiness"] = stickiness
    return {"name": "flexibleRollout", "parameters": parameters, **extra}


EVERYONE_CASES: dict[str, tuple[list[dict[str, Any]], bool]] = {
    # name: (strategies, answered without the engine for a context with userId and sessionId)
    "no strategy": ([], True),
    "default": ([{"name": "default", "parameters": {}}], True),
    "100 % default stickiness": ([_rollout("100", "default")], True),
    "100 % no stickiness": ([_rollout(100, None)], True),
    "100 % random": ([_rollout("100", "random")], True),
    "100 % userId": ([_rollout("100", "userId")], True),
    "100 % sessionId": ([_rollout("100", "sessionId")], True),
    "100 % custom stickiness": ([_rollout("100", "tenant")], False),
    "99 %": ([_rollout("99", "userId")], False),
    "100 % with a constraint": ([_rollout("100", "userId", constraints=[
        {"contextName": "userId", "operator": "IN", "values": ["client-1"]}])], False),
    "a split, then default": ([_rollout("10", "userId"), {"name": "default", "parameters": {}}], True),
    "0 %": ([_rollout("0", "userId")], False),
}
EVERYONE_CONTEXTS = [
    {"userId": "client-1", "sessionId": "s-1"},
    {"userId": "client-2", "sessionId": "s-2", "properties": {"tenant": "t"}},
    {"sessionId": "s-3"},
    {"userId": "client-4"},
    {},
]


@pytest.mark.parametrize("case", sorted(EVERYONE_CASES))
def test_flags_on_for_everyone_answer_as_the_engine_does(case: str) -> None:
    strategies, unasked = EVERYONE_CASES[case]
    doc = shipped()
    data = {**doc.data, "features": [{**f, "strategies": strategies} if f["name"] == STRICT_FLAG else f
                                     for f in doc.data["features"]]}
    snap = snapshot(parse_flags_document(json.dumps(data).encode()))
    engine = snap._engine  # the engine's own answer, asked directly
    calls: list[str] = []
    check = engine.check_enabled
    evaluate = engine._do_is_enabled  # what FlagSnapshot.evaluate asks

    def counted(flag: str, context: dict[str, Any]) -> Any:
        calls.append(flag)
        return evaluate(flag, context)

    engine._do_is_enabled = counted
    for context in EVERYONE_CONTEXTS:
        expected = check(STRICT_FLAG, dict(context))
        assert expected.is_found
        asked = len(calls)
        evaluation = snap.evaluate(STRICT_FLAG, context)
        assert evaluation.enabled == expected.is_enabled, (case, context)
        if context.get("userId") and context.get("sessionId"):  # the service's contexts have both
            assert (len(calls) == asked) == unasked, (case, context)
        if len(calls) == asked:  # unasked: what the engine's "on" gives (reason: no split)
            assert evaluation == FlagEvaluation(STRICT_FLAG, True, True, "on", "targeting_match", snap.revision)


def test_a_flag_that_depends_on_another_is_asked_of_the_engine() -> None:
    doc = shipped()
    data = {**doc.data, "features": [
        {**f, "strategies": [], "dependencies": [{"feature": SHADOW_FLAG, "enabled": True}]}
        if f["name"] == STRICT_FLAG else f for f in doc.data["features"]]}
    snap = snapshot(parse_flags_document(json.dumps(data).encode()))
    shadow_on = snap.evaluate(SHADOW_FLAG, {"userId": "client-1", "sessionId": "s"}).enabled
    assert snap.evaluate(STRICT_FLAG, {"userId": "client-1", "sessionId": "s"}).enabled == shadow_on


def test_the_evaluation_is_check_enabled_without_its_impression_trip() -> None:
    """FlagSnapshot.evaluate calls the engine's private ``_do_is_enabled`` (check_enabled's
    evaluation, without its second call for the impression-event setting): pinned here, with
    check_enabled's own answers for every client of a split, for a constrained flag and for a
    flag the engine does not know."""
    snap = strict_at(37)
    engine = snap._engine
    for client in CLIENTS[:300]:
        context = {"userId": client, "sessionId": "s", "properties": {"region": "eu"}}
        reference = engine.check_enabled(STRICT_FLAG, context)
        assert engine._do_is_enabled(STRICT_FLAG, context) is reference.is_enabled
        assert snap.evaluate(STRICT_FLAG, context).enabled is reference.is_enabled
    assert engine._do_is_enabled("no.such.flag", {}) is None
    assert engine.check_enabled("no.such.flag", {}).is_found is False


def test_an_engine_failure_is_an_error_evaluation_and_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The engine failing mid-evaluation (it raises YggdrasilError, which a real document
    cannot provoke on demand) answers off with reason error, as check_enabled would; it
    never raises."""
    snap = strict_at(37)

    def broken(flag: str, context: dict[str, Any]) -> bool | None:
        raise RuntimeError("engine failure")

    monkeypatch.setattr(snap._engine, "_do_is_enabled", broken)
    evaluation = snap.evaluate(STRICT_FLAG, {"userId": "c1"})
    assert (evaluation.enabled, evaluation.reason, evaluation.variant) == (False, "error", "off")
    assert "the engine failed to evaluate it" in caplog.text


@pytest.mark.parametrize("case", sorted(EVERYONE_CASES))
def test_an_answer_without_context_is_the_one_every_context_gets(case: str) -> None:
    """``evaluate_without_context`` (the cohort decision asks it before building a context)
    answers only where the flag is the same for every context with the fields named, and
    then exactly what ``evaluate`` (and the engine) answers each of them."""
    strategies, unasked = EVERYONE_CASES[case]
    doc = shipped()
    data = {**doc.data, "features": [{**f, "strategies": strategies} if f["name"] == STRICT_FLAG else f
                                     for f in doc.data["features"]]}
    snap = snapshot(parse_flags_document(json.dumps(data).encode()))
    for context in EVERYONE_CONTEXTS:
        present = frozenset(field for field in ("userId", "sessionId") if context.get(field))
        answer = snap.evaluate_without_context(STRICT_FLAG, present)
        if present == {"userId", "sessionId"}:
            assert (answer is not None) == unasked, (case, context)
        if answer is not None:
            assert answer == snap.evaluate(STRICT_FLAG, context), (case, context)
            assert answer.enabled == snap._engine.check_enabled(STRICT_FLAG, dict(context)).is_enabled


def test_a_disabled_or_absent_flag_is_answered_without_context() -> None:
    snap = snapshot(with_enabled(shipped(), SHADOW_FLAG, False))
    off = snap.evaluate_without_context(SHADOW_FLAG, frozenset())
    assert off == snap.evaluate(SHADOW_FLAG, {"userId": "a", "sessionId": "b"})
    assert off is not None and (off.enabled, off.reason) == (False, "disabled")
    absent = snap.evaluate_without_context("no.such.flag", frozenset())
    assert absent == snap.evaluate("no.such.flag", {"userId": "a"})
    assert absent is not None and (absent.found, absent.reason) == (False, "error")


def test_the_cohort_decision_reads_the_clock_only_when_the_engine_needs_a_context() -> None:
    """Outside a rollout (both cohort flags the same for everyone) no context is built and
    the clock is not read; at a split it is read once, and the decision is the engine's."""
    reads: list[int] = []

    def clock() -> str:
        reads.append(1)
        return "2026-12-07T12:00:00+00:00"

    context = EvaluationContext("client-7", "conn-7")
    for percent, reads_expected in ((100, 0), (0, 1), (50, 1)):
        reads.clear()
        snap = snapshot(with_rollout(shipped(), STRICT_FLAG, percent))
        decision = decide_cohort(snap, context, {"strict": 1, "lenient": 1}, "lenient", clock)
        assert len(reads) == reads_expected, percent
        expected = decide_cohort(snap, context, {"strict": 1, "lenient": 1}, "lenient",
                                 "2026-12-07T12:00:00+00:00")
        assert decision == expected
        assert decision.evaluations[0] == snap.evaluate(STRICT_FLAG, context.as_unleash(clock()))
