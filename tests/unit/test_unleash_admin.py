"""The Unleash Admin API backend's pure logic: projections, canonical form, rollout plans.

The HTTP side is covered against a real unleash-server in
``tests/integration/test_cli_unleash.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from canaryws.adapters.flags.backend_selection import open_backend
from canaryws.adapters.flags.file_backend import FileFlagBackend
from canaryws.adapters.flags.unleash_backend import UnleashAdminBackend
from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.adapters.flags.unleash_http import check_base_url, check_token, display_url
from canaryws.adapters.flags.unleash_projection import (
    as_flags_document,
    canonical_document,
    client_document,
    client_feature,
    plan_rollout,
)
from canaryws.core.flagdoc import FlagEditError, validate_flags_data
from canaryws.settings import UnleashSettings

# What unleash-server 8.2 answers to GET /admin/projects/default/features/records.strict
# ?variantEnvironments=true after deploy/unleash/up (trimmed of fields the projection ignores) ...
ADMIN_STRICT: dict[str, Any] = {
    "environments": [
        {
            "name": "development",
            "lastSeenAt": None,
            "variants": [],
            "enabled": True,
            "type": "development",
            "sortOrder": 2,
            "strategies": [
                {
                    "name": "flexibleRollout",
                    "constraints": [],
                    "variants": [],
                    "parameters": {"groupId": "records.strict", "rollout": "0", "stickiness": "userId"},
                    "segments": [],
                    "sortOrder": 0,
                    "id": "01M877MRABM1Y0FGWX1X9DVEQW",
                    "title": None,
                    "disabled": False,
                }
            ],
        },
        {"name": "production", "variants": [], "enabled": False, "sortOrder": 3, "strategies": []},
    ],
    "name": "records.strict",
    "impressionData": False,
    "description": "On: strict.",
    "project": "default",
    "stale": False,
    "type": "release",
    "archived": False,
    "dependencies": [],
    "children": [],
}

# ... and what it serves for the flag at GET /api/client/features (development).
CLIENT_STRICT: dict[str, Any] = {
    "name": "records.strict",
    "type": "release",
    "enabled": True,
    "project": "default",
    "stale": False,
    "strategies": [
        {
            "name": "flexibleRollout",
            "constraints": [],
            "parameters": {"groupId": "records.strict", "rollout": "0", "stickiness": "userId"},
            "variants": [],
        }
    ],
    "variants": [],
    "description": "On: strict.",
    "impressionData": False,
}


def admin_flag(name: str, strategies: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    flag = copy.deepcopy(ADMIN_STRICT)
    flag["name"] = name
    flag["environments"][0]["strategies"] = strategies
    flag.update(extra)
    return flag


def strategy(sid: str, sort_order: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": sid,
        "name": "flexibleRollout",
        "constraints": [],
        "variants": [],
        "parameters": {"rollout": "10", "stickiness": "userId", "groupId": "g"},
        "segments": [],
        "sortOrder": sort_order,
        "title": None,
        "disabled": False,
        **extra,
    }


# ----------------------------------------------------------------------- projection


def test_an_admin_flag_projects_to_what_the_client_api_serves() -> None:
    assert client_feature(ADMIN_STRICT, "development") == CLIENT_STRICT
    production = client_feature(ADMIN_STRICT, "production")
    assert production["enabled"] is False and production["strategies"] == []


def test_disabled_strategies_are_left_out_and_the_rest_sorted_by_sort_order_then_id() -> None:
    flag = admin_flag(
        "f",
        [
            strategy("b", 1),
            strategy("z", 0, disabled=True),
            strategy("c", 0, parameters={"rollout": "30"}),
            strategy("a", 1, parameters={"rollout": "20"}),
        ],
    )
    rollouts = [s["parameters"]["rollout"] for s in client_feature(flag, "development")["strategies"]]
    assert rollouts == ["30", "20", "10"]


def test_segments_appear_sorted_and_only_when_used_parameters_become_strings() -> None:
    flag = admin_flag("f", [strategy("a", segments=[3, 1], parameters={"rollout": 5, "on": True, "x": None})])
    (served,) = client_feature(flag, "development")["strategies"]
    assert served["segments"] == [1, 3]
    assert served["parameters"] == {"rollout": "5", "on": "true", "x": ""}
    assert "segments" not in client_feature(admin_flag("g", [strategy("a")]), "development")["strategies"][0]


def test_dependencies_are_served_only_when_present_with_variants_only_when_enabled() -> None:
    assert "dependencies" not in client_feature(ADMIN_STRICT, "development")
    flag = admin_flag(
        "child",
        [],
        dependencies=[
            {"feature": "p1", "enabled": True, "variants": ["v"]},
            {"feature": "p2", "enabled": False, "variants": []},
        ],
    )
    assert client_feature(flag, "development")["dependencies"] == [
        {"feature": "p1", "enabled": True, "variants": ["v"]},
        {"feature": "p2", "enabled": False},
    ]


def test_an_environment_the_flag_does_not_have_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(UnleashError, match=r"no environment 'staging'.*development, production.*UNLEASH_ENVIRONMENT"):
        client_feature(ADMIN_STRICT, "staging")


def test_client_document_is_canonical_and_keeps_only_used_segments() -> None:
    flags = [
        admin_flag("records.strict", [strategy("a", segments=[2])]),
        admin_flag("records.shadow", [strategy("b")]),
    ]
    segments = [
        {"id": 2, "name": "beta", "constraints": [], "description": None, "createdAt": "x"},
        {"id": 1, "name": "unused", "constraints": []},
    ]
    data = client_document(flags, "development", segments)
    assert [f["name"] for f in data["features"]] == ["records.shadow", "records.strict"]
    assert data["segments"] == [{"id": 2, "name": "beta", "constraints": []}]
    assert set(data) == {"version", "features", "segments"}
    validate_flags_data(data)


# ------------------------------------------------------------------- canonical form


def test_canonical_form_drops_query_and_meta_and_sorts() -> None:
    served = {
        "version": 2,
        "features": [CLIENT_STRICT, {**CLIENT_STRICT, "name": "a.first", "project": "other"}],
        "query": {"project": ["default"], "environment": "development", "inlineSegmentConstraints": False},
        "segments": [],
        "meta": {"revisionId": 11, "etag": '"1fc12c72:11:v1"', "queryHash": "1fc12c72"},
    }
    data = canonical_document(served)
    assert data == {"version": 2, "features": [served["features"][1], CLIENT_STRICT], "segments": []}
    assert canonical_document(served, project="default")["features"] == [CLIENT_STRICT]


def test_the_admin_projection_and_the_served_document_have_the_same_revision() -> None:
    from_admin = client_document([ADMIN_STRICT], "development")
    served = {"version": 2, "features": [CLIENT_STRICT], "query": {}, "segments": [], "meta": {"revisionId": 3}}
    assert validate_flags_data(from_admin).revision == validate_flags_data(canonical_document(served)).revision


def test_repeated_dependencies_are_served_once() -> None:
    dependency = {"feature": "p", "enabled": True, "variants": []}
    served = {"version": 2, "features": [{**CLIENT_STRICT, "dependencies": [dependency, dependency, dependency]}]}
    assert canonical_document(served)["features"][0]["dependencies"] == [dependency]


@pytest.mark.parametrize("answer", [[], {"features": {}}, "x"])
def test_something_else_than_a_client_features_document_is_an_error(answer: Any) -> None:
    with pytest.raises(UnleashError, match="client-features document"):
        canonical_document(answer)


def test_an_entry_that_is_not_a_flag_is_kept_last_for_validation_to_report() -> None:
    served = {"version": 2, "features": [1, CLIENT_STRICT]}
    assert canonical_document(served)["features"] == [CLIENT_STRICT, 1]
    assert [p.kind for p in validate_flags_data(canonical_document(served)).problems] == ["invalid_shape"]


def test_the_project_filter_keeps_that_projects_flags() -> None:
    other = {**CLIENT_STRICT, "name": "payments.new-checkout", "project": "payments"}
    served = {"version": 2, "features": [other, CLIENT_STRICT]}
    assert [f["name"] for f in canonical_document(served, project="default")["features"]] == ["records.strict"]
    assert [f["name"] for f in canonical_document(served)["features"]] == ["payments.new-checkout", "records.strict"]


def test_a_flag_with_problems_is_kept_in_the_document_with_them() -> None:
    data = client_document([admin_flag("f", [strategy("a", name="myCustom")])], "development")
    doc, fatal = as_flags_document(data)
    assert doc.feature_names() == ["f"] and fatal == ()
    from canaryws.adapters.flags.engine import assess

    assert [p.kind for p in assess(doc).problems] == ["custom_strategy"]


def test_what_is_not_a_flags_document_is_kept_with_why() -> None:
    doc, fatal = as_flags_document({"version": "2", "features": []})
    assert doc.feature_names() == [] and fatal == ('version: Input should be a valid integer (got "2")',)
    assert as_flags_document(client_document([ADMIN_STRICT], "development"))[1] == ()


# -------------------------------------------------------------------- rollout plans


def test_the_one_flexible_rollout_is_patched() -> None:
    plan = plan_rollout("f", "development", [strategy("a"), strategy("d", name="default")], 25)
    assert plan.action == "patch" and plan.strategy_id == "a"
    assert plan.body == [{"op": "add", "path": "/parameters/rollout", "value": "25"}]


def test_the_same_percent_is_no_change() -> None:
    assert plan_rollout("f", "development", [strategy("a")], 10).action == "unchanged"


def test_without_a_flexible_rollout_one_is_created_like_the_file_backend_does() -> None:
    plan = plan_rollout("records.strict", "development", [strategy("d", name="default")], 5)
    assert plan.action == "create"
    assert plan.body == {
        "name": "flexibleRollout",
        "constraints": [],
        "parameters": {"rollout": "5", "stickiness": "userId", "groupId": "records.strict"},
    }


def test_a_disabled_flexible_rollout_does_not_count_and_is_not_revived() -> None:
    plan = plan_rollout("f", "development", [strategy("a", disabled=True), strategy("b")], 50)
    assert plan.strategy_id == "b"
    with pytest.raises(FlagEditError, match="disabled in environment development"):
        plan_rollout("f", "development", [strategy("a", disabled=True)], 50)


def test_several_flexible_rollouts_are_ambiguous() -> None:
    with pytest.raises(FlagEditError, match="2 flexibleRollout strategies in environment development"):
        plan_rollout("f", "development", [strategy("a"), strategy("b")], 50)


@pytest.mark.parametrize("percent", [-1, 101, True])
def test_a_bad_percent_is_an_edit_error(percent: int) -> None:
    with pytest.raises(FlagEditError, match="percent"):
        plan_rollout("f", "development", [strategy("a")], percent)


# ------------------------------------------------------------------------- settings


def test_urls_are_shown_without_credentials_and_must_be_http() -> None:
    assert display_url("http://user:secret@127.0.0.1:4242/api/") == "http://127.0.0.1:4242/api"
    assert check_base_url(" http://127.0.0.1:4242/api/ ") == "http://127.0.0.1:4242/api"
    for bad in ("127.0.0.1:4242/api", "ftp://host/api", "http:///api"):
        with pytest.raises(UnleashError, match="UNLEASH_URL must be"):
            check_base_url(bad)


def test_an_unparsable_url_is_a_settings_error_shown_without_credentials() -> None:
    assert display_url("http://user:secret@[::1/api") == "http://[::1/api"
    with pytest.raises(UnleashError, match=r"got 'http://\[::1'"):
        check_base_url("http://u:p@[::1")


@pytest.mark.parametrize("token", ["", "tökén", "a\nb", "a b"])
def test_a_token_that_cannot_be_sent_is_rejected_without_showing_it(token: str) -> None:
    with pytest.raises(UnleashError, match="admin token is not a valid Unleash token") as caught:
        check_token(token, "admin")
    assert token == "" or token not in str(caught.value)
    assert check_token("*:*.0123abc", "admin") == "*:*.0123abc"


def test_the_backend_is_unleash_only_with_url_and_admin_token(tmp_path: Path) -> None:
    path = tmp_path / "features.json"
    url, token = "http://127.0.0.1:4242/api", "*:*.secret"
    assert isinstance(open_backend(path, {}), FileFlagBackend)
    assert isinstance(open_backend(path, {"UNLEASH_URL": url, "UNLEASH_API_TOKEN": "x"}), FileFlagBackend)
    assert isinstance(open_backend(path, {"UNLEASH_URL": url, "UNLEASH_ADMIN_TOKEN": " "}), FileFlagBackend)
    backend = open_backend(path, {"UNLEASH_URL": url, "UNLEASH_ADMIN_TOKEN": token})
    assert isinstance(backend, UnleashAdminBackend)
    assert backend.location == url
    assert backend.where == f"Unleash {url} (project default, environment development)"
    custom = open_backend(
        path, {"UNLEASH_URL": url, "UNLEASH_ADMIN_TOKEN": token, "UNLEASH_ENVIRONMENT": "prod", "UNLEASH_PROJECT": "p"}
    )
    assert isinstance(custom, UnleashAdminBackend)
    assert custom.where.endswith("(project p, environment prod)")
    assert UnleashSettings.from_env({}).environment == "development"
