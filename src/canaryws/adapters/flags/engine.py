"""An immutable flags snapshot: one flags document evaluated by its own Unleash engine.

A source builds a new :class:`FlagSnapshot` for every new revision and swaps it in by
reference; readers never lock. Evaluation is one engine evaluation that counts no metrics
(what ``check_enabled`` does without its second trip to the engine, for the impression-event
setting canaryws does not use) plus dictionary lookups: everything else about a feature is
computed once, at construction.

**What the engine can evaluate is asked of the engine** (:func:`assess`): the document's
own problems (``canaryws.core.flagdoc``: shapes, references, percentages) plus what only
the engine knows — which constraint operators and strategies it implements, which
constraint values it can parse. A problem in a flag canaryws does not evaluate is a
warning: that flag evaluates as every Unleash SDK evaluates it (what the engine cannot
evaluate is off, for that flag alone), and the document is applied.

**The cohort flags are held to a stricter rule** (:meth:`FlagSnapshot.from_document`):
when ``records.strict`` or ``records.shadow``, a parent flag they depend on, or a segment
they use has a problem, the snapshot keeps the flag's last good definition (from the
previous snapshot) and reports it as *held*; the rest of the document is applied. One
exception, always applied: a cohort flag with ``"enabled": false`` is off, whatever else
is wrong with it (the kill switch).

Two places read engine internals (listed in the upgrade checklist of docs/dependencies.md,
each with the test that breaks if they change): the raw ``take_state`` response (the public wrapper
drops the engine's per-flag compile warnings), through ``UnleashEngine.lib``, ``.state``
and ``.materialize_pointer``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from yggdrasil_engine.engine import StatusCode, UnleashEngine

from canaryws.core.cohorts import COHORT_FLAGS, FlagEvaluation
from canaryws.core.flagdoc import (
    CUSTOM_STRATEGY,
    ENGINE_WARNING,
    FLEXIBLE_ROLLOUT,
    INVALID_CONSTRAINT,
    INVALID_SHAPE,
    UNKNOWN_OPERATOR,
    FlagProblem,
    FlagsDocument,
    FlagsDocumentError,
    closure,
    expected_share,
    is_partial_rollout,
)

_PROBE = "canaryws.engine-probe"

log = logging.getLogger("canaryws.flags")


# ------------------------------------------------------------------ asking the engine


@dataclass(frozen=True, slots=True)
class _Compiled:
    loaded: bool  # the engine took the state (False: it could not parse it and kept none)
    clean: bool  # and reported no warning
    message: str


class _Compiler:
    """One engine that documents are loaded into, one after the other, to hear its warnings.

    The raw ``take_state`` response tells warnings apart (engine internals: the public wrapper
    drops them). A document the engine cannot parse leaves it with no state at all."""

    def __init__(self) -> None:
        self.engine = UnleashEngine()

    def compile(self, data: Mapping[str, Any]) -> _Compiled:
        engine = self.engine
        pointer = engine.lib.take_state(engine.state, json.dumps(data, ensure_ascii=False).encode("utf-8"))
        with engine.materialize_pointer(pointer, dict) as response:
            clean = response.status_code == StatusCode.OK
            message = response.error_message or ""
        names = {f.get("name") for f in data.get("features") or []}
        loaded = not names or names <= {definition.name for definition in engine.list_known_toggles()}
        return _Compiled(loaded, clean and loaded, message)

    def warned(self, version: Any, features: list[tuple[int, Mapping[str, Any]]],
               segments: list[Any]) -> list[tuple[int, Mapping[str, Any], str]]:
        """The features that draw a warning, each with it, found by halving: a warning belongs to
        one flag, so a group without one is clean (about k·log n loads for k of n flags)."""
        if not features:
            return []
        compiled = self.compile({"version": version, "features": [f for _, f in features], "segments": segments})
        if compiled.clean:
            return []
        if len(features) == 1:
            index, feature = features[0]
            return [(index, feature, compiled.message)]
        middle = len(features) // 2
        return self.warned(version, features[:middle], segments) + self.warned(version, features[middle:], segments)


def _compile(data: Mapping[str, Any]) -> _Compiled:
    """Load ``data`` into a fresh engine."""
    return _Compiler().compile(data)


_WARNED_TOGGLE = re.compile(r'toggle_name: "((?:[^"\\]|\\.)*)"')


def _warned(compiler: _Compiler, compiled: _Compiled, data: Mapping[str, Any],
            features: list[tuple[int, Mapping[str, Any]]]) -> list[tuple[int, Mapping[str, Any], str]]:
    """The features the engine warns about, given how it took the whole document (``compiled``):
    its warning names them (the flags it names are each confirmed alone); if it names none
    canaryws can find, the flags are halved."""
    if compiled.clean:
        return []
    named = {match.replace('\\"', '"') for match in _WARNED_TOGGLE.findall(compiled.message)}
    found = [(i, f, c.message) for i, f in features if f["name"] in named
             for c in [compiler.compile({**data, "features": [f]})] if not c.clean]
    return found or compiler.warned(data["version"], features, data["segments"])


class _Fixed:
    """A custom strategy implementation with a fixed answer (for :func:`engine_implements`)."""

    def __init__(self, answer: bool) -> None:
        self._answer = answer

    def apply(self, _parameters: Mapping[str, Any], _context: Mapping[str, Any]) -> bool:
        return self._answer


@lru_cache(maxsize=256)
def engine_implements(strategy: str) -> bool:
    """True when the engine implements ``strategy`` itself (a built-in Unleash strategy).

    Asked of the engine, not of a list: a one-strategy flag is evaluated twice with a
    custom implementation of that name answering true, then false. A built-in strategy
    ignores the implementation (same answer); a custom one follows it.
    """
    answers = set()
    for answer in (True, False):
        engine = UnleashEngine()
        engine.register_custom_strategies({strategy: _Fixed(answer)})
        engine.take_state(json.dumps({"version": 2, "features": [
            {"name": _PROBE, "enabled": True, "strategies": [{"name": strategy, "parameters": {}, "constraints": []}]}
        ]}))
        answers.add(engine.check_enabled(_PROBE, {}).is_enabled)
    return len(answers) == 1


@lru_cache(maxsize=256)
def engine_knows_operator(operator: str) -> bool:
    """True when the engine evaluates constraints with ``operator`` (asked of the engine:
    a constraint with that operator and plain values compiles without a warning)."""
    constraint = {"contextName": "userId", "operator": operator, "values": ["1"], "value": "1"}
    return _compile(_one_constraint(constraint)).clean


def _one_constraint(constraint: Mapping[str, Any]) -> dict[str, Any]:
    return {"version": 2, "features": [
        {"name": _PROBE, "enabled": True, "strategies": [{"name": "default", "constraints": [constraint]}]}
    ], "segments": []}


@dataclass(frozen=True)
class Assessment:
    """A document as the engine sees it: every problem, and what is left out of evaluation."""

    document: FlagsDocument
    problems: tuple[FlagProblem, ...]
    excluded: frozenset[int]  # indices in document.data["features"]
    excluded_segments: frozenset[int]  # indices in document.data["segments"]
    engine: Any = None  # an engine holding evaluable_data() (None: not loaded)

    def evaluable_data(self) -> dict[str, Any]:
        """What the engine is given: ``version``, the usable features (without their strategies
        marked ``"disabled": true``, as an Unleash server leaves them out of its client API) and
        the usable segments."""
        data = self.document.data
        segments = data.get("segments")
        segments = segments if isinstance(segments, list) else []
        return {
            "version": data["version"],
            "features": [_active_strategies_only(f) for i, f in enumerate(data["features"]) if i not in self.excluded],
            "segments": [s for i, s in enumerate(segments) if i not in self.excluded_segments],
        }

    def problems_of(self, flags: Iterable[str]) -> tuple[FlagProblem, ...]:
        wanted = set(flags)
        return tuple(p for p in self.problems if p.flag in wanted)

    def kinds(self) -> dict[str, int]:
        """Problems per kind."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts


