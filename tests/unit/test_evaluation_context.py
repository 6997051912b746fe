"""The evaluation context matches the Unleash SDKs': a constraint on appName, environment,
currentTime, userId, sessionId or a property gives the answer UnleashClient gives for the
same document and context."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from UnleashClient import UnleashClient
from UnleashClient.cache import FileCache

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.core.cohorts import STRICT_FLAG, EvaluationContext, decide_cohort
from canaryws.core.flagdoc import validate_flags_data

VERSIONS = {"strict": 1, "lenient": 1}
NOON = "2026-12-06T12:00:00+00:00"


def constraint(context: str, operator: str, **values: Any) -> dict[str, Any]:
    return {"contextName": context, "operator": operator, "inverted": False, "caseInsensitive": False, **values}


CONSTRAINTS: dict[str, list[dict[str, Any]]] = {
    "app-name": [constraint("appName", "IN", values=["canaryws"])],
    "other-app": [constraint("appName", "IN", values=["billing"])],
    "environment": [constraint("environment", "IN", values=["production"])],
    "environment-prefix": [constraint("environment", "STR_STARTS_WITH", values=["prod"])],
    "after-morning": [constraint("currentTime", "DATE_AFTER", value="2026-12-06T09:00:00.000Z")],
    "before-morning": [constraint("currentTime", "DATE_BEFORE", value="2026-12-06T09:00:00.000Z")],
    "user": [constraint("userId", "STR_ENDS_WITH", values=["-7"])],
    "session": [constraint("sessionId", "IN", values=["conn-1"])],
    "client-version": [constraint("clientVersion", "SEMVER_GTE", value="2.0.0")],
    "all": [constraint("appName", "IN", values=["canaryws"]), constraint("environment", "IN", values=["production"]),
            constraint("currentTime", "DATE_AFTER", value="2026-01-01T00:00:00.000Z")],
}


def document(constraints: list[dict[str, Any]]) -> dict[str, Any]:
    strategy = {"name": "flexibleRollout", "constraints": constraints, "variants": [],
                "parameters": {"rollout": "100", "stickiness": "userId", "groupId": STRICT_FLAG}}
    return {"version": 2, "segments": [], "features": [
        {"name": STRICT_FLAG, "enabled": True, "type": "release", "project": "default", "strategies": [strategy]}]}


@pytest.fixture(scope="module")
def sdk_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], UnleashClient]]:
    """UnleashClient, bootstrapped with each document (no server), for two environments."""
    clients: dict[tuple[str, str], UnleashClient] = {}
    for name, constraints in CONSTRAINTS.items():
        for environment in ("production", "development"):
            cache = FileCache(f"sdk-{name}-{environment}", directory=str(tmp_path_factory.mktemp("sdk")))
            cache.bootstrap_from_dict(document(constraints))
            client = UnleashClient(url="http://127.0.0.1:9/api", app_name="canaryws", environment=environment,
                                   cache=cache, disable_metrics=True, disable_registration=True)
            client.initialize_client(fetch_toggles=False)
            clients[name, environment] = client
    yield clients
    for client in clients.values():
        client.destroy()


CASES = [
    ("client-7", "conn-1", {"clientVersion": "2.1.0"}),
    ("client-8", "conn-2", {"clientVersion": "1.9.9"}),
    ("client-17", "conn-3", {}),
]


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
@pytest.mark.parametrize("environment", ["production", "development"])
def test_canaryws_decides_as_unleash_client_does(sdk_clients: dict[tuple[str, str], UnleashClient], name: str,
                                                 environment: str) -> None:
    snapshot = FlagSnapshot.from_document(validate_flags_data(document(CONSTRAINTS[name])), source="test")
    sdk = sdk_clients[name, environment]
    answers = []
    for client_id, connection_id, properties in CASES:
        context = EvaluationContext(client_id, connection_id, properties, app_name="canaryws",
                                    environment=environment)
        ours = decide_cohort(snapshot, context, VERSIONS, current_time=NOON).cohort.strategy == "strict"
        theirs = sdk.is_enabled(STRICT_FLAG, {"userId": client_id, "sessionId": connection_id,
                                              "properties": dict(properties), "currentTime": NOON})
        assert ours == theirs, (client_id, ours, theirs)
        answers.append(ours)
    if name in ("app-name", "all", "after-morning") and environment == "production":
        assert all(answers)  # the comparison is not vacuous
    if name in ("other-app", "before-morning"):
        assert not any(answers)


def test_the_context_has_the_fields_an_sdk_sets() -> None:
    context = EvaluationContext("tenant-42", "c0ffee", {"clientVersion": "2.0.0"}, app_name="canaryws",
                                environment="production")
    assert context.as_unleash(NOON) == {
        "appName": "canaryws", "environment": "production", "userId": "tenant-42", "sessionId": "c0ffee",
        "properties": {"clientVersion": "2.0.0"}, "currentTime": NOON,
    }


def test_the_endpoint_writes_current_time_as_the_sdks_do() -> None:
    from canaryws.adapters.records.flags_view import now_iso

    parsed = datetime.fromisoformat(now_iso())
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_unleash_client_is_used_offline(tmp_path: Path) -> None:
    """The comparison above needs no server: UnleashClient evaluates its bootstrap."""
    cache = FileCache("offline", directory=str(tmp_path))
    cache.bootstrap_from_dict(document([]))
    client = UnleashClient(url="http://127.0.0.1:9/api", app_name="canaryws", cache=cache, disable_metrics=True,
                           disable_registration=True)
    client.initialize_client(fetch_toggles=False)
    try:
        assert client.is_enabled(STRICT_FLAG, {"userId": "x"})
        assert not client.is_enabled("absent", {"userId": "x"})
    finally:
        client.destroy()
