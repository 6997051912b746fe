"""Unleash Admin API answers as the client-features document SDKs get: pure, no I/O.

**The document.** The flags of an environment are presented as the client-features
document it serves to SDKs, rebuilt from Admin API answers by :func:`client_document`
(the same projection unleash-server applies for ``/api/client/features``: the
environment's enabled state, its strategies without the disabled ones, in sort order,
parameters as strings, segment ids only when used) and put in the canonical form of
:func:`canonical_document`: ``version``, ``features`` sorted by name, ``segments``
restricted to the ones the features use, sorted by id; no ``query`` or ``meta``. Its
flagdoc revision is the revision the CLI shows, and ``export``
(:mod:`~canaryws.adapters.flags.unleash_export`) writes the same canonical form of
``GET /api/client/features``, so a fresh export carries the revision ``show`` prints.

Also here: :func:`plan_rollout`, what setting a rollout percent takes on the server, and
the shape checks of answers (:func:`expect_object`, :func:`expect_objects`). An answer of
a shape the projection does not know is an
:class:`~canaryws.adapters.flags.unleash_errors.UnleashError`; an unknown flag or an
ambiguous rollout is flagdoc's :class:`~canaryws.core.flagdoc.FlagEditError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from canaryws.adapters.flags.unleash_errors import UnleashError
from canaryws.core.flagdoc import (
    FLEXIBLE_ROLLOUT,
    FlagEditError,
    FlagsDocument,
    FlagsDocumentError,
    canonical_data,
    compute_revision,
    validate_flags_data,
)


def client_document(
    admin_features: Sequence[Mapping[str, Any]],
    environment: str,
    segments: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The canonical client-features document of ``environment``, from Admin API answers.

    ``admin_features`` are ``GET /admin/projects/{p}/features/{name}`` answers,
    ``segments`` the items of ``GET /admin/segments`` (only the used ones are kept).
    """
    return canonical_document(
        {
            "version": 2,
            "features": [client_feature(feature, environment) for feature in admin_features],
            "segments": [client_segment(segment) for segment in segments],
        }
    )


def client_feature(admin: Mapping[str, Any], environment: str) -> dict[str, Any]:
    """One flag as ``/api/client/features`` serves it for ``environment``.

    Mirrors unleash-server's client projection: disabled strategies are left out,
    strategies are in sort order (then by id), parameters are strings, ``segments``
    appears only when a strategy uses some, ``dependencies`` only when there are some.
    """
    name = admin.get("name")
    env = environment_of(admin, environment)
    strategies = [s for s in expect_objects(env.get("strategies"), f"{name}.strategies") if not s.get("disabled")]
    strategies.sort(key=_strategy_order)
    feature: dict[str, Any] = {
        "name": name,
        "type": admin.get("type"),
        "enabled": bool(env.get("enabled")),
        "project": admin.get("project"),
        "stale": admin.get("stale"),
        "strategies": [client_strategy(strategy) for strategy in strategies],
        "variants": env.get("variants") or [],
        "description": admin.get("description"),
        "impressionData": admin.get("impressionData"),
    }
    dependencies = [
        _client_dependency(dependency)
        for dependency in expect_objects(admin.get("dependencies"), f"{name}.dependencies")
    ]
    if dependencies:
        feature["dependencies"] = dependencies
    return feature


def client_strategy(admin: Mapping[str, Any]) -> dict[str, Any]:
    """A strategy as the client API serves it (no id, title, sortOrder, disabled)."""
    parameters = admin.get("parameters") or {}
    strategy: dict[str, Any] = {
        "name": admin.get("name"),
        "constraints": admin.get("constraints") or [],
        "parameters": {key: _js_string(value) for key, value in parameters.items()},
        "variants": admin.get("variants") or [],
    }
    segments = sorted(admin.get("segments") or [])
    if segments:
        strategy["segments"] = segments
    return strategy


def client_segment(admin: Mapping[str, Any]) -> dict[str, Any]:
    """A segment as the client API serves it."""
    return {"id": admin.get("id"), "name": admin.get("name"), "constraints": admin.get("constraints") or []}


def canonical_document(data: Mapping[str, Any], *, project: str | None = None) -> dict[str, Any]:
    """flagdoc's :func:`~canaryws.core.flagdoc.canonical_data` (the form the service, ``show``
    and ``export`` compare), with UnleashError for what is not a client-features document."""
    try:
        return canonical_data(data, project=project)
    except FlagsDocumentError as exc:
        raise UnleashError(str(exc)) from None


