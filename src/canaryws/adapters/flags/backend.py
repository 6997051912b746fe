"""Where the flags are changed: the :class:`FlagBackend` protocol the ``flags`` commands and
the guard use, and what a backend reports (listings, changes, archives, the notes for the
operator).

The backends: :class:`~canaryws.adapters.flags.file_backend.FileFlagBackend` (the flags
file) and :class:`~canaryws.adapters.flags.unleash_backend.UnleashAdminBackend` (an Unleash
server's Admin API); :func:`~canaryws.adapters.flags.backend_selection.open_backend` picks
one from the ``UNLEASH_*`` variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from canaryws.adapters.flags.engine import Assessment, assess, cohort_verdicts
from canaryws.core.flagdoc import FLEXIBLE_ROLLOUT, FlagEditError, FlagProblem, FlagRow, FlagsDocument, describe


@dataclass(frozen=True, slots=True)
class FlagListing:
    """All flags of a backend at one revision."""

    source: str  # "file" or "unleash"
    location: str  # the file path or the server URL
    revision: str
    flags: tuple[FlagRow, ...]
    project: str | None = None  # Unleash only
    environment: str | None = None  # Unleash only
    notes: tuple[str, ...] = ()  # warnings for the operator (stderr)
    problems: tuple[FlagProblem, ...] = ()  # every problem, the engine's included (as the service sees them)
    cohort_flags: Mapping[str, str] = dataclasses.field(default_factory=dict)  # flag -> verdict (engine)


@dataclass(frozen=True, slots=True)
class FlagChange:
    """The outcome of one mutation: the flag before and after, and the revisions."""

    flag: str
    before: FlagRow
    after: FlagRow
    old_revision: str
    new_revision: str
    location: str
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.old_revision != self.new_revision


@dataclass(frozen=True, slots=True)
class FlagArchive:
    """The outcome of ``archive``: the flag as it was, and the revisions."""

    flag: str
    before: FlagRow
    old_revision: str
    new_revision: str
    location: str
    notes: tuple[str, ...] = ()


class FlagBackend(Protocol):
    """Where the flags live. Raise FlagEditError for requests that cannot apply (unknown
    flag, bad percent) and FlagsDocumentError for unreadable or invalid flags."""

    @property
    def location(self) -> str: ...

    def describe(self) -> FlagListing: ...

    def set_rollout(self, flag: str, percent: int) -> FlagChange: ...

    def set_enabled(self, flag: str, enabled: bool) -> FlagChange: ...

    def archive(self, flag: str) -> FlagArchive: ...


# ------------------------------------------------------------- what backends report


def row_of(doc: FlagsDocument, flag: str) -> FlagRow:
    """``flag``'s row in ``doc`` (the flag exists: the edit checked it)."""
    for row in describe(doc):
        if row.name == flag:
            return row
    raise FlagEditError(f"unknown flag {flag!r}")  # pragma: no cover - the edit checked it


def listing_of(source: str, location: str, doc: FlagsDocument, *, project: str | None = None,
               environment: str | None = None, fatal: tuple[str, ...] = ()) -> FlagListing:
    """A listing of ``doc`` with every problem the service would see (``fatal``: why the
    server's document is not a flags document at all)."""
    if fatal:
        notes = (f"this is not a flags document canaryws can use (a service keeps its last flags): "
                 f"{'; '.join(fatal[:5])}",)
        return FlagListing(source, location, doc.revision, (), project, environment, notes)
    assessment = assess(doc)
    verdicts = {flag: verdict for flag, (verdict, _) in cohort_verdicts(assessment).items()}
    return FlagListing(source, location, doc.revision, tuple(describe(doc, assessment.problems)), project,
                       environment, problem_notes(assessment), assessment.problems, verdicts)


def other_strategies_notes(doc: FlagsDocument, flag: str) -> tuple[str, ...]:
    """A note when ``flag`` has strategies besides its flexibleRollout (any of them turns it on)."""
    feature = doc.feature(flag) or {}
    others = sorted({s.get("name", "?") for s in feature.get("strategies", [])} - {FLEXIBLE_ROLLOUT})
    if not others:
        return ()
    return (
        f"{flag} also has {', '.join(others)} strateg{'ies' if len(others) > 1 else 'y'}; "
        "Unleash turns a flag on when any strategy matches",
    )


def problem_notes(assessment: Assessment) -> tuple[str, ...]:
    """What the operator should know: a cohort flag the service will not apply as served,
    and the problems of the other flags (applied anyway, as every SDK does)."""
    notes: list[str] = []
    cohort_names: set[str] = set()
    for flag, (verdict, problems) in cohort_verdicts(assessment).items():
        cohort_names.update(p.flag for p in problems if p.flag is not None)
        cohort_names.add(flag)
        if verdict == "invalid":
            notes.append(
                f"{flag} cannot be evaluated as intended ({'; '.join(str(p) for p in problems[:5])}): a running "
                f"service keeps its last good definition of {flag} until this is fixed (disabling {flag} always "
                "applies), and a service cannot start on this document"
            )
        elif verdict == "disabled" and problems:
            notes.append(f"{flag} is disabled, which a service applies; the rest of its definition has problems: "
                         f"{'; '.join(str(p) for p in problems[:5])}")
    others = [p for p in assessment.problems if p.flag not in cohort_names]
    if others:
        kinds: dict[str, int] = {}
        for problem in others:
            kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
        summary = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items()))
        shown = "; ".join(str(p) for p in others[:5])
        more = f" (and {len(others) - 5} more)" if len(others) > 5 else ""
        notes.append(
            f"{len(others)} problem{'' if len(others) == 1 else 's'} in flags canaryws does not evaluate ({summary}); "
            f"a service applies the rest of the document and evaluates these flags as every Unleash SDK does: "
            f"{shown}{more}"
        )
    return tuple(notes)
