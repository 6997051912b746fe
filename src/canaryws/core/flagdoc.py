"""The flags document: the Unleash client-features document, validated and edited.

The document is what Unleash serves at ``/api/client/features``::

    {"version": 2, "features": [...], "segments": [...]}

Pure: no I/O. A shared, company-wide Unleash server hands canaryws every flag its token
can see, including flags of other teams that canaryws does not evaluate, some of them
newer than canaryws or simply broken. So validation is **per flag**, as in every Unleash
SDK: a problem in one flag is a :class:`FlagProblem` of that flag (a warning), never a
reason to drop the whole document. Only a document that is not a client-features
document at all (not a JSON object, no ``features`` list, no integer ``version``) is
rejected (:class:`FlagsDocumentError`).

What this module checks is what it can see without the engine: the shape of each flag
and segment (a flag or segment whose shape the Unleash engine cannot parse is left out
of evaluation: the engine would drop the whole state for it), references (segments,
parent flags), and rollout percentages. Whether an operator or a strategy is one the
engine evaluates is asked of the engine itself (``canaryws.adapters.flags.engine``), not
of a list kept here. Which flags must be valid for the service to apply a document is
decided there too: only the cohort flags and what they depend on (:func:`closure`).

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FLEXIBLE_ROLLOUT = "flexibleRollout"
_GRADUAL_ROLLOUTS = ("gradualRolloutUserId", "gradualRolloutSessionId", "gradualRolloutRandom")
_MAX_PROBLEMS_IN_MESSAGE = 5


class FlagsDocumentError(ValueError):
    """The flags document is unusable, or an edit cannot be applied to it.

    ``problems`` holds every problem found, each prefixed with its location
    (``features: expected an array ...``); the message shows the first few.
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


# ------------------------------------------------------------------------- problems

INVALID_SHAPE = "invalid_shape"
DUPLICATE_NAME = "duplicate_name"
INVALID_PARAMETER = "invalid_parameter"
MISSING_SEGMENT = "missing_segment"
MISSING_DEPENDENCY = "missing_dependency"
UNKNOWN_OPERATOR = "unknown_operator"
INVALID_CONSTRAINT = "invalid_constraint"
CUSTOM_STRATEGY = "custom_strategy"
ENGINE_WARNING = "engine_warning"

PROBLEM_KINDS: tuple[str, ...] = (
    INVALID_SHAPE,
    DUPLICATE_NAME,
    INVALID_PARAMETER,
    MISSING_SEGMENT,
    MISSING_DEPENDENCY,
    UNKNOWN_OPERATOR,
    INVALID_CONSTRAINT,
    CUSTOM_STRATEGY,
    ENGINE_WARNING,
)
"""Every kind of :class:`FlagProblem` (a bounded set: the ``kind`` label of the metric).

- ``invalid_shape``: a field has the wrong type or is missing; the flag (or segment) is
  left out of evaluation, as the engine could not parse the document with it;
- ``duplicate_name``: a second flag with the same name (left out) or a second segment
  with the same id (left out);
- ``invalid_parameter``: a rollout percentage that is not an integer from 0 to 100, or a
  parameter that is neither a string nor a number (that flag is left out);
- ``missing_segment``: a strategy uses a segment id the document does not define;
- ``missing_dependency``: a flag depends on a flag the document does not have (archived,
  in another project, or never created): Unleash SDKs evaluate it as off;
- ``unknown_operator``: a constraint operator the engine does not know;
- ``invalid_constraint``: a constraint value the engine cannot parse for its operator
  (``NUM_GT`` on ``"many"``, a date or version that is not one);
- ``custom_strategy``: a strategy the engine does not implement; canaryws registers no
  custom strategies, so it never matches (as in an SDK without the implementation);
- ``engine_warning``: any other warning the engine reports about the flag.

The engine evaluates a flag with problems of the last six kinds as every SDK does: what
it cannot evaluate is off, for that flag (or strategy) alone.
"""

_EXCLUDED_KINDS = frozenset({INVALID_SHAPE, DUPLICATE_NAME})


@dataclass(frozen=True, slots=True)
class FlagProblem:
    """One problem of one flag (``flag``), segment or the document (``flag`` None)."""

    flag: str | None
    kind: str  # one of PROBLEM_KINDS
    where: str  # e.g. "features[3].strategies[0].constraints[1].operator"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {"flag": self.flag, "kind": self.kind, "where": self.where, "message": self.message}


# --------------------------------------------------------------------------- models
# Shape validation only. The validated data is the JSON input itself (key order and
# unknown fields preserved); the models are never dumped.

_NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Constraint(_Model):
    contextName: _NonEmpty
    operator: str
    values: list[str] | None = None
    value: str | None = None
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


# ------------------------------------------------------------------------- document


@dataclass(frozen=True)
class FlagsDocument:
    """A flags document, with the problems of its flags.

    ``data`` is the whole document, JSON-compatible, and must be treated as read-only
    (edits return new documents). ``revision`` is the first 16 hex characters of the
    SHA-256 of the canonical JSON (sorted keys, compact separators), so whitespace and
    key-order edits keep the revision. ``problems`` are the problems this module sees
    (the engine adds its own: ``canaryws.adapters.flags.engine``); ``excluded`` and
    ``excluded_segments`` are the indices in ``data["features"]`` and
    ``data["segments"]`` of the entries left out of evaluation.
    """

    data: dict[str, Any]
    revision: str
    problems: tuple[FlagProblem, ...] = ()
    excluded: frozenset[int] = frozenset()
    excluded_segments: frozenset[int] = frozenset()

    def feature(self, name: str) -> dict[str, Any] | None:
        """A copy of the usable feature called ``name``, or None."""
        for index, feature in enumerate(self.data["features"]):
            if index not in self.excluded and feature["name"] == name:
                found: dict[str, Any] = copy.deepcopy(feature)
                return found
        return None

    def feature_names(self) -> list[str]:
        """Names of the features in document order (excluded ones too, when they have a name)."""
        return [name for _, name, _ in _named(self.data["features"])]

    def entries(self, name: str) -> list[Mapping[str, Any]]:
        """Every feature object called ``name``, usable or not (read-only)."""
        return [feature for _, found, feature in _named(self.data["features"]) if found == name]


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
    """Parse (:func:`parse_json`) and validate (:func:`validate_flags_data`) a flags document."""
    return validate_flags_data(parse_json(raw))