def assess(doc: FlagsDocument) -> Assessment:
    """The document's problems plus the engine's: operators it does not know, constraint
    values it cannot parse, strategies it does not implement, and flags or segments it
    cannot parse at all (those are left out, like the ones flagdoc leaves out). The
    assessment keeps the engine loaded with what it evaluates."""
    problems = list(doc.problems)
    excluded = set(doc.excluded)
    excluded_segments = set(doc.excluded_segments)
    loaded, probe = _Compiler(), _Compiler()
    data = Assessment(doc, (), frozenset(excluded), frozenset(excluded_segments)).evaluable_data()
    compiled = loaded.compile(data)
    if not compiled.loaded:  # a shape flagdoc's models let through: find the flags and segments
        _exclude_unparsable(probe, doc, data, problems, excluded, excluded_segments)
        data = Assessment(doc, (), frozenset(excluded), frozenset(excluded_segments)).evaluable_data()
        compiled = loaded.compile(data)
    features = [(i, f) for i, f in enumerate(doc.data["features"]) if i not in excluded]
    for index, feature, message in _warned(probe, compiled, data, features):
        problems.extend(_compile_problems(probe, feature["name"], f"features[{index}]", feature, message, doc))
    for index, feature in features:
        for s_index, strategy in enumerate(feature["strategies"]):
            if not engine_implements(strategy["name"]):
                problems.append(
                    FlagProblem(
                        feature["name"],
                        CUSTOM_STRATEGY,
                        f"features[{index}].strategies[{s_index}].name",
                        f"strategy {strategy['name']!r} is not one the Unleash engine implements (a custom "
                        "strategy); canaryws registers none, so this strategy never matches",
                    )
                )
    return Assessment(doc, tuple(problems), frozenset(excluded), frozenset(excluded_segments),
                      loaded.engine if compiled.loaded else None)


