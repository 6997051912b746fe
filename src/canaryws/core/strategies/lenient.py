"""lenient v1 — the legacy behaviour: strip each record, silently skip unusable ones.

Nulls, non-strings, empty and blank records are skipped (with a reason, so the
skips stay countable); control characters and long values are accepted as they are.

:func:`reason` and :func:`reference_process` are the specification, one record at a time;
:func:`process` gives the same answer (tests/unit/test_core_speed_equivalence.py) with the
common case, a value left after stripping, tested first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from canaryws.core.strategies.outcome import Outcome
from canaryws.core.strategies.reasons import BLANK, EMPTY, MISSING, NOT_A_STRING

NAME = "lenient"
VERSION = 1


def reason(record: Any) -> str | None:
    """The specification: why lenient v1 skips ``record``, or None when it accepts it
    (its value is then ``record.strip()``)."""
    if record is None:
        return MISSING
    if type(record) is not str:
        return NOT_A_STRING
    if record == "":
        return EMPTY
    if record.strip() == "":
        return BLANK
    return None


def reference_process(records: Sequence[Any], max_length: int | None = None) -> Outcome:  # noqa: ARG001
    """The specification of a batch: each record's :func:`reason`, in index order."""
    accepted: list[tuple[int, str]] = []
    skipped: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        code = reason(record)
        if code is None:
            accepted.append((index, record.strip()))
        else:
            skipped.append((index, code))
    return Outcome(NAME, VERSION, accepted, skipped, [])


def process(records: Sequence[Any], max_length: int | None = None) -> Outcome:  # noqa: ARG001
    """Process one batch. ``max_length`` is accepted for a uniform signature and ignored.
    = :func:`reference_process`."""
    accepted: list[tuple[int, str]] = []
    skipped: list[tuple[int, str]] = []
    accept = accepted.append
    skip = skipped.append
    for index, record in enumerate(records):
        if type(record) is str:
            value = record.strip()
            if value:
                accept((index, value))
            elif record:
                skip((index, BLANK))
            else:
                skip((index, EMPTY))
        elif record is None:
            skip((index, MISSING))
        else:
            skip((index, NOT_A_STRING))
    return Outcome(NAME, VERSION, accepted, skipped, [])