def validate_flags_data(data: Any) -> FlagsDocument:
    """Validate an already-decoded document (a JSON-compatible object).

    The input is not modified: the document holds a normalised deep copy. Problems of
    single flags and segments are returned in :attr:`FlagsDocument.problems`; only a
    document that is not a client-features document raises FlagsDocumentError.
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
    fatal = []
    version = copied.get("version")
    if "version" not in copied:
        fatal.append("version: Field required")
    elif isinstance(version, bool) or not isinstance(version, int):
        fatal.append(f"version: Input should be a valid integer (got {_shown(version)})")
    if "features" not in copied:
        fatal.append("features: Field required")
    elif not isinstance(copied["features"], list):
        fatal.append(f"features: Input should be a valid list (got {_shown(copied['features'])})")
    if fatal:
        raise FlagsDocumentError(fatal)
    problems, excluded, excluded_segments = _check(copied)
    _normalise_parameters(copied, excluded)
    return FlagsDocument(
        data=copied,
        revision=compute_revision(copied),
        problems=tuple(problems),
        excluded=frozenset(excluded),
        excluded_segments=frozenset(excluded_segments),
    )


def encode_flags_document(doc: FlagsDocument) -> bytes:
    """The document as UTF-8 JSON: indent 2, key order preserved, trailing newline."""
    return (json.dumps(doc.data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def canonical_data(data: Mapping[str, Any], *, project: str | None = None) -> dict[str, Any]:
    """``version``, ``features`` sorted by name, the used ``segments`` sorted by id.

    The form in which canaryws compares what an Unleash server serves, whoever asks
    (the service's SDK client, ``flags show``, ``flags export``): drops what the server
    adds around the flags (``query``, ``meta``) and repeated identical ``dependencies``
    entries (unleash-server 8.2 serves a flag's dependency once per strategy row). With
    ``project``, only that project's flags are kept. Entries that are not objects are
    kept, last, for validation to report. Raises FlagsDocumentError when the data is not
    a client-features document at all (no ``features`` list).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("features"), list):
        raise FlagsDocumentError("expected a client-features document (an object with a 'features' list)")
    features = [f for f in data["features"] if isinstance(f, Mapping)]
    others = [f for f in data["features"] if not isinstance(f, Mapping)]
    if project is not None:
        features = [f for f in features if f.get("project") == project]
    features = sorted(features, key=lambda f: str(f.get("name")))
    used = {
        segment_id
        for feature in features
        for strategy in _list_or_empty(feature.get("strategies"))
        if isinstance(strategy, Mapping) and isinstance(strategy.get("segments"), list)
        for segment_id in strategy["segments"]
        if isinstance(segment_id, int | str)
    }
    served = data.get("segments")
    segments = [
        s for s in (served if isinstance(served, list) else []) if isinstance(s, Mapping) and s.get("id") in used
    ]
    segments.sort(key=lambda s: _id_order(s.get("id")))
    return {
        "version": data.get("version", 2),
        "features": [_deduplicated(f) for f in features] + others,
        "segments": segments,
    }


def parse_json(raw: str | bytes) -> Any:
    """Strict JSON: UTF-8 (a BOM is allowed), no duplicate keys, no NaN or Infinity.

    Raises FlagsDocumentError naming the line and column of a syntax error.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FlagsDocumentError(f"not valid UTF-8 at byte {exc.start}") from None
    else:
        text = raw
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FlagsDocumentError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _JsonProblem as exc:
        raise FlagsDocumentError(str(exc)) from None


def closure(doc: FlagsDocument, flag: str) -> tuple[list[str], set[int]]:
    """What evaluating ``flag`` depends on: the flag and its parents (transitively), in
    order, and the ids of the segments their strategies use. Only usable features count;
    a parent the document lacks is a ``missing_dependency`` problem of its child."""
    usable = {
        name: feature
        for index, name, feature in _named(doc.data["features"])
        if index not in doc.excluded
    }
    flags: list[str] = []
    segments: set[int] = set()
    pending = [flag]
    while pending:
        name = pending.pop(0)
        if name in flags:
            continue
        flags.append(name)
        feature = usable.get(name)
        if feature is None:
            continue
        for strategy in feature["strategies"]:
            segments.update(strategy.get("segments") or [])
        for dependency in feature.get("dependencies") or []:
            pending.append(dependency["feature"])
    return flags, segments


# ---------------------------------------------------------------------------- edits


def with_rollout(doc: FlagsDocument, flag: str, percent: int) -> FlagsDocument:
    """A new document with ``flag``'s flexibleRollout set to ``percent`` (0..100).

    If the flag has no flexibleRollout strategy, one is appended (stickiness
    ``userId``, groupId = the flag name). Several flexibleRollout strategies make the
    target ambiguous, and so does a flag whose strategies are not a list of objects:
    FlagEditError.
    """
    _check_percent(percent)
    data, entries = _editable_entries(doc, flag)
    feature = entries[0]
    strategies = feature.get("strategies")
    if not isinstance(strategies, list) or not all(isinstance(s, dict) for s in strategies):
        raise FlagEditError(f"{flag}: its strategies are not a list of objects; edit the flags file by hand")
    rollouts = [s for s in strategies if s.get("name") == FLEXIBLE_ROLLOUT]
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
        strategies.append(
            {
                "name": FLEXIBLE_ROLLOUT,
                "parameters": {"rollout": str(percent), "stickiness": "userId", "groupId": flag},
                "constraints": [],
            }
        )
    return validate_flags_data(data)


def with_enabled(doc: FlagsDocument, flag: str, enabled: bool) -> FlagsDocument:
    """A new document with ``flag`` enabled or disabled (disabling is the kill switch).

    Applies to every entry called ``flag``, whatever else is wrong with it: a disable
    always goes through."""
    if not isinstance(enabled, bool):
        raise FlagEditError(f"enabled must be true or false, got {enabled!r}")
    data, entries = _editable_entries(doc, flag)
    for feature in entries:
        feature["enabled"] = enabled
    return validate_flags_data(data)


def without_feature(doc: FlagsDocument, flag: str) -> FlagsDocument:
    """A new document without ``flag`` (its clean-up: ``canaryws flags archive``).

    Everything else is kept as it is, segments included. Refused while another
    feature depends on ``flag`` (FlagsDocumentError naming them); an unknown flag is a
    FlagEditError.
    """
    _editable_entries(doc, flag)  # FlagEditError for an unknown flag
    refuse_archive_of_a_dependency(flag, dependents_of(doc.data["features"], flag))
    data = copy.deepcopy(doc.data)
    data["features"] = [
        feature for feature in data["features"] if not (isinstance(feature, Mapping) and feature.get("name") == flag)
    ]
    return validate_flags_data(data)


def refuse_archive_of_a_dependency(flag: str, dependents: list[str], where: str = "") -> None:
    """FlagsDocumentError naming ``dependents`` (``where``: e.g. " in Unleash project X"), if any."""
    if dependents:
        raise FlagsDocumentError(
            f"cannot archive {flag!r}: {', '.join(repr(name) for name in dependents)} "
            f"depend{'s' if len(dependents) == 1 else ''} on it{where}; remove the dependency first"
        )


def dependents_of(features: Iterable[Any], flag: str) -> list[str]:
    """The names of the features (other than ``flag``) with a dependency on ``flag``, in order."""
    names: list[str] = []
    for feature in features:
        if not isinstance(feature, Mapping):
            continue
        name = feature.get("name")
        if name == flag or name in names:
            continue
        dependencies = feature.get("dependencies")
        if isinstance(dependencies, list) and any(
            isinstance(d, Mapping) and d.get("feature") == flag for d in dependencies
        ):
            names.append(str(name))
    return names


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise FlagEditError(f"rollout percent must be an integer from 0 to 100, got {percent!r}")
    if not 0 <= percent <= 100:
        raise FlagEditError(f"rollout percent must be from 0 to 100, got {percent}")


def _editable_entries(doc: FlagsDocument, flag: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A deep copy of the document and its entries called ``flag`` (usable ones first)."""
    data = copy.deepcopy(doc.data)
    found = [(index in doc.excluded, index) for index, name, _ in _named(data["features"]) if name == flag]
    if not found:
        known = ", ".join(doc.feature_names()) or "none"
        raise FlagEditError(f"unknown flag {flag!r} (known flags: {known})")
    return data, [data["features"][index] for _, index in sorted(found)]


# ------------------------------------------------------------------------- describe


@dataclass(frozen=True, slots=True)
class FlagRow:
    """One flag, summarised for people (``canaryws flags show``)."""

    name: str
    enabled: bool
    rollout: int | None  # the single flexibleRollout's percent, else None
    strategies: str  # e.g. "flexibleRollout 25% (userId)"
    description: str
    problems: tuple[str, ...] = ()  # this module's problems of the flag ("where: message")


def describe(doc: FlagsDocument, problems: Iterable[FlagProblem] | None = None) -> list[FlagRow]:
    """One row per named feature, in document order, with its ``problems`` (default: the
    document's own; pass the engine's assessment to include what only the engine sees)."""
    by_flag: dict[str, list[str]] = {}
    for problem in doc.problems if problems is None else problems:
        if problem.flag is not None:
            by_flag.setdefault(problem.flag, []).append(str(problem))
    rows = []
    for index, name, feature in _named(doc.data["features"]):
        strategies = feature.get("strategies")
        usable = index not in doc.excluded
        description = feature.get("description")
        rows.append(
            FlagRow(
                name=name,
                enabled=feature.get("enabled") is True,
                rollout=rollout_percent(feature) if usable else None,
                strategies=_summarise_strategies(strategies) if usable and strategies is not None else "(invalid)",
                description=description if isinstance(description, str) else "",
                problems=tuple(by_flag.get(name, ())),
            )
        )
    return rows


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


def _named(features: Sequence[Any]) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """``(index, name, feature)`` of the features that are objects with a string name."""
    for index, feature in enumerate(features):
        if isinstance(feature, Mapping) and isinstance(feature.get("name"), str):
            yield index, feature["name"], feature


def _list_or_empty(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _shown(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _check(data: dict[str, Any]) -> tuple[list[FlagProblem], set[int], set[int]]:
    """The problems of every segment and flag; the indices of the segments and flags the
    engine cannot be given (their shape is wrong, or they repeat a name or an id)."""
    problems: list[FlagProblem] = []
    excluded_segments: set[int] = set()
    segment_ids: set[int] = set()
    segments = data.get("segments", [])
    if not isinstance(segments, list):
        problems.append(
            FlagProblem(None, INVALID_SHAPE, "segments", f"Input should be a valid list (got {_shown(segments)})")
        )
        segments = []
    for s_index, raw in enumerate(segments):
        where = f"segments[{s_index}]"
        try:
            segment = _Segment.model_validate(raw)
        except ValidationError as exc:
            excluded_segments.add(s_index)
            problems.extend(_shape_problems(None, where, exc))
            continue
        if segment.id in segment_ids:
            excluded_segments.add(s_index)
            problems.append(FlagProblem(None, DUPLICATE_NAME, f"{where}.id", f"duplicate segment id {segment.id}"))
            continue
        segment_ids.add(segment.id)

    excluded: set[int] = set()
    features = data["features"]
    first: dict[str, int] = {}
    for f_index, raw in enumerate(features):
        where = f"features[{f_index}]"
        name = raw.get("name") if isinstance(raw, Mapping) and isinstance(raw.get("name"), str) else None
        try:
            feature = _Feature.model_validate(raw)
        except ValidationError as exc:
            excluded.add(f_index)
            problems.extend(_shape_problems(name, where, exc))
            continue
        if feature.name in first:
            excluded.add(f_index)
            problems.append(
                FlagProblem(
                    feature.name,
                    DUPLICATE_NAME,
                    f"{where}.name",
                    f"duplicate feature name {feature.name!r} (also features[{first[feature.name]}]); "
                    "this one is not evaluated",
                )
            )
            continue
        first[feature.name] = f_index
        if feature.name != feature.name.strip():
            problems.append(
                FlagProblem(
                    feature.name, INVALID_SHAPE, f"{where}.name", f"{feature.name!r} has surrounding whitespace"
                )
            )
        for st_index, strategy in enumerate(feature.strategies):
            found = _strategy_problems(feature.name, f"{where}.strategies[{st_index}]", strategy,
                                       raw["strategies"][st_index], segment_ids)
            if any(p.kind == INVALID_PARAMETER and p.message.startswith("must be a string or a number")
                   for p in found):
                excluded.add(f_index)  # the engine would drop the whole document for it
            problems.extend(found)

    names = {name for _, name, _ in _named(features)}
    for f_index, name, raw in _named(features):
        if f_index in excluded:
            continue
        for d_index, dependency in enumerate(raw.get("dependencies") or []):
            if dependency["feature"] not in names:
                problems.append(
                    FlagProblem(
                        name,
                        MISSING_DEPENDENCY,
                        f"features[{f_index}].dependencies[{d_index}].feature",
                        f"depends on {dependency['feature']!r}, which the document does not have "
                        "(archived, in another project, or never created): it evaluates as off",
                    )
                )
    return problems, excluded, excluded_segments


def _shape_problems(flag: str | None, where: str, exc: ValidationError) -> list[FlagProblem]:
    """One ``invalid_shape`` problem per pydantic error of the entry at ``where``."""
    found = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if error["type"] != "missing":
            message = f"{message} (got {_shown(error['input'])})"
        location = _location(error["loc"])
        found.append(FlagProblem(flag, INVALID_SHAPE, where if location == "document" else f"{where}.{location}",
                                 message))
    return found


def _strategy_problems(
    flag: str, where: str, strategy: _Strategy, raw: Mapping[str, Any], segment_ids: set[int]
) -> list[FlagProblem]:
    problems: list[FlagProblem] = []
    parameters = raw.get("parameters") or {}
    for key, value in parameters.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            problems.append(
                FlagProblem(flag, INVALID_PARAMETER, f"{where}.parameters.{key}",
                            f"must be a string or a number, got {_json_type(value)}; this flag is not evaluated")
            )
    if strategy.name == FLEXIBLE_ROLLOUT:
        if "rollout" not in parameters:
            problems.append(FlagProblem(flag, INVALID_PARAMETER, f"{where}.parameters.rollout",
                                        "required by flexibleRollout"))
        elif _as_percent(parameters["rollout"]) is None:
            problems.append(
                FlagProblem(flag, INVALID_PARAMETER, f"{where}.parameters.rollout",
                            f"must be an integer from 0 to 100, got {json.dumps(parameters['rollout'])}")
            )
    elif (
        strategy.name in _GRADUAL_ROLLOUTS
        and "percentage" in parameters
        and _as_percent(parameters["percentage"]) is None
    ):
        problems.append(
            FlagProblem(flag, INVALID_PARAMETER, f"{where}.parameters.percentage",
                        f"must be an integer from 0 to 100, got {json.dumps(parameters['percentage'])}")
        )
    for seg_index, segment_id in enumerate(strategy.segments):
        if segment_id not in segment_ids:
            problems.append(
                FlagProblem(flag, MISSING_SEGMENT, f"{where}.segments[{seg_index}]",
                            f"unknown segment id {segment_id}")
            )
    return problems


def _normalise_parameters(data: dict[str, Any], excluded: set[int]) -> None:
    """Strategy parameters as strings, as Unleash serves them (the engine needs that)."""
    for index, feature in enumerate(data["features"]):
        if index in excluded:
            continue
        for strategy in feature["strategies"]:
            parameters = strategy.get("parameters")
            if isinstance(parameters, dict):
                for key, value in parameters.items():
                    if not isinstance(value, str):
                        parameters[key] = _number_text(value)


def _deduplicated(feature: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(feature)
    dependencies = feature.get("dependencies")
    if isinstance(dependencies, list):
        unique: list[Any] = []
        for dependency in dependencies:
            if dependency not in unique:
                unique.append(dependency)
        result["dependencies"] = unique
    return result


def _id_order(value: Any) -> tuple[int, int, str]:
    return (0, value, "") if isinstance(value, int) and not isinstance(value, bool) else (1, 0, str(value))


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
