"""Smoke test of tests/company_unleash.py: a populated server serves what populate says it does.

Checked against the real client API (``GET /api/client/features``) and the yggdrasil engine
that UnleashClient evaluates with."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import company_unleash
from company_unleash import (
    CANARYWS_FLAGS,
    CUSTOM_STRATEGY,
    DEFAULT_PROJECT,
    LEGACY_CHILD,
    LEGACY_PARENT,
    OPERATORS,
    OTHER_PROJECT,
    PROJECT_SQL,
    CompanyWorld,
    client_features,
    load_engine,
    populate,
    server_operators,
)
from harness import UnleashServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(unleash: UnleashServer) -> CompanyWorld:
    return populate(unleash)


def names(document: dict[str, Any]) -> set[str]:
    return {f["name"] for f in document["features"]}


def constraints(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for feature in document["features"]:
        for strategy in feature["strategies"]:
            yield from strategy.get("constraints", [])
    for segment in document.get("segments", []):
        yield from segment["constraints"]


def feature(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [f for f in document["features"] if f["name"] == name]
    assert isinstance(found, dict)
    return found


def test_populate_twice_gives_the_same_world(unleash: UnleashServer, world: CompanyWorld) -> None:
    assert populate(unleash) is world


def test_the_wildcard_token_is_served_every_project(unleash: UnleashServer, world: CompanyWorld) -> None:
    document = client_features(unleash, world.token)
    assert names(document) == set(world.flags) | set(CANARYWS_FLAGS) == set(world.served_names)
    assert {f["project"] for f in document["features"]} == set(world.projects)
    for project, flags in world.projects.items():
        assert {f["name"] for f in document["features"] if f["project"] == project} >= set(flags)
    assert not set(world.archived) & names(document)


def test_a_project_query_serves_only_that_project(unleash: UnleashServer, world: CompanyWorld) -> None:
    everything = client_features(unleash, world.token)
    for served in everything["features"]:  # every flag with its own project
        note = world.notes.get(served["name"])
        assert served["project"] == (note.project if note else DEFAULT_PROJECT), served["name"]
    default = client_features(unleash, world.token, project=DEFAULT_PROJECT)
    assert {f["project"] for f in default["features"]} == {DEFAULT_PROJECT}
    assert names(default) == set(world.projects[DEFAULT_PROJECT]) | set(CANARYWS_FLAGS)
    payments = client_features(unleash, world.token, project=OTHER_PROJECT)
    assert {f["project"] for f in payments["features"]} == {OTHER_PROJECT}
    assert names(payments) == set(world.projects[OTHER_PROJECT])
    assert names(default) | names(payments) == names(everything) and not names(default) & names(payments)
    both = client_features(unleash, world.token, project=[DEFAULT_PROJECT, OTHER_PROJECT])
    assert names(both) == names(everything)
    # The token `up` prints is scoped default:development: the same as ?project=default, and
    # asking it for payments does not widen its scope.
    scoped = world.project_tokens[DEFAULT_PROJECT]
    assert scoped == unleash.values["UNLEASH_API_TOKEN"] and scoped.startswith(f"{DEFAULT_PROJECT}:")
    assert names(client_features(unleash, scoped)) == names(default)
    assert not names(client_features(unleash, scoped, project=OTHER_PROJECT)) & set(world.projects[OTHER_PROJECT])
    # A token scoped to payments gets payments' flags only.
    assert world.project_tokens[OTHER_PROJECT].startswith(f"{OTHER_PROJECT}:")
    assert names(client_features(unleash, world.project_tokens[OTHER_PROJECT])) == names(payments)


def test_payments_is_a_real_project(unleash: UnleashServer, world: CompanyWorld) -> None:
    assert world.other_project_created and set(world.projects) == {DEFAULT_PROJECT, OTHER_PROJECT}
    assert all(note.project == note.wanted_project for note in world.notes.values())
    teams = {n: note for n, note in world.notes.items() if note.project == OTHER_PROJECT}
    assert {note.team for note in teams.values()} == {"payments"}
    assert any(note.custom_strategy for note in teams.values())
    assert {"SEMVER_GTE", "SEMVER_LTE", "REGEX"} <= {op for note in teams.values() for op in note.operators}
    assert any(note.segments for note in teams.values()) and any(note.parents for note in teams.values())
    assert any(note.strategy_variants for note in teams.values()) and not all(n.enabled for n in teams.values())
    assert any(name.startswith("records.") for name in teams)  # canaryws's prefix, another project
    # The open-source server has no route to create it: populate wrote it into the database.
    assert world.other_project_via_sql
    assert world.refusals["create project"].status == 404
    assert textwrap.indent(PROJECT_SQL, "    ") in (company_unleash.__doc__ or "")
    # The Admin API knows it as a project of its own.
    admin = httpx.Client(base_url=f"{unleash.url}/admin", timeout=15,
                         headers={"Authorization": unleash.values["UNLEASH_ADMIN_TOKEN"]})
    with admin:
        overview = admin.get(f"/projects/{OTHER_PROJECT}/overview")
        assert overview.status_code == 200 and overview.json()["name"] == "Payments"
        assert {e["environment"] for e in overview.json()["environments"]} >= {"development"}
        listed = admin.get(f"/projects/{OTHER_PROJECT}/features")
        assert listed.status_code == 200
        assert {f["name"] for f in listed.json()["features"]} == set(world.projects[OTHER_PROJECT])
        default_listed = {f["name"] for f in admin.get(f"/projects/{DEFAULT_PROJECT}/features").json()["features"]}
        assert not default_listed & set(world.projects[OTHER_PROJECT])
        events = admin.get("/events", params={"project": OTHER_PROJECT}).json()["events"]
        assert "project-created" in {e["type"] for e in events}
        # Still an OSS server: its project list shows default only.
        assert [p["id"] for p in admin.get("/projects").json()["projects"]] == [DEFAULT_PROJECT]
    # Dependencies and project-scoped segments stay within their project.
    assert world.refusals["cross-project dependency"].status == 404
    assert world.refusals["segment of another project"].status == 400


def test_every_operator_is_served(unleash: UnleashServer, world: CompanyWorld) -> None:
    assert sorted(server_operators()) == sorted(OPERATORS) == sorted(world.operators)
    for spec in ("6.1.0", None):  # segments by id, or inlined into the strategies
        served = list(constraints(client_features(unleash, world.token, spec=spec)))
        assert {c["operator"] for c in served} == set(OPERATORS)
        assert any(c["inverted"] for c in served) and any(c["caseInsensitive"] for c in served)
        assert {c["contextName"] for c in served} >= {
            "userId", "appName", "environment", "currentTime", "remoteAddress",  # standard fields
            "email", "appVersion", "seats", "accountAgeDays", "tenant", "tenantTier"}  # custom properties
    assert {op for note in world.notes.values() for op in note.operators} == set(OPERATORS)  # flags alone


def test_custom_strategy_and_segments(unleash: UnleashServer, world: CompanyWorld) -> None:
    assert world.custom_strategy == CUSTOM_STRATEGY
    document = client_features(unleash, world.token)
    (custom,) = [n for n, note in world.notes.items() if note.custom_strategy]
    assert [s["name"] for s in feature(document, custom)["strategies"]] == [CUSTOM_STRATEGY]
    # Spec >= 4.2.0: segments by id and a top-level list of the segments in use.
    assert {s["id"]: s["name"] for s in document["segments"]} == {i: n for n, i in world.used_segments.items()}
    assert set(world.segments) - set(world.used_segments) == {"unused-old-cohort"}
    referenced = {i for f in document["features"] for s in f["strategies"] for i in s.get("segments", [])}
    assert referenced == set(world.used_segments.values())
    for name, note in world.notes.items():
        if note.segments:
            served = [i for s in feature(document, name)["strategies"] for i in s.get("segments", [])]
            assert sorted(served) == sorted(world.segments[n] for n in note.segments)
    # No spec header: no segment list; their constraints are inlined.
    inline = client_features(unleash, world.token, spec=None)
    assert "segments" not in inline
    dark = feature(inline, "mobile.dark-mode")["strategies"]
    assert all("segments" not in s for s in dark)
    assert [c["operator"] for c in dark[0]["constraints"]] == ["SEMVER_GTE"]


def test_dependencies_and_archived_parents(unleash: UnleashServer, world: CompanyWorld) -> None:
    document = client_features(unleash, world.token)
    for name, note in world.notes.items():
        assert [d["feature"] for d in feature(document, name).get("dependencies", [])] == note.parents
    assert feature(document, "ui.new-infra-blue-theme")["dependencies"] == [
        {"feature": "platform.new-infra", "enabled": True, "variants": ["blue"]}]
    assert feature(document, "ui.legacy-infra-notice")["dependencies"] == [
        {"feature": "platform.new-infra", "enabled": False}]
    # Unleash refuses archiving a parent that has a child; archiving both, then reviving the
    # child, leaves a child without dependency.
    assert world.refusals["archive parent with child"].status == 403
    assert world.refusals["dependency on archived parent"].status == 403
    assert LEGACY_PARENT not in names(document) and "dependencies" not in feature(document, LEGACY_CHILD)
    # A name prefix query serves children whose parents are missing from the document.
    partial = client_features(unleash, world.token, **world.missing_parent_query)
    children = [n for n, note in world.notes.items() if note.missing_parent_with]
    assert children and names(partial) == set(children)
    assert all(world.notes[c].parents[0] not in names(partial) for c in children)


def test_variants_are_served(unleash: UnleashServer, world: CompanyWorld) -> None:
    document = client_features(unleash, world.token)
    for name, note in world.notes.items():
        served = feature(document, name)
        assert bool(served["variants"]) is note.environment_variants, name
        assert any(s["variants"] for s in served["strategies"]) is note.strategy_variants, name
    ranking = feature(document, "search.ranking-v2")["variants"]
    assert {v["payload"]["type"] for v in ranking} == {"csv", "number"} and ranking[0]["overrides"]


def test_the_engine_evaluates_the_served_document(unleash: UnleashServer, world: CompanyWorld) -> None:
    document = client_features(unleash, world.token)
    engine, warnings = load_engine(document)
    assert warnings is None
    base: dict[str, Any] = {
        "userId": "beta-001", "appName": "web", "environment": "development", "remoteAddress": "10.1.2.3",
        "currentTime": "2026-11-28T12:00:00Z", "sessionId": "s1",
        "properties": {"email": "x@beta.example.com", "appVersion": "3.1.0", "seats": "10", "accountAgeDays": "40",
                       "tenantTier": "pro", "tenant": "ACME-eu"}}

    def on(name: str, **changes: Any) -> bool:
        context = {**base, **changes, "properties": {**base["properties"], **changes.get("properties", {})}}
        answer = engine.check_enabled(name, context)
        assert answer.is_found, name
        return bool(answer.is_enabled)

    assert all(engine.check_enabled(n, base).is_found for n in names(document))
    assert on("platform.always-on")
    assert on("marketing.black-friday") and not on("marketing.black-friday", currentTime="2026-12-02T00:00:00Z")
    assert on("mobile.dark-mode")  # segment mobile-modern, by id
    assert not on("mobile.dark-mode", userId="someone", properties={"appVersion": "2.0.0", "email": "a@b.c"})
    assert on("search.autocomplete") and not on("search.autocomplete", remoteAddress="8.8.8.8")
    assert on("billing.seat-pricing")
    assert not on("billing.seat-pricing", properties={"seats": "1", "accountAgeDays": "3"})
    assert on("billing.seat-pricing", properties={"seats": "2", "accountAgeDays": "3"})
    assert on("records.payment-receipts")  # payments: SEMVER_GTE/LTE, REGEX, a payments segment
    assert not on("records.payment-receipts", properties={"appVersion": "3.3.0"})
    assert not on("records.payment-receipts", properties={"tenant": "globex-eu"})
    assert not on("records.payment-receipts", properties={"tenantTier": "free"})
    assert engine.check_variant("records.payment-receipts", base).variant.name in {"pdf", "html"}
    assert not on("checkout.paypal-express")  # disabled, child of checkout.one-click
    assert on("platform.internal-ips")  # remoteAddress strategy, 10.0.0.0/8
    assert not on("platform.internal-ips", remoteAddress="8.8.8.8")
    assert on("platform.internal-ips", remoteAddress="172.20.0.1", properties={"tenant": "ACME-US"})
    assert on("ui.new-infra-banner") and not on("ui.legacy-infra-notice")
    for user in (f"user-{i}" for i in range(20)):  # blue-theme requires the parent's variant blue
        parent_variant = engine.check_variant("platform.new-infra", {**base, "userId": user}).variant.name
        assert on("ui.new-infra-blue-theme", userId=user) is (parent_variant == "blue")
    for session in (f"s{i}" for i in range(10)):  # environment variants: the override wins
        context = {**base, "sessionId": session, "properties": {"email": "a@example.com"}}
        if engine.check_enabled("search.ranking-v2", context).is_enabled:
            assert engine.check_variant("search.ranking-v2", context).variant.name == "bm25"
    # Strategies the Python engine has no implementation for are off.
    assert not on(next(n for n, note in world.notes.items() if note.custom_strategy))
    assert not on("platform.hostname-pinned")
    # Children whose parent is missing from the document are off.
    partial, partial_warnings = load_engine(client_features(unleash, world.token, **world.missing_parent_query))
    assert partial_warnings is None
    assert not partial.check_enabled("ui.new-infra-banner", base).is_enabled
