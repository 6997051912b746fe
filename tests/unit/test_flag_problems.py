"""A shared, company-wide flags document: problems of other flags are warnings, the cohort
flags keep their last good definition, and disabling records.strict always applies.

The engine (yggdrasil, the one every Unleash SDK wraps) is asked what it evaluates; these
tests use it for real. The same documents are served by a real Unleash server in
tests/integration/test_shared_unleash.py.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from canaryws.adapters.flags.engine import (
    FlagSnapshot,
    assess,
    cohort_verdicts,
    engine_implements,
    engine_knows_operator,
)
from canaryws.adapters.flags.problems import cohort_flags_status, log_applied
from canaryws.core.cohorts import SHADOW_FLAG, STRICT_FLAG
from canaryws.core.flagdoc import FlagsDocumentError, validate_flags_data

# Every constraint operator of Unleash 8 (unleash-server 8.2.0's ALL_OPERATORS, and IN_CIDR
# that newer servers add), and every built-in strategy.
UNLEASH_OPERATORS = (
    "NOT_IN", "IN", "STR_ENDS_WITH", "STR_STARTS_WITH", "STR_CONTAINS", "NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT",
    "NUM_LTE", "DATE_AFTER", "DATE_BEFORE", "SEMVER_EQ", "SEMVER_GT", "SEMVER_LT", "SEMVER_GTE", "SEMVER_LTE",
    "REGEX", "IN_CIDR",
)
BUILTIN_STRATEGIES = ("default", "userWithId", "gradualRolloutUserId", "gradualRolloutSessionId",
                      "gradualRolloutRandom", "flexibleRollout", "remoteAddress", "applicationHostname")
CLIENTS = [f"client-{i}" for i in range(400)]


def rollout(percent: int, group: str = STRICT_FLAG, **extra: Any) -> dict[str, Any]:
    return {"name": "flexibleRollout", "constraints": [],
            "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": group}, **extra}


def flag(name: str, strategies: list[dict[str, Any]], enabled: bool = True, **extra: Any) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": strategies, **extra}


def constraint(context: str, operator: str, **values: Any) -> dict[str, Any]:
    return {"contextName": context, "operator": operator, **values}


def company(strict: dict[str, Any] | None = None, *others: dict[str, Any],
            segments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """canaryws' flags among other teams' flags with every kind of problem."""
    features = [
        strict if strict is not None else flag(STRICT_FLAG, [rollout(25)]),
        flag(SHADOW_FLAG, [rollout(100, SHADOW_FLAG)], enabled=False),
        flag("payments.semver", [{"name": "default", "constraints": [
            constraint("version", "SEMVER_GTE", value="2.0.0"), constraint("version", "SEMVER_LTE", value="3.0.0")]}]),
        flag("payments.regex", [{"name": "default", "constraints": [constraint("userId", "REGEX", value="^vip-")]}]),
        flag("payments.cidr", [{"name": "default", "constraints": [
            constraint("remoteAddress", "IN_CIDR", values=["10.0.0.0/8"])]}]),
        flag("search.future-operator", [{"name": "default", "constraints": [
            constraint("userId", "STR_MATCHES_SOUNDEX", value="x")]}]),
        flag("search.region", [{"name": "company-region", "parameters": {"regions": "eu"}}]),
        flag("search.bad-number", [{"name": "default", "constraints": [constraint("n", "NUM_GT", value="many")]}]),
        flag("ui.orphan", [{"name": "default"}], dependencies=[{"feature": "ui.archived-parent", "enabled": True}]),
        flag("ui.segmented", [{"name": "default", "segments": [404]}]),
        {"name": "legacy.broken", "enabled": "sometimes", "strategies": "all of them"},
        *others,
    ]
    return {"version": 2, "features": features, "segments": segments or []}


def snap(data: dict[str, Any], previous: FlagSnapshot | None = None, at: float = 1_000.0) -> FlagSnapshot:
    return FlagSnapshot.from_document(validate_flags_data(data), source="test", loaded_at=at, previous=previous)


def strict_share(snapshot: FlagSnapshot) -> float:
    return sum(snapshot.evaluate(STRICT_FLAG, {"userId": c}).enabled for c in CLIENTS) / len(CLIENTS)


# ------------------------------------------------------------------ what the engine knows


@pytest.mark.parametrize("operator", UNLEASH_OPERATORS)
def test_the_engine_knows_every_unleash_operator(operator: str) -> None:
    assert engine_knows_operator(operator)


@pytest.mark.parametrize("operator", ["STR_MATCHES_SOUNDEX", "in", ""])
def test_an_operator_the_engine_does_not_know_is_asked_of_the_engine(operator: str) -> None:
    assert not engine_knows_operator(operator)


@pytest.mark.parametrize("strategy", BUILTIN_STRATEGIES)
def test_the_engine_implements_every_builtin_strategy(strategy: str) -> None:
    assert engine_implements(strategy)


@pytest.mark.parametrize("strategy", ["company-region", "myCustom", ""])
def test_a_custom_strategy_is_one_the_engine_does_not_implement(strategy: str) -> None:
    assert not engine_implements(strategy)


def test_every_problem_of_other_flags_is_located_and_kinded() -> None:
    found = [(p.flag, p.kind, p.where) for p in assess(validate_flags_data(company())).problems]
    assert sorted(found, key=str) == sorted([
        ("search.future-operator", "unknown_operator", "features[5].strategies[0].constraints[0].operator"),
        ("search.region", "custom_strategy", "features[6].strategies[0].name"),
        ("search.bad-number", "invalid_constraint", "features[7].strategies[0].constraints[0]"),
        ("ui.orphan", "missing_dependency", "features[8].dependencies[0].feature"),
        ("ui.segmented", "missing_segment", "features[9].strategies[0].segments[0]"),
        ("legacy.broken", "invalid_shape", "features[10].enabled"),
        ("legacy.broken", "invalid_shape", "features[10].strategies"),
    ], key=str)


def test_a_problem_in_a_segment_is_a_problem_of_the_flags_using_it() -> None:
    data = company(flag(STRICT_FLAG, [rollout(25)]),
                   flag("payments.eu", [{"name": "default", "segments": [7]}]),
                   segments=[{"id": 7, "name": "eu",
                              "constraints": [constraint("region", "NEW_OPERATOR", value="eu")]}])
    problems = [(p.flag, p.kind, p.where) for p in assess(validate_flags_data(data)).problems
                if p.flag == "payments.eu"]
    assert problems == [("payments.eu", "unknown_operator", "segments[0].constraints[0].operator")]


# -------------------------------------------------------------- other flags never block


def test_other_flags_problems_do_not_stop_the_document() -> None:
    snapshot = snap(company())
    assert snapshot.cohort_state(STRICT_FLAG) == "ok" and not snapshot.held
    assert 0.18 < strict_share(snapshot) < 0.32
    # what the engine can evaluate is evaluated as every SDK does
    assert snapshot.evaluate("payments.regex", {"userId": "vip-1"}).enabled
    assert not snapshot.evaluate("payments.regex", {"userId": "other"}).enabled
    assert snapshot.evaluate("payments.semver", {"properties": {"version": "2.5.0"}}).enabled
    assert not snapshot.evaluate("payments.semver", {"properties": {"version": "3.1.0"}}).enabled
    assert snapshot.evaluate("payments.cidr", {"remoteAddress": "10.1.2.3"}).enabled
    # and what it cannot, is off for that flag alone
    for name in ("search.future-operator", "search.region", "search.bad-number", "ui.orphan", "ui.segmented"):
        assert not snapshot.evaluate(name, {"userId": "vip-1", "properties": {"n": "5"}}).enabled, name
    assert not snapshot.has_flag("legacy.broken")


def test_the_kill_switch_reaches_the_service_whatever_other_flags_hold() -> None:
    before = snap(company())
    data = company(flag(STRICT_FLAG, [rollout(25)], enabled=False))
    after = snap(data, previous=before)
    assert after.cohort_state(STRICT_FLAG) == "disabled"
    assert strict_share(after) == 0.0
    assert after.evaluate(STRICT_FLAG, {"userId": "client-1"}).reason == "disabled"


def test_a_ramp_reaches_the_service_whatever_other_flags_hold() -> None:
    before = snap(company())
    after = snap(company(flag(STRICT_FLAG, [rollout(75)])), previous=before)
    assert 0.68 < strict_share(after) < 0.82
    assert {c for c in CLIENTS if before.evaluate(STRICT_FLAG, {"userId": c}).enabled} <= {
        c for c in CLIENTS if after.evaluate(STRICT_FLAG, {"userId": c}).enabled}


# ------------------------------------------------------------- the cohort flags are held


@pytest.mark.parametrize(
    ("strict", "kind"),
    [
        (flag(STRICT_FLAG, [rollout(90), {"name": "company-region", "parameters": {"regions": "eu"}}]),
         "custom_strategy"),
        (flag(STRICT_FLAG, [rollout(90, constraints=[constraint("userId", "STR_MATCHES_SOUNDEX", value="x")])]),
         "unknown_operator"),
        (flag(STRICT_FLAG, [rollout(90, segments=[404])]), "missing_segment"),
        (flag(STRICT_FLAG, [rollout(90)], dependencies=[{"feature": "records.enabled", "enabled": True}]),
         "missing_dependency"),
        (flag(STRICT_FLAG, [rollout(90, constraints=[constraint("n", "NUM_GT", value="many")])]),
         "invalid_constraint"),
        (flag(STRICT_FLAG, [{"name": "flexibleRollout", "parameters": {"rollout": "ninety"}}]), "invalid_parameter"),
        ({"name": STRICT_FLAG, "enabled": True, "strategies": {"flexibleRollout": 90}}, "invalid_shape"),
    ],
    ids=["custom-strategy", "unknown-operator", "missing-segment", "missing-parent", "bad-constraint-value",
         "bad-rollout", "bad-shape"],
)
def test_a_cohort_flag_the_engine_cannot_evaluate_keeps_its_last_good_definition(
        strict: dict[str, Any], kind: str) -> None:
    good = snap(company())
    data = company(strict, flag("payments.new", [{"name": "default"}]))
    held = snap(data, previous=good, at=2_000.0)
    assert held.cohort_state(STRICT_FLAG) == "held"
    assert held.held[STRICT_FLAG].kept_revision == good.revision
    assert held.held[STRICT_FLAG].since == 2_000.0
    assert kind in {p.kind for p in held.held[STRICT_FLAG].problems}
    assert held.revision != good.revision
    # the kept definition (25 %), not the served one (90 %) or off
    assert {c: held.evaluate(STRICT_FLAG, {"userId": c}).enabled for c in CLIENTS} == {
        c: good.evaluate(STRICT_FLAG, {"userId": c}).enabled for c in CLIENTS}
    assert held.expected_share(STRICT_FLAG) == 0.25
    # the rest of the document is applied
    assert held.evaluate("payments.new", {}).enabled
    # and disabling it always applies, however broken the rest of it is
    broken_and_disabled = copy.deepcopy(strict) | {"enabled": False}
    killed = snap(company(broken_and_disabled), previous=held)
    assert killed.cohort_state(STRICT_FLAG) == "disabled" and not killed.held
    assert strict_share(killed) == 0.0


def test_a_held_flag_stays_held_since_its_first_revision_and_recovers() -> None:
    good = snap(company())
    custom = {"name": "company-region", "parameters": {}}
    first = snap(company(flag(STRICT_FLAG, [rollout(90), custom])), previous=good, at=2_000.0)
    second = snap(company(flag(STRICT_FLAG, [rollout(95), custom])), previous=first, at=3_000.0)
    assert second.held[STRICT_FLAG].since == 2_000.0
    assert second.held[STRICT_FLAG].kept_revision == good.revision
    assert 0.18 < strict_share(second) < 0.32
    fixed = snap(company(flag(STRICT_FLAG, [rollout(95)])), previous=second, at=4_000.0)
    assert fixed.cohort_state(STRICT_FLAG) == "ok" and not fixed.held
    assert strict_share(fixed) > 0.9


def test_a_flag_that_was_absent_stays_absent_while_its_new_definition_is_invalid() -> None:
    without = snap({"version": 2, "features": [flag("other", [])], "segments": []})
    data = {"version": 2, "features": [flag(STRICT_FLAG, [{"name": "company-region"}])], "segments": []}
    held = snap(data, previous=without)
    assert held.cohort_state(STRICT_FLAG) == "held"
    assert held.held[STRICT_FLAG].kept_revision is None
    assert not held.has_flag(STRICT_FLAG)  # evaluated as absent: the default strategy


def test_the_last_good_parent_and_segment_are_kept_with_the_flag() -> None:
    parent = flag("records.enabled", [{"name": "default"}])
    segment = {"id": 3, "name": "beta", "constraints": [constraint("userId", "STR_STARTS_WITH", values=["client-1"])]}
    strict = flag(STRICT_FLAG, [rollout(100, segments=[3])], dependencies=[{"feature": "records.enabled"}])
    good = snap(company(strict, parent, segments=[segment]))
    on = {c for c in CLIENTS if good.evaluate(STRICT_FLAG, {"userId": c}).enabled}
    assert on == {c for c in CLIENTS if c.startswith("client-1")}
    # the parent is archived and the segment deleted: the flag, as served, cannot be evaluated
    held = snap(company(strict), previous=good)
    assert held.cohort_state(STRICT_FLAG) == "held"
    assert {p.kind for p in held.held[STRICT_FLAG].problems} == {"missing_dependency", "missing_segment"}
    assert {c for c in CLIENTS if held.evaluate(STRICT_FLAG, {"userId": c}).enabled} == on


def test_a_valid_change_to_a_parent_applies_to_a_held_flag() -> None:
    parent = flag("records.enabled", [{"name": "default"}])
    strict = flag(STRICT_FLAG, [rollout(100)], dependencies=[{"feature": "records.enabled"}])
    good = snap(company(strict, parent))
    broken = flag(STRICT_FLAG, [rollout(100), {"name": "company-region"}],
                  dependencies=[{"feature": "records.enabled"}])
    held = snap(company(broken, parent | {"enabled": False}), previous=good)
    assert held.cohort_state(STRICT_FLAG) == "held"
    assert strict_share(held) == 0.0  # the kept flag depends on the parent as served now


def test_the_shadow_flag_is_held_the_same_way() -> None:
    good = snap(company())
    data = company()
    data["features"][1] = flag(SHADOW_FLAG, [{"name": "company-region"}])
    held = snap(data, previous=good)
    assert held.cohort_state(SHADOW_FLAG) == "held"
    assert not held.evaluate(SHADOW_FLAG, {"userId": "client-1"}).enabled  # it was disabled
    assert held.cohort_state(STRICT_FLAG) == "ok"


def test_at_start_up_an_invalid_cohort_flag_is_refused_unless_it_is_disabled() -> None:
    data = company(flag(STRICT_FLAG, [{"name": "company-region"}]))
    with pytest.raises(FlagsDocumentError, match=r"records\.strict: features\[0\]\.strategies\[0\]\.name: strategy"):
        snap(data)
    data["features"][0]["enabled"] = False
    assert snap(data).cohort_state(STRICT_FLAG) == "disabled"


def test_duplicate_cohort_flags_are_held_unless_one_disables() -> None:
    good = snap(company())
    data = company(flag(STRICT_FLAG, [rollout(90)]), flag(STRICT_FLAG, [rollout(10)]))
    assert snap(data, previous=good).cohort_state(STRICT_FLAG) == "held"
    data["features"][-1]["enabled"] = False
    assert snap(data, previous=good).cohort_state(STRICT_FLAG) == "disabled"


def test_verdicts_without_a_previous_snapshot_are_what_flags_show_reports() -> None:
    doc = validate_flags_data(company(flag(STRICT_FLAG, [rollout(5, segments=[9])])))
    verdicts = cohort_verdicts(assess(doc))
    assert verdicts[STRICT_FLAG][0] == "invalid"
    assert [p.kind for p in verdicts[STRICT_FLAG][1]] == ["missing_segment"]
    assert verdicts[SHADOW_FLAG] == ("disabled", ())


# ------------------------------------------------------------------------ reporting


def test_problems_are_logged_once_per_snapshot_applied(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.flags")
    good = snap(company())
    with caplog.at_level(logging.INFO, logger="test.flags"):
        log_applied(log, good, None)
    (line,) = caplog.records
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(
        f"flags revision {good.revision}: 7 problems in flags canaryws does not evaluate (custom_strategy: 1, "
        "invalid_constraint: 1, invalid_shape: 2, missing_dependency: 1, missing_segment: 1, unknown_operator: 1)")
    caplog.clear()
    held = snap(company(flag(STRICT_FLAG, [{"name": "company-region"}])), previous=good)
    with caplog.at_level(logging.INFO, logger="test.flags"):
        log_applied(log, held, good)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"records.strict as served in revision {held.revision} cannot be "
                                             "evaluated as intended (features[0].strategies[0].name: strategy")
    assert f"keeping its definition of revision {good.revision}" in errors[0].getMessage()
    caplog.clear()
    fixed = snap(company(), previous=held)
    with caplog.at_level(logging.INFO, logger="test.flags"):
        log_applied(log, fixed, held)
    assert any(r.getMessage().startswith("records.strict can be evaluated again") for r in caplog.records)


def test_the_readiness_status_names_states_and_kinds_not_problem_text() -> None:
    good = snap(company())
    held = snap(company(flag(STRICT_FLAG, [{"name": "company-region"}])), previous=good, at=1_764_633_600.0)
    assert cohort_flags_status(held) == {
        STRICT_FLAG: {"state": "held", "since": "2025-12-02T00:00:00.000Z", "kept_revision": good.revision,
                      "problems": ["custom_strategy"]},
        SHADOW_FLAG: {"state": "disabled"},
    }
