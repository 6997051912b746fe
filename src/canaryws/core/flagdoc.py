"""The flags document: the Unleash client-features document, validated and edited.

The document is what Unleash serves at ``/api/client/features``::

    {"version": 2, "features": [...], "segments": [...]}

Pure: no I/O. Validation happens here, *before* the document reaches the Unleash
engine, because the engine accepts unknown strategies and operators silently (they
evaluate to false) and drops the whole state on a shape it cannot parse.

Unknown fields are allowed and preserved (Unleash keeps adding fields). Strategy
parameters are normalised to strings, as Unleash serves them: the engine rejects the
whole document when a parameter is a JSON number.

Edits (:func:`with_rollout`, :func:`with_enabled`, :func:`without_feature`) return new
documents and never mutate their input.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError

KNOWN_STRATEGIES: tuple[str, ...] = (
    "default",
    "flexibleRollout",
    "userWithId",
    "gradualRolloutUserId",
    "gradualRolloutSessionId",
    "gradualRolloutRandom",
    "remoteAddress",
    "applicationHostname",
)
"""Built-in Unleash activation strategies; any other strategy name is rejected."""

MULTI_VALUE_OPERATORS: tuple[str, ...] = (
    "IN",
    "NOT_IN",
    "STR_CONTAINS",
    "STR_STARTS_WITH",
    "STR_ENDS_WITH",
)
SINGLE_VALUE_OPERATORS: tuple[str, ...] = (
    "NUM_EQ",
    "NUM_GT",
    "NUM_GTE",
    "NUM_LT",
    "NUM_LTE",
    "DATE_AFTER",
    "DATE_BEFORE",
    "SEMVER_EQ",
    "SEMVER_GT",
    "SEMVER_LT",
)
KNOWN_OPERATORS: tuple[str, ...] = MULTI_VALUE_OPERATORS + SINGLE_VALUE_OPERATORS
"""Unleash constraint operators; the engine evaluates unknown ones to false."""

FLEXIBLE_ROLLOUT = "flexibleRollout"
_GRADUAL_ROLLOUTS = ("gradualRolloutUserId", "gradualRolloutSessionId", "gradualRolloutRandom")
_MAX_PROBLEMS_IN_MESSAGE = 5


class FlagsDocumentError(ValueError):
    """The flags document is invalid, or an edit cannot be applied to it.

    ``problems`` holds every problem found, each prefixed with its location
    (``features[0].strategies[1].name: unknown strategy ...``); the message shows
    the first few.
    """

    def __init__(self, message: str | Sequence[str]) -> None:
        problems = (message,) if isinstance(message, str) else tuple(message)
        self.problems: tuple[str, ...] = problems
        shown = "; ".join(problems[:_MAX_PROBLEMS_IN_MESSAGE])
        hidden = len(problems) - _MAX_PROBLEMS_IN_MESSAGE
        super().__init__(f"{shown} (and {hidden} more)" if hidden > 0 else shown)


class FlagEditError(FlagsDocumentError):
    """A requested edit is not applicable: unknown flag, bad percent, ambiguous target.

    The document itself is fine; callers (the CLI) report this as a usage error.
    """


# --------------------------------------------------------------------------- models
# Shape validation only. The validated data is the JSON input itself (key order and
# unknown fields preserved); the models are never dumped.

_NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Constraint(_Model):
    contextName: _NonEmpty
    operator: str
    values: list[str] | None = None  # required by the multi-value operators
    value: str | None = None  # required by the single-value operators
    inverted: bool | None = None
    caseInsensitive: bool | None = None


class _Payload(_Model):
    type: str
    value: str


class _Variant(_Model):
    name: _NonEmpty
    weight: Annotated[int, Field(ge=0, le=1000)]
    weightType: str | None = None
    stickiness: str | None = None
    payload: _Payload | None = None
    overrides: list[dict[str, Any]] = Field(default_factory=list)


class _Strategy(_Model):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    constraints: list[_Constraint] = Field(default_factory=list)
    segments: list[int] = Field(default_factory=list)
    variants: list[_Variant] = Field(default_factory=list)


class _Dependency(_Model):
    feature: _NonEmpty
    enabled: bool | None = None
    variants: list[str] = Field(default_factory=list)


class _Feature(_Model):
    name: _NonEmpty
    enabled: bool
    strategies: list[_Strategy]
    description: str | None = None
    project: str | None = None
    type: str | None = None
    impressionData: bool | None = None
    stale: bool | None = None
    variants: list[_Variant] = Field(default_factory=list)
    dependencies: list[_Dependency] = Field(default_factory=list)


class _Segment(_Model):
    id: int
    name: str | None = None
    constraints: list[_Constraint]


class _Document(_Model):
    version: int
    features: list[_Feature]
    segments: list[_Segment] = Field(default_factory=list)


# ------------------------------------------------------------------------- document


@dataclass(frozen=True)
class FlagsDocument:
    """A validated flags document.

    ``data`` is JSON-compatible and must be treated as read-only (edits return new
    documents). ``revision`` is the first 16 hex characters of the SHA-256 of the
    canonical JSON (sorted keys, compact separators), so whitespace and key-order
    edits keep the revision.
    """

    data: dict[str, Any]
    revision: str

    def feature(self, name: str) -> dict[str, Any] | None:
        """A copy of the feature called ``name``, or None."""
        for feature in self.data["features"]:
            if feature["name"] == name:
                found: dict[str, Any] = copy.deepcopy(feature)
                return found
        return None

    def feature_names(self) -> list[str]:
        """Feature names in document order."""
        return [feature["name"] for feature in self.data["features"]]


def compute_revision(data: Mapping[str, Any]) -> str:
    """The revision of a flags document: a hash of what decides evaluation (``version``,
    ``features``, ``segments``), independent of whitespace and key order. Server-side
    metadata (``query``, ``meta``) varies per request and is left out, so the file and an
    Unleash server serving the same flags have the same revision. A missing ``segments``
    counts as empty (the server omits it unless the client announces segment support)."""
    features = data.get("features") or []
    segments = data.get("segments") or []
    relevant = {
        "version": data.get("version"),
        # Unleash serves features in no defined order: order must not change the revision.
        "features": sorted(features, key=lambda f: str(f.get("name", "")) if isinstance(f, Mapping) else ""),
        "segments": sorted(segments, key=lambda g: str(g.get("id", "")) if isinstance(g, Mapping) else ""),
    }
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def parse_flags_document(raw: str | bytes) -> FlagsDocument:
    """Parse and validate a flags document from JSON text.

    Raises FlagsDocumentError for invalid UTF-8, invalid JSON, duplicate object keys,
    NaN/Infinity, or an invalid document.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FlagsDocumentError(f"not valid UTF-8 at byte {exc.start}") from None
    else:
        text = raw
    try:
        data = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        raise FlagsDocumentError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _JsonProblem as exc:
        raise FlagsDocumentError(str(exc)) from None
    return validate_flags_data(data)


