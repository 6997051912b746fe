"""Cohort decision: which strategy a connection runs, from a flag snapshot and a context.

Pure: the snapshot is anything with a ``revision`` and an ``evaluate`` method (the
flag adapters wrap the Unleash engine behind that shape).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from canaryws.core.strategies import LENIENT, STRATEGIES, STRICT

STRICT_FLAG = "records.strict"
SHADOW_FLAG = "records.shadow"
COHORT_FLAGS = (STRICT_FLAG, SHADOW_FLAG)
# What a client gets when ``records.strict`` is absent from the flags document
# (``CANARYWS_DEFAULT_STRATEGY``): lenient until the flag's clean-up sets strict.
DEFAULT_STRATEGIES = tuple(STRATEGIES)
DEFAULT_STRATEGY = LENIENT.name


@dataclass(frozen=True, slots=True)
class FlagEvaluation:
    """One flag evaluated for one context (shaped for the OTel feature-flag semconv)."""

    key: str
    enabled: bool
    found: bool
    variant: str  # "on" | "off"
    reason: str  # "targeting_match" | "split" | "disabled" | "default" | "error"
    version: str  # the flags revision the evaluation used


class FlagSnapshotView(Protocol):
    """What the cohort decision needs from a flags snapshot."""

    @property
    def revision(self) -> str: ...

    def evaluate(self, flag: str, context: Mapping[str, Any]) -> FlagEvaluation: ...

    def evaluate_without_context(self, flag: str, present: Collection[str]) -> FlagEvaluation | None:
        """``flag``'s evaluation when it is the same for every context that has the fields
        ``present`` (set, not empty): what :meth:`evaluate` would answer for any of them,
        without building one. None when the answer may depend on the context (the engine
        must be asked)."""
        ...

    def expected_share(self, flag: str) -> float | None:
        """Share of client ids the flag is on for, if the flags alone determine it."""
        ...

    def has_flag(self, flag: str) -> bool:
        """True when the flags document defines ``flag`` (enabled or not)."""
        ...


@dataclass(frozen=True, slots=True)
class EvaluationContext:
    """A connection's Unleash evaluation context, with the fields an Unleash SDK sets.

    ``userId`` = the verified client id, ``sessionId`` = the connection id, ``appName``
    and ``environment`` = what the service registers with Unleash (as an SDK puts its
    ``app_name`` and ``environment`` in every context), ``properties`` = what the service
    sets (documented in docs/contract.md), ``currentTime`` = the time of the decision.
    """

    client_id: str
    connection_id: str
    properties: Mapping[str, str] = field(default_factory=dict)
    app_name: str = "canaryws"
    environment: str = "development"

    def as_unleash(self, current_time: str | None = None) -> dict[str, Any]:
        """The context as the Unleash engine takes it; ``current_time`` is an ISO 8601
        timestamp with its offset (as the SDKs write it), left out when None."""
        ctx: dict[str, Any] = {
            "appName": self.app_name,
            "environment": self.environment,
            "userId": self.client_id,
            "sessionId": self.connection_id,
            "properties": dict(self.properties),
        }
        if current_time is not None:
            ctx["currentTime"] = current_time
        return ctx


@dataclass(frozen=True, slots=True)
class Cohort:
    strategy: str  # "strict" | "lenient"
    strategy_version: int
    shadow: bool
    flags_revision: str

    def same_treatment(self, other: Cohort) -> bool:
        """True when only the revision differs: the connection's behaviour is unchanged."""
        return (
            self.strategy == other.strategy
            and self.strategy_version == other.strategy_version
            and self.shadow == other.shadow
        )

    def as_wire(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "strategy_version": self.strategy_version,
            "shadow": self.shadow,
            "flags_revision": self.flags_revision,
        }


@dataclass(frozen=True, slots=True)
class CohortDecision:
    cohort: Cohort
    evaluations: tuple[FlagEvaluation, ...]


_IDS_PRESENT = frozenset({"userId", "sessionId"})  # EvaluationContext.as_unleash's, when both ids are set
_NOTHING_PRESENT: frozenset[str] = frozenset()


def decide_cohort(
    snapshot: FlagSnapshotView,
    context: EvaluationContext,
    versions: Mapping[str, int],
    default_strategy: str = DEFAULT_STRATEGY,
    current_time: str | Callable[[], str] | None = None,
) -> CohortDecision:
    """Evaluate the cohort flags once; ``records.strict`` on means the strict strategy.

    ``current_time`` (ISO 8601, the decision's time, or a clock that gives it) is the
    context's ``currentTime``, so a constraint on it is evaluated when the cohort is
    decided: at connect, and again when the flags revision changes. A flag whose answer is
    the same for every context (:meth:`FlagSnapshotView.evaluate_without_context`: off, or
    on for everyone with no constraint) is answered without building the Unleash context
    or reading the clock; that is every connection's case outside a rollout.

    ``versions`` maps strategy name to the version the service runs. When
    ``records.strict`` is not found in the document, the strategy is ``default_strategy``
    ("lenient" or "strict", validated by the settings), and the flag's evaluation reports
    that value (its reason stays ``error``: the flag was not found). When the flag is
    present, its evaluation alone decides: on is strict, off (disabled, or no strategy
    matched) is lenient.
    """
    present = _IDS_PRESENT if context.client_id and context.connection_id else _NOTHING_PRESENT
    strict = snapshot.evaluate_without_context(STRICT_FLAG, present)
    shadow = snapshot.evaluate_without_context(SHADOW_FLAG, present)
    if strict is None or shadow is None:
        unleash_ctx = context.as_unleash(current_time() if callable(current_time) else current_time)
        if strict is None:
            strict = snapshot.evaluate(STRICT_FLAG, unleash_ctx)
        if shadow is None:
            shadow = snapshot.evaluate(SHADOW_FLAG, unleash_ctx)
    if strict.found:
        strategy = STRICT.name if strict.enabled else LENIENT.name
    else:
        strategy = default_strategy
        on = strategy == STRICT.name
        strict = replace(strict, enabled=on, variant="on" if on else "off")
    cohort = Cohort(
        strategy=strategy,
        strategy_version=versions[strategy],
        shadow=shadow.enabled,
        flags_revision=snapshot.revision,
    )
    return CohortDecision(cohort=cohort, evaluations=(strict, shadow))


def expected_strict_share(snapshot: FlagSnapshotView, default_strategy: str = DEFAULT_STRATEGY) -> float | None:
    """The share of client ids expected in the strict cohort (None when it depends on who
    connects): the flag's own share, or, with ``records.strict`` absent, 1.0 when the
    default strategy is strict and 0.0 when it is lenient (everyone gets the default)."""
    if not snapshot.has_flag(STRICT_FLAG):
        return 1.0 if default_strategy == STRICT.name else 0.0
    return snapshot.expected_share(STRICT_FLAG)
