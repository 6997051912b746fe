"""lenient v1 — the legacy behaviour: strip each record, silently skip unusable ones.

Nulls, non-strings, empty and blank records are skipped (with a reason, so the
skips stay countable); control characters and long values are accepted as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from canaryws.core.strategies.outcome import Outcome
from canaryws.core.strategies.reasons import BLANK, EMPTY, MISSING, NOT_A_STRING

NAME = "lenient"
VERSION = 1


def process(records: Sequence[Any], max_length: int | None = None) -> Outcome:  # noqa: ARG001
    """Process one batch. ``max_length`` is accepted for a uniform signature and ignored."""
    accepted: list[tuple[int, str]] = []
    skipped: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        if type(record) is str:
            if record:
                value = record.strip()
                if value:
                    accepted.append((index, value))
                else:
                    skipped.append((index, BLANK))
            else:
                skipped.append((index, EMPTY))
        elif record is None:
            skipped.append((index, MISSING))
        else:
            skipped.append((index, NOT_A_STRING))
    return Outcome(NAME, VERSION, accepted, skipped, [])