def validate_flags_data(data: Any) -> FlagsDocument:
    """Validate an already-decoded document (a JSON-compatible object).

    The input is not modified: the document holds a normalised deep copy.
    """
    if not isinstance(data, Mapping):
        raise FlagsDocumentError(
            f"document: expected a JSON object with 'version' and 'features', got {_json_type(data)}"
        )
    try:
        # Deep copy through JSON: rejects non-JSON values, turns tuples into lists.
        copied = json.loads(json.dumps(data, allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        raise FlagsDocumentError(f"document: not JSON-compatible: {exc}") from None
    try:
        model = _Document.model_validate(copied)
    except ValidationError as exc:
        raise FlagsDocumentError(_format_validation_errors(exc)) from None
    problems = _semantic_problems(model, copied)
    if problems:
        raise FlagsDocumentError(problems)
    _normalise_parameters(copied)
    return FlagsDocument(data=copied, revision=compute_revision(copied))


def encode_flags_document(doc: FlagsDocument) -> bytes:
    """The document as UTF-8 JSON: indent 2, key order preserved, trailing newline."""
    return (json.dumps(doc.data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------- edits


def with_rollout(doc: FlagsDocument, flag: str, percent: int) -> FlagsDocument:
    """A new document with ``flag``'s flexibleRollout set to ``percent`` (0..100).

    If the flag has no flexibleRollout strategy, one is appended (stickiness
    ``userId``, groupId = the flag name). Several flexibleRollout strategies make the
    target ambiguous: FlagEditError.
    """
    _check_percent(percent)
    data, feature = _editable_feature(doc, flag)
    rollouts = [s for s in feature["strategies"] if s.get("name") == FLEXIBLE_ROLLOUT]
    if len(rollouts) > 1:
        raise FlagEditError(
            f"{flag}: {len(rollouts)} flexibleRollout strategies, the rollout to change is "
            "ambiguous; edit the flags file by hand"
        )
    if rollouts:
        parameters = rollouts[0].get("parameters")
        if not isinstance(parameters, dict):
            parameters = {}
            rollouts[0]["parameters"] = parameters
        parameters["rollout"] = str(percent)
    else:
        feature["strategies"].append(
            {
                "name": FLEXIBLE_ROLLOUT,
                "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": flag},
                "constraints": [],
            }
        )
    return validate_flags_data(data)


def with_enabled(doc: FlagsDocument, flag: str, enabled: bool) -> FlagsDocument:
    """A new document with ``flag`` enabled or disabled (disabling is the kill switch)."""
    if not isinstance(enabled, bool):
        raise FlagEditError(f"enabled must be true or false, got {enabled!r}")
    data, feature = _editable_feature(doc, flag)
    feature["enabled"] = enabled
    return validate_flags_data(data)


def without_feature(doc: FlagsDocument, flag: str) -> FlagsDocument:
    """A new document without ``flag`` (its clean-up: ``canaryws flags archive``).

    Everything else is kept as it is, segments included. Refused while another
    feature depends on ``flag`` (FlagsDocumentError naming them: the document
    would be invalid); an unknown flag is a FlagEditError.
    """
    _editable_feature(doc, flag)  # FlagEditError for an unknown flag
    refuse_archive_of_a_dependency(flag, dependents_of(doc.data["features"], flag))
    data = copy.deepcopy(doc.data)
    data["features"] = [feature for feature in data["features"] if feature["name"] != flag]
    return validate_flags_data(data)


def refuse_archive_of_a_dependency(flag: str, dependents: list[str], where: str = "") -> None:
    """FlagsDocumentError naming ``dependents`` (``where``: e.g. " in Unleash project X"), if any."""
    if dependents:
        raise FlagsDocumentError(
            f"cannot archive {flag!r}: {', '.join(repr(name) for name in dependents)} "
            f"depend{'s' if len(dependents) == 1 else ''} on it{where}; remove the dependency first"
        )


def dependents_of(features: Iterable[Mapping[str, Any]], flag: str) -> list[str]:
    """The names of the features (other than ``flag``) with a dependency on ``flag``, in order."""
    names: list[str] = []
    for feature in features:
        name = feature.get("name")
        if name == flag or name in names:
            continue
        dependencies = feature.get("dependencies") or []
        if any(isinstance(d, Mapping) and d.get("feature") == flag for d in dependencies):
            names.append(str(name))
    return names


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise FlagEditError(f"rollout percent must be an integer from 0 to 100, got {percent!r}")
    if not 0 <= percent <= 100:
        raise FlagEditError(f"rollout percent must be from 0 to 100, got {percent}")


def _editable_feature(doc: FlagsDocument, flag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    data = copy.deepcopy(doc.data)
    for feature in data["features"]:
        if feature["name"] == flag:
            return data, feature
    known = ", ".join(doc.feature_names()) or "none"
    raise FlagEditError(f"unknown flag {flag!r} (known flags: {known})")


# ------------------------------------------------------------------------- describe


@dataclass(frozen=True, slots=True)
class FlagRow:
    """One flag, summarised for people (``canaryws flags show``)."""

    name: str
    enabled: bool
    rollout: int | None  # the single flexibleRollout's percent, else None
    strategies: str  # e.g. "flexibleRollout 25% (userId)"
    description: str


def describe(doc: FlagsDocument) -> list[FlagRow]:
    """One row per feature, in document order."""
    return [
        FlagRow(
            name=feature["name"],
            enabled=feature["enabled"],
            rollout=rollout_percent(feature),
            strategies=_summarise_strategies(feature["strategies"]),
            description=feature.get("description") or "",
        )
        for feature in doc.data["features"]
    ]


def rollout_percent(feature: Mapping[str, Any]) -> int | None:
    """The rollout of the feature's only flexibleRollout strategy (None if 0 or several)."""
    rollouts = [s for s in feature["strategies"] if s.get("name") == FLEXIBLE_ROLLOUT]
    if len(rollouts) != 1:
        return None
    return _as_percent((rollouts[0].get("parameters") or {}).get("rollout"))


def expected_share(feature: Mapping[str, Any] | None) -> float | None:
    """The share of client ids the feature is on for, when the document alone says so.

    0 for a missing or disabled feature; 1 for an enabled one with no strategies or an
    unconstrained ``default``; ``rollout / 100`` for a single unconstrained
    ``flexibleRollout`` sticky on ``userId`` (or ``default``). None otherwise (constraints,
    segments, several strategies): the split then depends on who connects.
    """
    if feature is None or not feature["enabled"]:
        return 0.0
    strategies = [s for s in feature["strategies"] if s.get("disabled") is not True]
    if not strategies:
        return 1.0
    if len(strategies) != 1:
        return None
    strategy = strategies[0]
    if strategy.get("constraints") or strategy.get("segments"):
        return None
    parameters = strategy.get("parameters") or {}
    if strategy.get("name") == "default":
        return 1.0
    if strategy.get("name") == FLEXIBLE_ROLLOUT and parameters.get("stickiness", "default") in ("default", "userId"):
        percent = _as_percent(parameters.get("rollout"))
        return None if percent is None else percent / 100
    return None


def is_partial_rollout(strategy: Mapping[str, Any]) -> bool:
    """True for a percentage strategy strictly between 0% and 100% (a "split")."""
    name = strategy.get("name")
    parameters = strategy.get("parameters") or {}
    if name == FLEXIBLE_ROLLOUT:
        percent = _as_percent(parameters.get("rollout"))
    elif name in _GRADUAL_ROLLOUTS:
        percent = _as_percent(parameters.get("percentage"))
    else:
        return False
    return percent is not None and 0 < percent < 100


def _summarise_strategies(strategies: Sequence[Mapping[str, Any]]) -> str:
    if not strategies:
        return "no strategies (everyone)"
    return ", ".join(_summarise_strategy(s) for s in strategies)


def _summarise_strategy(strategy: Mapping[str, Any]) -> str:
    name = str(strategy.get("name"))
    parameters = strategy.get("parameters") or {}
    if name == FLEXIBLE_ROLLOUT:
        text = f"{name} {parameters.get('rollout', '?')}% ({parameters.get('stickiness', 'default')})"
    elif name in _GRADUAL_ROLLOUTS:
        text = f"{name} {parameters.get('percentage', '?')}%"
    elif name == "userWithId":
        ids = [i for i in str(parameters.get("userIds", "")).split(",") if i.strip()]
        text = f"{name} ({len(ids)} user{'s' if len(ids) != 1 else ''})"
    else:
        text = name
    extras = []
    constraints = strategy.get("constraints") or []
    if constraints:
        extras.append(f"{len(constraints)} constraint{'s' if len(constraints) != 1 else ''}")
    segments = strategy.get("segments") or []
    if segments:
        extras.append(f"{len(segments)} segment{'s' if len(segments) != 1 else ''}")
    if strategy.get("disabled") is True:
        extras.append("disabled")
    return f"{text} [{', '.join(extras)}]" if extras else text


# ------------------------------------------------------------------------ internals


class _JsonProblem(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonProblem(f"invalid JSON: duplicate key {key!r} in an object")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise _JsonProblem(f"invalid JSON: {name} is not allowed")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _location(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "document"


def _format_validation_errors(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] != "missing":
            shown = json.dumps(error["input"], ensure_ascii=False)
            if len(shown) > 40:
                shown = shown[:37] + "..."
            message = f"{message} (got {shown})"
        problems.append(f"{_location(error['loc'])}: {message}")
    return problems


def _as_percent(value: Any) -> int | None:
    """An integer percent 0..100 given as an int or a decimal string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        percent = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        percent = int(value)
    else:
        return None
    return percent if 0 <= percent <= 100 else None


def _semantic_problems(model: _Document, data: dict[str, Any]) -> list[str]:
    """Problems the shape models cannot see: names, references, parameter values."""
    problems: list[str] = []
    segment_ids: set[int] = set()
    for s_index, segment in enumerate(model.segments):
        where = f"segments[{s_index}]"
        if segment.id in segment_ids:
            problems.append(f"{where}.id: duplicate segment id {segment.id}")
        segment_ids.add(segment.id)
        problems.extend(_constraint_problems(f"{where}.constraints", segment.constraints))

    names = [feature.name for feature in model.features]
    seen: dict[str, int] = {}
    for f_index, feature in enumerate(model.features):
        where = f"features[{f_index}]"
        if feature.name != feature.name.strip():
            problems.append(f"{where}.name: {feature.name!r} has surrounding whitespace")
        if feature.name in seen:
            problems.append(
                f"{where}.name: duplicate feature name {feature.name!r} (also features[{seen[feature.name]}])"
            )
        else:
            seen[feature.name] = f_index
        for d_index, dependency in enumerate(feature.dependencies):
            if dependency.feature not in names:
                problems.append(f"{where}.dependencies[{d_index}].feature: unknown feature {dependency.feature!r}")
        raw_strategies = data["features"][f_index]["strategies"]
        for st_index, strategy in enumerate(feature.strategies):
            problems.extend(
                _strategy_problems(
                    f"{where}.strategies[{st_index}]",
                    strategy,
                    raw_strategies[st_index],
                    segment_ids,
                )
            )
    return problems


def _strategy_problems(where: str, strategy: _Strategy, raw: Mapping[str, Any], segment_ids: set[int]) -> list[str]:
    problems: list[str] = []
    if strategy.name not in KNOWN_STRATEGIES:
        problems.append(f"{where}.name: unknown strategy {strategy.name!r} (known: {', '.join(KNOWN_STRATEGIES)})")
    parameters = raw.get("parameters") or {}
    for key, value in parameters.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(f"{where}.parameters.{key}: must be a string or a number, got {_json_type(value)}")
    if strategy.name == FLEXIBLE_ROLLOUT:
        if "rollout" not in parameters:
            problems.append(f"{where}.parameters.rollout: required by flexibleRollout")
        elif _as_percent(parameters["rollout"]) is None:
            problems.append(
                f"{where}.parameters.rollout: must be an integer from 0 to 100, got {json.dumps(parameters['rollout'])}"
            )
    elif (
        strategy.name in _GRADUAL_ROLLOUTS
        and "percentage" in parameters
        and _as_percent(parameters["percentage"]) is None
    ):
        problems.append(
            f"{where}.parameters.percentage: must be an integer from 0 to 100, "
            f"got {json.dumps(parameters['percentage'])}"
        )
    for seg_index, segment_id in enumerate(strategy.segments):
        if segment_id not in segment_ids:
            problems.append(f"{where}.segments[{seg_index}]: unknown segment id {segment_id}")
    problems.extend(_constraint_problems(f"{where}.constraints", strategy.constraints))
    return problems


def _constraint_problems(where: str, constraints: Sequence[_Constraint]) -> list[str]:
    problems: list[str] = []
    for index, constraint in enumerate(constraints):
        at = f"{where}[{index}]"
        operator = constraint.operator
        if operator in MULTI_VALUE_OPERATORS:
            if constraint.values is None:
                problems.append(f"{at}.values: required by operator {operator}")
        elif operator in SINGLE_VALUE_OPERATORS:
            if constraint.value is None:
                problems.append(f"{at}.value: required by operator {operator}")
            elif operator.startswith("NUM_") and not _is_finite_number(constraint.value):
                problems.append(f"{at}.value: {operator} needs a number, got {constraint.value!r}")
        else:
            problems.append(f"{at}.operator: unknown operator {operator!r} (known: {', '.join(KNOWN_OPERATORS)})")
    return problems


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _normalise_parameters(data: dict[str, Any]) -> None:
    """Strategy parameters as strings, as Unleash serves them (the engine needs that)."""
    for feature in data["features"]:
        for strategy in feature["strategies"]:
            parameters = strategy.get("parameters")
            if isinstance(parameters, dict):
                for key, value in parameters.items():
                    if not isinstance(value, str):
                        parameters[key] = _number_text(value)


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