def environment_of(admin: Mapping[str, Any], environment: str) -> Mapping[str, Any]:
    """The ``environments`` entry of an Admin API flag; UnleashError if it has none."""
    name = admin.get("name")
    environments = expect_objects(admin.get("environments"), f"{name}.environments")
    for env in environments:
        if env.get("name") == environment:
            return env
    known = ", ".join(str(env.get("name")) for env in environments) or "none"
    raise UnleashError(
        f"flag {name!r} has no environment {environment!r} in Unleash (its environments: {known}); "
        "check UNLEASH_ENVIRONMENT"
    )


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What ``rollout`` has to do on the server."""

    action: Literal["unchanged", "patch", "create"]
    strategy_id: str | None = None
    body: Any = None


def plan_rollout(flag: str, environment: str, strategies: Sequence[Mapping[str, Any]], percent: int) -> RolloutPlan:
    """How to set ``flag``'s flexibleRollout in ``environment`` to ``percent``.

    ``strategies`` are the environment's Admin API strategies (disabled ones
    included). The one enabled flexibleRollout is patched; without any, one is
    created (stickiness userId, groupId = flag), like the file backend does.
    Several enabled ones are ambiguous; only disabled ones are not ours to revive.
    """
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise FlagEditError(f"rollout percent must be an integer from 0 to 100, got {percent!r}")
    rollouts = [s for s in strategies if s.get("name") == FLEXIBLE_ROLLOUT]
    active = [s for s in rollouts if not s.get("disabled")]
    if len(active) > 1:
        raise FlagEditError(
            f"{flag}: {len(active)} flexibleRollout strategies in environment {environment}, the rollout to "
            "change is ambiguous; change it in the Unleash UI"
        )
    if active:
        strategy = active[0]
        current = (strategy.get("parameters") or {}).get("rollout")
        if str(current).strip() == str(percent) or (isinstance(current, int) and current == percent):
            return RolloutPlan("unchanged", str(strategy.get("id")))
        return RolloutPlan(
            "patch",
            str(strategy.get("id")),
            [{"op": "add", "path": "/parameters/rollout", "value": str(percent)}],
        )
    if rollouts:
        raise FlagEditError(
            f"{flag}: its flexibleRollout strategy is disabled in environment {environment}; "
            "enable the strategy in the Unleash UI first"
        )
    return RolloutPlan(
        "create",
        None,
        {
            "name": FLEXIBLE_ROLLOUT,
            "constraints": [],
            "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": flag},
        },
    )


def as_flags_document(data: Mapping[str, Any]) -> tuple[FlagsDocument, tuple[str, ...]]:
    """The document, and why it is not a flags document at all (usually nothing).

    Such a document is still returned (revision of the raw data), so that an operator
    can see and fix the server's state, e.g. disable a flag. The problems of single
    flags are in the document (and ``canaryws.adapters.flags.engine.assess``).
    """
    try:
        return validate_flags_data(data), ()
    except FlagsDocumentError as exc:
        return FlagsDocument(data=json.loads(json.dumps(data)), revision=compute_revision(data)), exc.problems


# -------------------------------------------------------------------- answer shapes


def expect_object(value: Any, what: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object; UnleashError naming ``what`` otherwise."""
    if not isinstance(value, Mapping):
        raise UnleashError(f"unexpected answer from Unleash for the {what}: not a JSON object")
    return value


def expect_objects(value: Any, what: str) -> list[Mapping[str, Any]]:
    """``value`` if it is a list of JSON objects (absent: empty); UnleashError naming ``what`` otherwise."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise UnleashError(f"unexpected answer from Unleash: {what} is not a list of objects")
    return list(value)


# ------------------------------------------------------------------------ internals


def _strategy_order(strategy: Mapping[str, Any]) -> tuple[int, int, str]:
    milestone = 0 if strategy.get("milestoneId") else 1
    sort_order = strategy.get("sortOrder")
    return (milestone, sort_order if isinstance(sort_order, int) else 0, str(strategy.get("id") or ""))


def _client_dependency(admin: Mapping[str, Any]) -> dict[str, Any]:
    dependency: dict[str, Any] = {"feature": admin.get("feature"), "enabled": admin.get("enabled")}
    if admin.get("enabled"):
        dependency["variants"] = admin.get("variants") or []
    return dependency


def _js_string(value: Any) -> str:
    """unleash-server's ``ensureStringValue``: how the client API serves parameters."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