def _exclude_unparsable(
    compiler: _Compiler, doc: FlagsDocument, data: Mapping[str, Any], problems: list[FlagProblem],
    excluded: set[int], excluded_segments: set[int],
) -> None:
    version = data["version"]
    raw_segments = doc.data.get("segments")
    for index, segment in enumerate(raw_segments if isinstance(raw_segments, list) else []):
        if index in excluded_segments:
            continue
        alone = {"version": version, "features": [{"name": _PROBE, "enabled": True, "strategies": []}],
                 "segments": [segment]}
        if not compiler.compile(alone).loaded:
            excluded_segments.add(index)
            problems.append(FlagProblem(None, INVALID_SHAPE, f"segments[{index}]",
                                        "the Unleash engine cannot parse this segment; it is left out"))
    usable_segments = [s for i, s in enumerate(raw_segments or []) if i not in excluded_segments]
    for index, feature in enumerate(doc.data["features"]):
        if index in excluded:
            continue
        if not compiler.compile({"version": version, "features": [feature], "segments": usable_segments}).loaded:
            excluded.add(index)
            problems.append(FlagProblem(feature["name"], INVALID_SHAPE, f"features[{index}]",
                                        "the Unleash engine cannot parse this flag; it is not evaluated"))


def _compile_problems(compiler: _Compiler, name: str, where: str, feature: Mapping[str, Any], message: str,
                      doc: FlagsDocument) -> list[FlagProblem]:
    """The engine's warnings about one flag (``message``), located at the constraints they come from."""
    found: list[FlagProblem] = []
    by_id = {s.get("id"): (i, s) for i, s in enumerate(doc.data.get("segments") or []) if isinstance(s, Mapping)}
    for s_index, strategy in enumerate(feature["strategies"]):
        at = f"{where}.strategies[{s_index}]"
        located = [
            (f"{at}.constraints[{c}]", constraint) for c, constraint in enumerate(strategy.get("constraints") or [])
        ]
        for segment_id in strategy.get("segments") or []:
            if segment_id in by_id:
                seg_index, segment = by_id[segment_id]
                located += [
                    (f"segments[{seg_index}].constraints[{c}]", constraint)
                    for c, constraint in enumerate(segment.get("constraints") or [])
                ]
        for location, constraint in located:
            problem = _constraint_problem(compiler, name, location, constraint)
            if problem is not None and problem not in found:
                found.append(problem)
    if not found:  # a missing segment (flagdoc reports it) or something else: say what the engine said
        if any(p.flag == name and p.kind != INVALID_SHAPE for p in doc.problems):
            return []
        found.append(FlagProblem(name, ENGINE_WARNING, where, f"the Unleash engine warns: {message[:300]}"))
    return found


