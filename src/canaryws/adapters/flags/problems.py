"""What the flag sources say about the problems of a flags snapshot: once in the log per
revision applied, and as a status for ``/readyz`` and the metrics.

Both sources (the file, an Unleash server) call :func:`log_applied` right after they
swap in a new snapshot, so a problem is logged once per revision, not once per poll.
"""

from __future__ import annotations

import logging
from typing import Any

from canaryws.adapters.flags.engine import FlagSnapshot
from canaryws.adapters.telemetry.logs import iso_utc
from canaryws.core.cohorts import COHORT_FLAGS
from canaryws.core.flagdoc import closure

_SHOWN = 10


def log_applied(log: logging.Logger, snapshot: FlagSnapshot, previous: FlagSnapshot | None) -> None:
    """Log the problems of a snapshot just applied (``previous``: the one it replaced)."""
    revision = snapshot.revision
    cohort_names = {name for flag in COHORT_FLAGS for name in closure(snapshot.document, flag)[0]}
    others = [p for p in snapshot.assessment.problems if p.flag not in cohort_names]
    if others:
        kinds = _kinds(p.kind for p in others)
        log.warning(
            "flags revision %s: %d problem%s in flags canaryws does not evaluate (%s); they evaluate as in "
            "every Unleash SDK (what the engine cannot evaluate is off, for that flag alone) and the rest "
            "of the document is applied",
            revision, len(others), "" if len(others) == 1 else "s", kinds,
            extra={"flags_revision": revision, "problems": [str(p) for p in others[:_SHOWN]],
                   "problems_not_shown": max(0, len(others) - _SHOWN)},
        )
    for flag in COHORT_FLAGS:
        state = snapshot.cohort_state(flag)
        problems = snapshot.assessment.problems_of(closure(snapshot.document, flag)[0])
        if state == "held":
            held = snapshot.held[flag]
            kept = (f"its definition of revision {held.kept_revision}" if held.kept_revision is not None
                    else "it absent, as it was")
            log.error(
                "%s as served in revision %s cannot be evaluated as intended (%s); keeping %s until it is "
                "fixed (disabling it always applies)",
                flag, revision, "; ".join(str(p) for p in held.problems[:_SHOWN]), kept,
                extra={"flag": flag, "flags_revision": revision, "kept_revision": held.kept_revision},
            )
        elif state == "disabled" and problems:
            log.warning(
                "%s is disabled in revision %s, and that is applied; the rest of its definition has problems: %s",
                flag, revision, "; ".join(str(p) for p in problems[:_SHOWN]),
                extra={"flag": flag, "flags_revision": revision},
            )
        elif previous is not None and previous.cohort_state(flag) == "held":
            log.warning("%s can be evaluated again: revision %s applies it as served (%s)", flag, revision, state,
                        extra={"flag": flag, "flags_revision": revision})


def cohort_flags_status(snapshot: FlagSnapshot) -> dict[str, Any]:
    """Per cohort flag: its state, and for a held flag since when, the revision kept and
    the kinds of its problems (no problem text: ``flags show`` and the log have it)."""
    status: dict[str, Any] = {}
    for flag in COHORT_FLAGS:
        entry: dict[str, Any] = {"state": snapshot.cohort_state(flag)}
        held = snapshot.held.get(flag)
        if held is not None:
            entry["since"] = iso_utc(held.since)
            entry["kept_revision"] = held.kept_revision
            entry["problems"] = sorted({p.kind for p in held.problems})
        status[flag] = entry
    return status


def problem_counts(snapshot: FlagSnapshot) -> dict[str, int]:
    """Problems of the flags in force, by kind (only the kinds that occur)."""
    return snapshot.assessment.kinds()


def _kinds(kinds: Any) -> str:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))
