"""The flags document: validation, revision, encoding, edits, description."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryws.core.flagdoc import (
    PROBLEM_KINDS,
    FlagEditError,
    FlagProblem,
    FlagRow,
    FlagsDocument,
    FlagsDocumentError,
    describe,
    encode_flags_document,
    parse_flags_document,
    validate_flags_data,
    with_enabled,
    with_rollout,
    without_feature,
)

REPO_FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"


def feature(name: str, *, enabled: bool = True, strategies: list[Any] | None = None) -> dict[str, Any]:
    return {"name": name, "enabled": enabled, "strategies": strategies if strategies is not None else []}


def rollout_strategy(percent: Any, group: str = "g") -> dict[str, Any]:
    return {
        "name": "flexibleRollout",
        "parameters": {"rollout": percent, "stickiness": "userId", "groupId": group},
        "constraints": [],
    }


def document(*features: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": 2, "features": list(features), "segments": [], **extra}


def error_of(data: Any) -> str:
    with pytest.raises(FlagsDocumentError) as info:
        if isinstance(data, str | bytes):
            parse_flags_document(data)
        else:
            validate_flags_data(data)
    return str(info.value)


# ----------------------------------------------------------------- the shipped file


def test_shipped_flags_file_is_valid_and_starts_everyone_lenient() -> None:
    doc = parse_flags_document(REPO_FLAGS.read_bytes())
    assert doc.feature_names() == ["records.strict", "records.shadow"]
    rows = {row.name: row for row in describe(doc)}
    assert rows["records.strict"].enabled is True
    assert rows["records.strict"].rollout == 0
    assert rows["records.shadow"].enabled is False
    assert rows["records.shadow"].rollout == 100
    strict = doc.feature("records.strict")
    assert strict is not None
    assert strict["strategies"][0]["parameters"] == {
        "rollout": "0",
        "stickiness": "userId",
        "groupId": "records.strict",
    }
    assert strict["type"] == "release" and strict["project"] == "default"
    assert strict["impressionData"] is False
    shadow = doc.feature("records.shadow")
    assert shadow is not None and shadow["type"] == "operational"
    assert shadow["strategies"][0]["parameters"]["groupId"] == "records.shadow"


def test_shipped_flags_file_is_in_canonical_encoding() -> None:
    """CLI edits then change only the lines they touch."""
    raw = REPO_FLAGS.read_bytes()
    assert encode_flags_document(parse_flags_document(raw)) == raw


# ------------------------------------------------------------------------- revision


def test_revision_ignores_whitespace_and_key_order() -> None:
    data = document(feature("a", strategies=[rollout_strategy("5")]))
    compact = json.dumps(data, separators=(",", ":"))
    pretty = json.dumps(data, indent=4)
    reordered = json.dumps(dict(reversed(list(data.items()))))
    revisions = {parse_flags_document(raw).revision for raw in (compact, pretty, reordered)}
    assert len(revisions) == 1
    (revision,) = revisions
    assert len(revision) == 16 and int(revision, 16) >= 0


def test_revision_changes_with_content() -> None:
    a = validate_flags_data(document(feature("a", strategies=[rollout_strategy("5")])))
    b = validate_flags_data(document(feature("a", strategies=[rollout_strategy("6")])))
    assert a.revision != b.revision


# ------------------------------------------------------------------------ rejection


def test_invalid_json_names_line_and_column() -> None:
    message = error_of('{"version": 2,\n  "features": [,]}')
    assert message == "invalid JSON at line 2 column 16: Expecting value"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("[]", "document: expected a JSON object with 'version' and 'features', got an array"),
        ('"x"', "got a string"),
        ("null", "got null"),
        ('{"version": 2, "version": 3, "features": []}', "duplicate key 'version'"),
        ('{"version": NaN, "features": []}', "NaN is not allowed"),
        (b'{"version": 2, "features": [\xff]}', "not valid UTF-8 at byte"),
    ],
)
def test_rejects_what_is_not_a_json_document(raw: str | bytes, expected: str) -> None:
    assert expected in error_of(raw)


def test_byte_order_mark_is_accepted() -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(document()).encode()
    assert parse_flags_document(raw).feature_names() == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"features": []}, "version: Field required"),
        ({"version": "2", "features": []}, 'version: Input should be a valid integer (got "2")'),
        ({"version": 2}, "features: Field required"),
        ({"version": 2, "features": {}}, "features: Input should be a valid list"),
    ],
)
def test_only_what_is_not_a_client_features_document_is_rejected(data: Any, expected: str) -> None:
    assert expected in error_of(data)


def problems(data: Any) -> list[tuple[str | None, str, str]]:
    """``(flag, kind, "where: message")`` of each problem of a document that is accepted."""
    return [(p.flag, p.kind, str(p)) for p in validate_flags_data(data).problems]


@pytest.mark.parametrize(
    ("data", "flag", "expected"),
    [
        (document({"name": "a", "strategies": []}), "a", "features[0].enabled: Field required"),
        (
            document(feature("a") | {"enabled": "yes"}),
            "a",
            'features[0].enabled: Input should be a valid boolean (got "yes")',
        ),
        (document({"name": "a", "enabled": True}), "a", "features[0].strategies: Field required"),
        (document(feature("")), "", "features[0].name: String should have at least 1 character"),
        (
            document(feature("a", strategies=[{"name": "default", "segments": ["1"]}])),
            "a",
            "features[0].strategies[0].segments[0]: Input should be a valid integer",
        ),
        (
            document(feature("a") | {"variants": [{"name": "v", "weight": "a"}]}),
            "a",
            "features[0].variants[0].weight: Input should be a valid integer",
        ),
        (document("not a flag"), None, "features[0]: Input should be a valid dictionary"),
        (
            document(feature("a", strategies=[{"name": "default", "constraints": [
                {"contextName": "x", "operator": "NUM_GT", "value": 5}]}])),
            "a",
            "features[0].strategies[0].constraints[0].value: Input should be a valid string",
        ),
    ],
)
def test_a_flag_of_the_wrong_shape_is_a_problem_of_that_flag_and_left_out(
        data: Any, flag: str | None, expected: str) -> None:
    data["features"].append(feature("fine"))
    doc = validate_flags_data(data)
    assert [(p.flag, p.kind) for p in doc.problems] == [(flag, "invalid_shape")]
    assert str(doc.problems[0]).startswith(expected)
    assert doc.excluded == {0}
    assert doc.feature("fine") == feature("fine")
    if flag is not None:
        assert doc.feature(flag) is None  # not evaluated
        assert doc.feature_names() == [flag, "fine"]


def test_a_segment_of_the_wrong_shape_is_left_out_and_its_users_miss_it() -> None:
    data = document(feature("a", strategies=[{"name": "default", "segments": [1]}]))
    data["segments"] = [{"id": 1}]
    assert problems(data) == [
        (None, "invalid_shape", "segments[0].constraints: Field required"),
        ("a", "missing_segment", "features[0].strategies[0].segments[0]: unknown segment id 1"),
    ]
    assert validate_flags_data(data).excluded_segments == {0}


def test_surrounding_whitespace_in_a_name_is_a_problem() -> None:
    assert problems(document(feature(" a"))) == [
        (" a", "invalid_shape", "features[0].name: ' a' has surrounding whitespace")]


def test_strategy_names_and_operators_are_not_judged_here() -> None:
    """Whether the engine implements a strategy or knows an operator is asked of the
    engine (tests/unit/test_flag_engine.py), not of a list kept in this module."""
    data = document(feature("a", strategies=[
        {"name": "myCustom"},
        {"name": "default", "constraints": [{"contextName": "x", "operator": "REGEX", "value": "^a"},
                                            {"contextName": "x", "operator": "FUTURE_OP", "values": []}]},
    ]))
    assert problems(data) == []


def test_a_duplicate_feature_name_is_a_problem_and_the_second_is_left_out() -> None:
    doc = validate_flags_data(document(feature("a"), feature("b"), feature("a", enabled=False)))
    assert [(p.flag, p.kind, str(p)) for p in doc.problems] == [
        ("a", "duplicate_name",
         "features[2].name: duplicate feature name 'a' (also features[0]); this one is not evaluated")]
    assert doc.excluded == {2}
    assert doc.feature("a") == feature("a")


@pytest.mark.parametrize("percent", ["101", "-1", "abc", "", " 5", "5.0", 25.5, 101, -1])
def test_rollout_must_be_an_integer_percent(percent: Any) -> None:
    ((flag, kind, text),) = problems(document(feature("a", strategies=[rollout_strategy(percent)])))
    assert (flag, kind) == ("a", "invalid_parameter")
    assert text.startswith("features[0].strategies[0].parameters.rollout: must be an integer from 0 to 100")


@pytest.mark.parametrize("value", [True, None, [], {"a": 1}])
def test_a_parameter_that_is_not_a_string_or_number_leaves_the_flag_out(value: Any) -> None:
    doc = validate_flags_data(document(feature("a", strategies=[rollout_strategy(value)]), feature("b")))
    assert (doc.problems[0].flag, doc.problems[0].kind) == ("a", "invalid_parameter")
    assert doc.excluded == {0}  # the engine would drop the whole document for it


def test_flexible_rollout_requires_a_rollout() -> None:
    data = document(feature("a", strategies=[{"name": "flexibleRollout", "parameters": {}}]))
    assert problems(data) == [
        ("a", "invalid_parameter", "features[0].strategies[0].parameters.rollout: required by flexibleRollout")]


def test_integer_parameters_are_normalised_to_strings_as_unleash_serves_them() -> None:
    data = document(feature("a", strategies=[rollout_strategy(25) | {"extra": 1}]))
    data["features"][0]["strategies"][0]["parameters"]["weight"] = 2.5
    doc = validate_flags_data(data)
    strategy = doc.data["features"][0]["strategies"][0]
    assert strategy["parameters"] == {
        "rollout": "25",
        "stickiness": "userId",
        "groupId": "g",
        "weight": "2.5",
    }
    assert strategy["extra"] == 1
    assert data["features"][0]["strategies"][0]["parameters"]["rollout"] == 25  # input untouched


def test_segment_and_dependency_references_must_exist() -> None:
    data = document(
        feature("a", strategies=[{"name": "default", "segments": [1, 2]}]) | {"dependencies": [{"feature": "zz"}]}
    )
    data["segments"] = [{"id": 1, "constraints": []}, {"id": 1, "constraints": []}]
    assert [text for _, _, text in problems(data)] == [
        "segments[1].id: duplicate segment id 1",
        "features[0].strategies[0].segments[1]: unknown segment id 2",
        "features[0].dependencies[0].feature: depends on 'zz', which the document does not have (archived, in "
        "another project, or never created): it evaluates as off",
    ]
    assert [kind for _, kind, _ in problems(data)] == ["duplicate_name", "missing_segment", "missing_dependency"]


def test_every_problem_kind_is_documented() -> None:
    documented = _problem_kinds_doc()
    for kind in PROBLEM_KINDS:
        assert f"``{kind}``" in documented


def _problem_kinds_doc() -> str:
    import ast
    import inspect

    from canaryws.core import flagdoc

    tree = ast.parse(inspect.getsource(flagdoc))
    for node, following in zip(tree.body, tree.body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PROBLEM_KINDS":
            assert isinstance(following, ast.Expr)
            return str(following.value.value)  # type: ignore[attr-defined]
    raise AssertionError("PROBLEM_KINDS has no docstring")


def test_many_problems_are_summarised() -> None:
    error = FlagsDocumentError([f"p{i}" for i in range(8)])
    assert error.problems == tuple(f"p{i}" for i in range(8))
    assert str(error) == "p0; p1; p2; p3; p4 (and 3 more)"


def test_problems_are_shown_with_their_location_and_as_json() -> None:
    problem = FlagProblem("a", "missing_segment", "features[0].strategies[0].segments[0]", "unknown segment id 2")
    assert str(problem) == "features[0].strategies[0].segments[0]: unknown segment id 2"
    assert problem.as_json() == {"flag": "a", "kind": "missing_segment",
                                 "where": "features[0].strategies[0].segments[0]", "message": "unknown segment id 2"}


def test_non_json_values_are_rejected() -> None:
    assert "not JSON-compatible" in error_of(document(feature("a")) | {"meta": {1, 2}})
    assert "not JSON-compatible" in error_of(document(feature("a")) | {"meta": float("inf")})


# --------------------------------------------------------------- unknown fields kept


def test_unknown_fields_are_preserved_in_order() -> None:
    data = {
        "version": 2,
        "features": [
            {
                "strategies": [rollout_strategy("5") | {"sortOrder": 3, "title": "t"}],
                "name": "a",
                "createdAt": "2024-01-01",
                "enabled": True,
            }
        ],
        "segments": [],
        "query": {"project": ["default"]},
        "meta": {"revisionId": 7, "etag": None},
    }
    doc = validate_flags_data(data)
    assert doc.data == data
    assert list(doc.data["features"][0]) == ["strategies", "name", "createdAt", "enabled"]
    encoded = encode_flags_document(doc)
    assert encoded.endswith(b"}\n")
    assert encoded.decode().startswith('{\n  "version": 2,\n  "features": [\n    {\n      "strategies"')


def test_validation_does_not_mutate_or_alias_its_input() -> None:
    data = document(feature("a", strategies=[rollout_strategy(5)]))
    before = copy.deepcopy(data)
    doc = validate_flags_data(data)
    assert data == before
    doc.data["features"][0]["name"] = "changed"
    assert data == before


def test_tuples_are_accepted_as_arrays() -> None:
    doc = validate_flags_data({"version": 2, "features": (feature("a"),)})
    assert doc.data["features"] == [feature("a")]


def test_feature_lookup_returns_a_copy() -> None:
    doc = validate_flags_data(document(feature("a")))
    found = doc.feature("a")
    assert found == feature("a")
    assert found is not None
    found["enabled"] = False
    assert doc.feature("a") == feature("a")
    assert doc.feature("missing") is None


# --------------------------------------------------------------------------- edits


def base() -> FlagsDocument:
    return validate_flags_data(
        document(
            feature("records.strict", strategies=[rollout_strategy("0", "records.strict")]),
            feature("records.shadow", enabled=False),
        )
    )


def test_with_rollout_sets_the_existing_flexible_rollout() -> None:
    doc = base()
    new = with_rollout(doc, "records.strict", 25)
    strategy = new.data["features"][0]["strategies"][0]
    assert strategy["parameters"] == {"rollout": "25", "stickiness": "userId", "groupId": "records.strict"}
    assert new.revision != doc.revision
    assert doc.data["features"][0]["strategies"][0]["parameters"]["rollout"] == "0"  # not mutated


def test_with_rollout_appends_a_flexible_rollout_when_there_is_none() -> None:
    new = with_rollout(base(), "records.shadow", 10)
    assert new.data["features"][1]["strategies"] == [
        {
            "name": "flexibleRollout",
            "parameters": {"rollout": "10", "stickiness": "userId", "groupId": "records.shadow"},
            "constraints": [],
        }
    ]


def test_with_rollout_refuses_an_ambiguous_target() -> None:
    doc = validate_flags_data(document(feature("a", strategies=[rollout_strategy("1"), rollout_strategy("2")])))
    with pytest.raises(FlagEditError, match="2 flexibleRollout strategies, the rollout to change is ambiguous"):
        with_rollout(doc, "a", 5)


@pytest.mark.parametrize("percent", [-1, 101, True, 2.5, "25"])
def test_with_rollout_refuses_a_bad_percent(percent: Any) -> None:
    with pytest.raises(FlagEditError, match="rollout percent must be"):
        with_rollout(base(), "records.strict", percent)


def test_edits_refuse_an_unknown_flag_and_list_the_known_ones() -> None:
    message = "unknown flag 'records.strcit' \\(known flags: records.strict, records.shadow\\)"
    with pytest.raises(FlagEditError, match=message):
        with_rollout(base(), "records.strcit", 5)
    with pytest.raises(FlagEditError, match=message):
        with_enabled(base(), "records.strcit", True)
    assert issubclass(FlagEditError, FlagsDocumentError)


def test_with_enabled_toggles_and_returns_a_new_document() -> None:
    doc = base()
    new = with_enabled(doc, "records.shadow", True)
    assert new.data["features"][1]["enabled"] is True
    assert doc.data["features"][1]["enabled"] is False
    assert with_enabled(new, "records.shadow", False).revision == doc.revision


def test_without_feature_removes_only_that_feature_and_returns_a_new_document() -> None:
    doc = base()
    new = without_feature(doc, "records.shadow")
    assert new.feature_names() == ["records.strict"]
    assert new.data["features"][0] == doc.data["features"][0]
    assert {k: v for k, v in new.data.items() if k != "features"} == {
        k: v for k, v in doc.data.items() if k != "features"
    }
    assert doc.feature_names() == ["records.strict", "records.shadow"]
    assert new.revision != doc.revision
    with pytest.raises(FlagEditError, match=r"unknown flag 'records.shadow' \(known flags: records.strict\)"):
        without_feature(new, "records.shadow")


def test_without_feature_refuses_a_feature_others_depend_on() -> None:
    data = document(
        feature("parent"),
        feature("child", strategies=[]) | {"dependencies": [{"feature": "parent"}]},
        feature("other") | {"dependencies": [{"feature": "child", "enabled": False}, {"feature": "parent"}]},
    )
    doc = validate_flags_data(data)
    with pytest.raises(FlagsDocumentError) as info:
        without_feature(doc, "parent")
    assert not isinstance(info.value, FlagEditError)
    assert str(info.value) == "cannot archive 'parent': 'child', 'other' depend on it; remove the dependency first"
    assert [p.kind for p in validate_flags_data(document(*data["features"][1:])).problems] == [
        "missing_dependency", "missing_dependency"]  # what the document would have: children evaluated as off
    assert without_feature(without_feature(doc, "other"), "child").feature_names() == ["parent"]


# ------------------------------------------------------------------------ describe


def test_describe_summarises_each_flag() -> None:
    data = document(
        feature("records.strict", strategies=[rollout_strategy("25", "records.strict")]) | {"description": "strict"},
        feature(
            "b",
            enabled=False,
            strategies=[
                {"name": "userWithId", "parameters": {"userIds": "a, b,c"}},
                {
                    "name": "default",
                    "constraints": [{"contextName": "v", "operator": "SEMVER_GT", "value": "1.0.0"}],
                },
            ],
        ),
        feature("c"),
        feature("d", strategies=[rollout_strategy("1"), rollout_strategy("2")]),
    )
    rows = describe(validate_flags_data(data))
    assert rows == [
        FlagRow("records.strict", True, 25, "flexibleRollout 25% (userId)", "strict"),
        FlagRow("b", False, None, "userWithId (3 users), default [1 constraint]", ""),
        FlagRow("c", True, None, "no strategies (everyone)", ""),
        FlagRow("d", True, None, "flexibleRollout 1% (userId), flexibleRollout 2% (userId)", ""),
    ]


# ---------------------------------------------------------------------- properties

edits = st.lists(
    st.one_of(
        st.tuples(st.just("rollout"), st.sampled_from(["records.strict", "records.shadow"]), st.integers(0, 100)),
        st.tuples(st.just("enabled"), st.sampled_from(["records.strict", "records.shadow"]), st.booleans()),
    ),
    max_size=12,
)


@settings(max_examples=150)
@given(edits)
def test_edits_round_trip_through_encode_and_parse(steps: list[tuple[str, str, Any]]) -> None:
    doc = base()
    expected_rollout: dict[str, int | None] = {"records.strict": 0, "records.shadow": None}
    expected_enabled = {"records.strict": True, "records.shadow": False}
    for kind, flag, value in steps:
        if kind == "rollout":
            doc = with_rollout(doc, flag, value)
            expected_rollout[flag] = value
        else:
            doc = with_enabled(doc, flag, value)
            expected_enabled[flag] = value
        reparsed = parse_flags_document(encode_flags_document(doc))
        assert reparsed == doc
    rows = {row.name: row for row in describe(doc)}
    for flag in expected_enabled:
        assert rows[flag].enabled is expected_enabled[flag]
        assert rows[flag].rollout == expected_rollout[flag]


# ------------------------------------------------------------------ expected_share
# (imports are local so that this section only appends to the module)


def _expected_share(feature_data: dict[str, Any] | None) -> float | None:
    from canaryws.core.flagdoc import expected_share

    return expected_share(feature_data)


def _harness_strict_feature(rollout: int, enabled: bool = True) -> dict[str, Any]:
    from harness import flags_doc

    strict_feature: dict[str, Any] = flags_doc(strict_rollout=rollout, strict_enabled=enabled)["features"][0]
    assert strict_feature["name"] == "records.strict"
    return strict_feature


def _rollout(percent: Any, stickiness: str | None = "userId", **extra: Any) -> dict[str, Any]:
    parameters: dict[str, Any] = {"rollout": percent, "groupId": "records.strict"}
    if stickiness is not None:
        parameters["stickiness"] = stickiness
    return {"name": "flexibleRollout", "parameters": parameters, "constraints": [], **extra}


def _default(**extra: Any) -> dict[str, Any]:
    return {"name": "default", "parameters": {}, "constraints": [], **extra}


_CONSTRAINT = {"contextName": "userId", "operator": "IN", "values": ["a", "b"]}


def test_expected_share_of_a_missing_or_disabled_feature_is_zero() -> None:
    assert _expected_share(None) == 0.0
    assert _expected_share(_harness_strict_feature(25, enabled=False)) == 0.0
    assert _expected_share(feature("f", enabled=False, strategies=[_default()])) == 0.0
    assert _expected_share(feature("f", enabled=False, strategies=[])) == 0.0


def test_expected_share_of_an_enabled_feature_without_strategies_is_one() -> None:
    assert _expected_share(feature("f", strategies=[])) == 1.0


def test_expected_share_of_a_default_strategy_is_one() -> None:
    assert _expected_share(feature("f", strategies=[_default()])) == 1.0
    assert _expected_share(feature("f", strategies=[{"name": "default"}])) == 1.0


@pytest.mark.parametrize(("rollout", "share"), [(0, 0.0), (25, 0.25), (50, 0.5), (100, 1.0)])
def test_expected_share_of_the_harness_rollout(rollout: int, share: float) -> None:
    assert _expected_share(_harness_strict_feature(rollout)) == share


@pytest.mark.parametrize("stickiness", ["userId", "default", None])
@pytest.mark.parametrize("percent", ["25", 25])
def test_expected_share_of_a_single_rollout_sticky_on_user_id(stickiness: str | None, percent: Any) -> None:
    assert _expected_share(feature("f", strategies=[_rollout(percent, stickiness)])) == 0.25


@pytest.mark.parametrize("stickiness", ["sessionId", "random", "tenantId"])
def test_expected_share_is_unknown_for_other_stickiness(stickiness: str) -> None:
    assert _expected_share(feature("f", strategies=[_rollout("25", stickiness)])) is None


def test_expected_share_is_unknown_with_constraints_or_segments() -> None:
    assert _expected_share(feature("f", strategies=[_rollout("25", constraints=[_CONSTRAINT])])) is None
    assert _expected_share(feature("f", strategies=[_rollout("25", segments=[1])])) is None
    assert _expected_share(feature("f", strategies=[_default(constraints=[_CONSTRAINT])])) is None
    assert _expected_share(feature("f", strategies=[_default(segments=[3])])) is None
    # empty lists are no constraint
    assert _expected_share(feature("f", strategies=[_rollout("25", constraints=[], segments=[])])) == 0.25


def test_expected_share_is_unknown_with_several_strategies() -> None:
    assert _expected_share(feature("f", strategies=[_rollout("25"), _rollout("50")])) is None
    assert _expected_share(feature("f", strategies=[_rollout("25"), _default()])) is None


def test_expected_share_is_unknown_for_other_strategies_and_bad_rollouts() -> None:
    assert _expected_share(feature("f", strategies=[{"name": "userWithId", "parameters": {"userIds": "a,b"}}])) is None
    gradual = {"name": "gradualRolloutUserId", "parameters": {"percentage": "25", "groupId": "f"}}
    assert _expected_share(feature("f", strategies=[gradual])) is None
    assert _expected_share(feature("f", strategies=[_rollout("abc")])) is None
    assert _expected_share(feature("f", strategies=[_rollout("101")])) is None


def test_expected_share_ignores_disabled_strategies() -> None:
    assert _expected_share(feature("f", strategies=[_rollout("25"), _default(disabled=True)])) == 0.25
    assert _expected_share(feature("f", strategies=[_rollout("25"), _rollout("50", disabled=False)])) is None
    assert _expected_share(feature("f", strategies=[_rollout("25", disabled=True), _default()])) == 1.0
    # only disabled strategies left: as if there were none
    assert _expected_share(feature("f", strategies=[_rollout("25", disabled=True)])) == 1.0


def test_expected_share_of_the_validated_document_matches_the_raw_feature() -> None:
    data = document(feature("records.strict", strategies=[rollout_strategy(40, "records.strict")]))
    doc = validate_flags_data(data)  # normalises the rollout to the string "40"
    assert _expected_share(doc.feature("records.strict")) == 0.4
    assert _expected_share(doc.feature("absent")) == 0.0


def _observed_share(strategies: list[dict[str, Any]], users: int = 2000) -> float:
    from canaryws.adapters.flags.engine import FlagSnapshot

    doc = validate_flags_data(document(feature("records.strict", strategies=strategies)))
    snap = FlagSnapshot.from_document(doc, source="test", loaded_at=0.0)
    on = sum(snap.evaluate("records.strict", {"userId": f"client-{i}"}).enabled for i in range(users))
    return on / users


@pytest.mark.parametrize(
    "strategies",
    [[], [_default()], [_rollout("25")], [_rollout("60", "default")], [_rollout("0")], [_rollout("100")]],
    ids=["none", "default", "rollout25", "rollout60-default-stickiness", "rollout0", "rollout100"],
)
def test_expected_share_matches_the_engine(strategies: list[dict[str, Any]]) -> None:
    share = _expected_share(feature("records.strict", strategies=strategies))
    assert share is not None
    assert abs(_observed_share(strategies) - share) < 0.04


@pytest.mark.parametrize(
    "strategies",
    [[_rollout("25", disabled=True)], [_rollout("25"), _default(disabled=True)]],
    ids=["only-a-disabled-rollout", "rollout-plus-disabled-default"],
)
def test_expected_share_matches_the_engine_with_disabled_strategies(strategies: list[dict[str, Any]]) -> None:
    share = _expected_share(feature("records.strict", strategies=strategies))
    assert share is not None
    assert abs(_observed_share(strategies) - share) < 0.04