def _constraint_problem(compiler: _Compiler, flag: str, where: str,
                        constraint: Mapping[str, Any]) -> FlagProblem | None:
    compiled = compiler.compile(_one_constraint(constraint))
    if compiled.clean:
        return None
    operator = constraint.get("operator")
    if not engine_knows_operator(str(operator)):
        return FlagProblem(flag, UNKNOWN_OPERATOR, f"{where}.operator",
                           f"operator {operator!r} is not one the Unleash engine knows; the constraint never matches")
    shown = constraint.get("value") if constraint.get("value") is not None else constraint.get("values")
    return FlagProblem(flag, INVALID_CONSTRAINT, where,
                       f"{operator} cannot compare with {json.dumps(shown, ensure_ascii=False)[:60]}; "
                       "the Unleash engine evaluates this flag as off")


def cohort_verdicts(assessment: Assessment) -> dict[str, tuple[str, tuple[FlagProblem, ...]]]:
    """Per cohort flag, what a snapshot of this document does with it, and the problems of
    the flag, its parents and its segments: ``absent`` (not in the document), ``disabled``
    (an entry says ``"enabled": false``: applied whatever else is wrong), ``ok`` (no
    problem: applied as served) or ``invalid`` (a snapshot keeps its last good definition)."""
    doc = assessment.document
    verdicts: dict[str, tuple[str, tuple[FlagProblem, ...]]] = {}
    for flag in COHORT_FLAGS:
        entries = doc.entries(flag)
        if not entries:
            verdicts[flag] = ("absent", ())
            continue
        problems = assessment.problems_of(closure(doc, flag)[0])
        if any(entry.get("enabled") is False for entry in entries):
            verdicts[flag] = ("disabled", problems)
        else:
            verdicts[flag] = ("invalid" if problems else "ok", problems)
    return verdicts


# ------------------------------------------------------------------------- the snapshot


@dataclass(frozen=True, slots=True)
class _FeatureOutcomes:
    """The two possible evaluations of a feature that is enabled in the document."""

    on: FlagEvaluation
    off: FlagEvaluation


@dataclass(frozen=True)
class _Definition:
    """What evaluating one cohort flag needs: the flag, its parents and its segments (engine form)."""

    feature: Mapping[str, Any]
    parents: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    segments: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeldFlag:
    """A cohort flag whose served definition cannot be evaluated as intended: the
    snapshot keeps its last good definition instead."""

    flag: str
    problems: tuple[FlagProblem, ...]  # why the served definition is not used
    kept_revision: str | None  # the revision whose definition stays in force; None: the flag stays absent
    since: float  # Unix time of the first snapshot that held it


COHORT_STATES = ("ok", "disabled", "absent", "held")
"""A cohort flag in a snapshot: ``ok`` (as served), ``disabled`` (served disabled, also when
the rest of it is invalid: the kill switch), ``absent`` (not served), ``held`` (served in a
form that cannot be evaluated as intended: its last good definition stays in force)."""


