"""strict v1 — the new behaviour: the same transform, but every record that is not a
usable value is rejected with an explicit per-record reason.

Order of checks (first match wins): missing, not_a_string, empty, blank,
control_character (in the stripped value), too_long (stripped length in code points).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from canaryws.core.strategies.outcome import Outcome
from canaryws.core.strategies.reasons import (
    BLANK,
    CONTROL_CHARACTER,
    CONTROL_CHARACTERS,
    EMPTY,
    MISSING,
    NOT_A_STRING,
    TOO_LONG,
)

NAME = "strict"
VERSION = 1
DEFAULT_MAX_LENGTH = 4096


def process(records: Sequence[Any], max_length: int | None = DEFAULT_MAX_LENGTH) -> Outcome:
    """Process one batch; ``max_length`` None means no length limit."""
    limit = max_length if max_length is not None else -1
    has_control = CONTROL_CHARACTERS.search
    accepted: list[tuple[int, str]] = []
    rejected: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        if type(record) is str:
            if not record:
                rejected.append((index, EMPTY))
                continue
            value = record.strip()
            if not value:
                rejected.append((index, BLANK))
            elif has_control(value) is not None:
                rejected.append((index, CONTROL_CHARACTER))
            elif limit >= 0 and len(value) > limit:
                rejected.append((index, TOO_LONG))
            else:
                accepted.append((index, value))
        elif record is None:
            rejected.append((index, MISSING))
        else:
            rejected.append((index, NOT_A_STRING))
    return Outcome(NAME, VERSION, accepted, [], rejected)
