"""An immutable flags snapshot: one validated document evaluated by its own Unleash engine.

A source builds a new :class:`FlagSnapshot` for every new revision and swaps it in by
reference; readers never lock. Evaluation is one ``check_enabled`` call (which, unlike
``is_enabled``, counts no metrics) plus dictionary lookups: everything else about a
feature is computed once, at construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yggdrasil_engine.engine import UnleashEngine

from canaryws.core.cohorts import FlagEvaluation
from canaryws.core.flagdoc import FlagsDocument, FlagsDocumentError, expected_share, is_partial_rollout


@dataclass(frozen=True, slots=True)
class _FeatureOutcomes:
    """The two possible evaluations of a feature that is enabled in the document."""

    on: FlagEvaluation
    off: FlagEvaluation


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

    __slots__ = ("_document", "_engine", "_fixed", "_loaded_at", "_outcomes", "_shares", "_source")

    def __init__(
        self,
        document: FlagsDocument,
        engine: Any,
        *,
        source: str,
        loaded_at: float,
    ) -> None:
        """Prefer :meth:`from_document`; ``engine`` must hold ``document``'s state."""
        self._document = document
        self._engine = engine
        self._source = source
        self._loaded_at = loaded_at
        revision = document.revision
        fixed: dict[str, FlagEvaluation] = {}
        outcomes: dict[str, _FeatureOutcomes] = {}
        for feature in document.data["features"]:
            key = feature["name"]
            if not feature["enabled"]:
                fixed[key] = FlagEvaluation(key, False, True, "off", "disabled", revision)
                continue
            split = any(is_partial_rollout(s) for s in feature["strategies"])
            outcomes[key] = _FeatureOutcomes(
                on=FlagEvaluation(key, True, True, "on", "split" if split else "targeting_match", revision),
                off=FlagEvaluation(key, False, True, "off", "split" if split else "default", revision),
            )
        self._fixed = fixed
        self._outcomes = outcomes
        self._shares: dict[str, float | None] = {}

    @classmethod
    def from_document(
        cls,
        doc: FlagsDocument,
        *,
        source: str,
        loaded_at: float | None = None,
    ) -> FlagSnapshot:
        """Load ``doc`` into a new Unleash engine.

        Strategies marked ``"disabled": true`` are left out, as an Unleash server leaves
        them out of its client API (the engine itself would evaluate them).

        Raises FlagsDocumentError if the engine does not take the whole document
        (a safety net: validation should already have rejected anything it cannot
        parse, since the engine drops such a state silently).
        """
        engine = UnleashEngine()
        try:
            engine.take_state(json.dumps(_active_strategies_only(doc.data), ensure_ascii=False))
            known = {definition.name for definition in engine.list_known_toggles()}
        except Exception as exc:  # noqa: BLE001 - the engine raises raw TypeError/KeyError/... on bad shapes
            raise FlagsDocumentError(f"the Unleash engine rejected the document: {exc}") from None
        missing = [name for name in doc.feature_names() if name not in known]
        if missing:
            raise FlagsDocumentError(
                f"the Unleash engine rejected the document (features not loaded: {', '.join(missing)})"
            )
        return cls(
            doc,
            engine,
            source=source,
            loaded_at=time.time() if loaded_at is None else loaded_at,
        )

    @property
    def revision(self) -> str:
        return self._document.revision

    @property
    def document(self) -> FlagsDocument:
        return self._document

    @property
    def source(self) -> str:
        return self._source

    @property
    def loaded_at(self) -> float:
        """Unix time at which this snapshot was loaded."""
        return self._loaded_at

    def expected_share(self, flag: str) -> float | None:
        """Share of client ids ``flag`` is on for, when the document alone says so (cached)."""
        try:
            return self._shares[flag]
        except KeyError:
            share = self._shares[flag] = expected_share(self._document.feature(flag))
            return share

    def has_flag(self, flag: str) -> bool:
        """True when the document defines ``flag`` (enabled or not)."""
        return flag in self._outcomes or flag in self._fixed

    def evaluate(self, flag: str, context: Mapping[str, Any]) -> FlagEvaluation:
        """Evaluate ``flag`` for an Unleash context (``userId``, ``sessionId``, ...)."""
        outcomes = self._outcomes.get(flag)
        if outcomes is None:
            fixed = self._fixed.get(flag)
            if fixed is not None:
                return fixed
            return FlagEvaluation(flag, False, False, "off", "error", self._document.revision)
        result = self._engine.check_enabled(flag, context if isinstance(context, dict) else dict(context))
        if not result.is_found:  # the engine failed; it never raises
            return FlagEvaluation(flag, False, False, "off", "error", self._document.revision)
        return outcomes.on if result.is_enabled else outcomes.off

    def __repr__(self) -> str:
        return (
            f"FlagSnapshot(revision={self.revision!r}, source={self._source!r}, "
            f"features={len(self._fixed) + len(self._outcomes)})"
        )


def _active_strategies_only(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` without strategies marked ``"disabled": true`` (a copy only if there are any)."""
    features = data.get("features") or []
    if not any(s.get("disabled") is True for f in features for s in f.get("strategies") or []):
        return data
    return {
        **data,
        "features": [
            {**f, "strategies": [s for s in f.get("strategies") or [] if s.get("disabled") is not True]}
            for f in features
        ],
    }