class FlagSnapshot:
    """One flags revision, ready to evaluate (implements ``FlagSnapshotView``).

    Reasons (OpenTelemetry feature-flag semconv):

    - ``error``: the flag is not in the document (enabled is False);
    - ``disabled``: the feature is disabled in the document;
    - ``split``: the feature is enabled and has a percentage rollout strictly between
      0 and 100, whichever side of the split the context falls on;
    - ``targeting_match``: otherwise, when the feature is on for the context;
    - ``default``: otherwise, the feature is enabled but no strategy matched.
    """

    __slots__ = ("_assessment", "_definitions", "_document", "_engine", "_everyone", "_features", "_fixed", "_held",
                 "_loaded_at", "_outcomes", "_shares", "_source", "_states")

    def __init__(
        self,
        document: FlagsDocument,
        engine: Any,
        *,
        source: str,
        loaded_at: float,
        features: Iterable[Mapping[str, Any]] | None = None,
        assessment: Assessment | None = None,
        definitions: Mapping[str, _Definition] | None = None,
        held: Mapping[str, HeldFlag] | None = None,
        states: Mapping[str, str] | None = None,
    ) -> None:
        """Prefer :meth:`from_document`; ``engine`` must hold ``features`` (default: the document's)."""
        self._document = document
        self._engine = engine
        self._source = source
        self._loaded_at = loaded_at
        self._assessment = assessment if assessment is not None else Assessment(
            document, document.problems, document.excluded, document.excluded_segments)
        self._definitions = dict(definitions or {})
        self._held = dict(held or {})
        self._states = dict(states or {})
        revision = document.revision
        fixed: dict[str, FlagEvaluation] = {}
        everyone: dict[str, tuple[FlagEvaluation, str]] = {}
        outcomes: dict[str, _FeatureOutcomes] = {}
        by_name: dict[str, Mapping[str, Any]] = {}
        for feature in document.data["features"] if features is None else features:
            key = feature["name"]
            by_name[key] = feature
            if not feature["enabled"]:
                fixed[key] = FlagEvaluation(key, False, True, "off", "disabled", revision)
                continue
            needs = _on_for_everyone(feature)
            if needs is not None:  # what the engine answers for every context (that has `needs`), unasked
                everyone[key] = (FlagEvaluation(key, True, True, "on", "targeting_match", revision), needs)
            split = any(is_partial_rollout(s) for s in feature["strategies"])
            outcomes[key] = _FeatureOutcomes(
                on=FlagEvaluation(key, True, True, "on", "split" if split else "targeting_match", revision),
                off=FlagEvaluation(key, False, True, "off", "split" if split else "default", revision),
            )
        self._features = by_name
        self._fixed = fixed
        self._everyone = everyone
        self._outcomes = outcomes
        self._shares: dict[str, float | None] = {}

    @classmethod
    def from_document(
        cls,
        doc: FlagsDocument,
        *,
        source: str,
        loaded_at: float | None = None,
        previous: FlagSnapshot | None = None,
    ) -> FlagSnapshot:
        """Load ``doc`` into a new Unleash engine.

        Flags and segments the engine cannot parse are left out; strategies marked
        ``"disabled": true`` are left out, as an Unleash server leaves them out of its
        client API (the engine itself would evaluate them). The engine is the one the
        assessment loaded, unless a cohort flag's definition had to change. A cohort flag that cannot be
        evaluated as intended keeps its definition from ``previous`` (see the module
        docstring); without ``previous`` (at start-up) that is a FlagsDocumentError, unless
        the flag is disabled.
        """
        now = time.time() if loaded_at is None else loaded_at
        assessment = assess(doc)
        data = assessment.evaluable_data()
        features: dict[str, Mapping[str, Any]] = {f["name"]: f for f in data["features"]}
        segments: dict[int, Mapping[str, Any]] = {s["id"]: s for s in data["segments"]}
        clean_features = {name for name in features if not assessment.problems_of([name])}
        definitions: dict[str, _Definition] = {}
        held: dict[str, HeldFlag] = {}
        states: dict[str, str] = {}
        refused: list[str] = []
        modified = False  # whether the engine must hold something else than the assessment's
        for flag, (verdict, problems) in cohort_verdicts(assessment).items():
            if verdict == "absent":
                states[flag] = "absent"
                continue
            names, segment_ids = closure(doc, flag)
            if verdict == "disabled":
                kill = features.get(flag)
                if kill is None or problems:  # invalid otherwise: "enabled": false is always understood
                    kill = {"name": flag, "enabled": False, "strategies": []}
                    modified = True
                features[flag] = kill
                definitions[flag] = _Definition(kill)
                states[flag] = "disabled"
                continue
            if verdict == "ok":
                definitions[flag] = _Definition(
                    features[flag],
                    {name: features[name] for name in names[1:] if name in features},
                    {i: segments[i] for i in segment_ids if i in segments},
                )
                states[flag] = "ok"
                continue
            if previous is None:
                refused.extend(f"{flag}: {problem}" for problem in problems)
                continue
            kept = previous._definitions.get(flag)
            before = previous._held.get(flag)
            held[flag] = HeldFlag(
                flag,
                problems,
                kept_revision=before.kept_revision if before is not None else (
                    previous.revision if kept is not None else None),
                since=before.since if before is not None else now,
            )
            states[flag] = "held"
            modified = True
            features.pop(flag, None)
            if kept is None:  # it was absent: it stays absent
                continue
            definitions[flag] = kept
            features[flag] = kept.feature
            for name, parent in kept.parents.items():
                if name not in clean_features:
                    features[name] = parent
            for segment_id, segment in kept.segments.items():
                segments.setdefault(segment_id, segment)
        if refused:
            raise FlagsDocumentError(
                ["a cohort flag cannot be evaluated as intended and there is no earlier definition to keep",
                 *refused]
            )
        engine = assessment.engine
        try:
            if modified or engine is None:
                engine = UnleashEngine()
                engine.take_state(json.dumps(
                    {"version": data["version"], "features": list(features.values()),
                     "segments": list(segments.values())},
                    ensure_ascii=False,
                ))
            known = {definition.name for definition in engine.list_known_toggles()}
        except Exception as exc:  # noqa: BLE001 - the engine raises raw TypeError/KeyError/... on bad shapes
            raise FlagsDocumentError(f"the Unleash engine rejected the document: {exc}") from None
        missing = [name for name in features if name not in known]
        if missing:
            raise FlagsDocumentError(
                f"the Unleash engine rejected the document (features not loaded: {', '.join(missing)})"
            )
        return cls(doc, engine, source=source, loaded_at=now, features=features.values(), assessment=assessment,
                   definitions=definitions, held=held, states=states)

    @property
    def revision(self) -> str:
        return self._document.revision

    @property
    def document(self) -> FlagsDocument:
        return self._document

    @property
    def assessment(self) -> Assessment:
        """Every problem of the document (its own and the engine's)."""
        return self._assessment

    @property
    def held(self) -> Mapping[str, HeldFlag]:
        """The cohort flags kept at their last good definition, by name."""
        return self._held

    def cohort_state(self, flag: str) -> str:
        """One of :data:`COHORT_STATES` for a cohort flag."""
        return self._states.get(flag, "absent")

    @property
    def source(self) -> str:
        return self._source

    @property
    def loaded_at(self) -> float:
        """Unix time at which this snapshot was loaded."""
        return self._loaded_at

    def expected_share(self, flag: str) -> float | None:
        """Share of client ids ``flag`` is on for, when its definition alone says so (cached)."""
        try:
            return self._shares[flag]
        except KeyError:
            share = self._shares[flag] = expected_share(self._features.get(flag))
            return share

    def has_flag(self, flag: str) -> bool:
        """True when the flags in force define ``flag`` (enabled or not)."""
        return flag in self._outcomes or flag in self._fixed

    def evaluate_without_context(self, flag: str, present: Collection[str]) -> FlagEvaluation | None:
        """``flag``'s evaluation when it is the same for every context with the fields
        ``present`` (non-empty): off (disabled, or absent: the ``error`` answer), or on for
        everyone (no strategy, or one that holds for everyone with a stickiness field in
        ``present``); None when the engine must be asked (a split, a constraint, a segment,
        a parent flag). The answers :meth:`evaluate` gives (tests/unit/test_flag_engine.py)."""
        if flag not in self._outcomes:
            return self.evaluate(flag, _NO_CONTEXT)
        everyone = self._everyone.get(flag)
        if everyone is not None and (not everyone[1] or everyone[1] in present):
            return everyone[0]
        return None

    def evaluate(self, flag: str, context: Mapping[str, Any]) -> FlagEvaluation:
        """Evaluate ``flag`` for an Unleash context (``userId``, ``sessionId``, ...)."""
        outcomes = self._outcomes.get(flag)
        if outcomes is None:
            fixed = self._fixed.get(flag)
            if fixed is not None:
                return fixed
            return FlagEvaluation(flag, False, False, "off", "error", self._document.revision)
        everyone = self._everyone.get(flag)
        if everyone is not None and (not everyone[1] or context.get(everyone[1])):
            return everyone[0]
        try:
            # check_enabled's evaluation alone (private; pinned by tests/unit/test_flag_engine.py):
            # check_enabled also asks the engine, in a second round trip through ctypes and JSON,
            # whether the flag wants impression events, which canaryws never emits (~8 µs).
            enabled = self._engine._do_is_enabled(flag, context if isinstance(context, dict) else dict(context))
        except Exception:  # as check_enabled: the engine failed; never raise
            log.warning("flag %s: the engine failed to evaluate it; it is off", flag, exc_info=True)
            enabled = None
        if enabled is None:  # unknown to the engine, or it failed
            return FlagEvaluation(flag, False, False, "off", "error", self._document.revision)
        return outcomes.on if enabled else outcomes.off

    def __repr__(self) -> str:
        return (
            f"FlagSnapshot(revision={self.revision!r}, source={self._source!r}, "
            f"features={len(self._fixed) + len(self._outcomes)})"
        )


_NO_CONTEXT: Mapping[str, Any] = {}
_ANY_CONTEXT = ("", "default", "random")  # stickiness that no context lacks (default falls back to random)
_CONTEXT_FIELDS = ("userId", "sessionId")  # stickiness read from a context field, which a context may lack


def _on_for_everyone(feature: Mapping[str, Any]) -> str | None:
    """For an enabled flag the engine finds on for every context (that has a field): that
    field, "" when none is needed; None for any other flag.

    Such a flag has no parent flags, and either no strategy (Unleash: on for everyone) or
    one that holds for everyone, with no constraint or segment: ``default``, or
    ``flexibleRollout`` at 100 % (whose stickiness, ``userId`` or ``sessionId``, the
    context must then have). The usual end of a rollout (``records.strict`` at 100 %): the
    cohort decision then asks the engine nothing (about 10 µs a flag;
    tests/unit/test_flag_engine.py checks these answers against the engine's own)."""
    if feature.get("dependencies"):
        return None
    strategies = feature.get("strategies") or []
    if not strategies:
        return ""
    needs: str | None = None
    for strategy in strategies:
        if strategy.get("constraints") or strategy.get("segments") or strategy.get("disabled") is True:
            continue
        name = strategy.get("name")
        if name == "default":
            return ""
        parameters = strategy.get("parameters") or {}
        if name == FLEXIBLE_ROLLOUT and str(parameters.get("rollout")) == "100":
            stickiness = parameters.get("stickiness") or ""
            if stickiness in _ANY_CONTEXT:
                return ""
            if stickiness in _CONTEXT_FIELDS and needs is None:
                needs = stickiness
    return needs


def _active_strategies_only(feature: Mapping[str, Any]) -> Mapping[str, Any]:
    """``feature`` without strategies marked ``"disabled": true`` (a copy only if it has any)."""
    strategies = feature.get("strategies") or []
    if not any(s.get("disabled") is True for s in strategies):
        return feature
    return {**feature, "strategies": [s for s in strategies if s.get("disabled") is not True]}
