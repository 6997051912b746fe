"""strict v1 — the new behaviour: the same transform, but every record that is not a
usable value is rejected with an explicit per-record reason.

Order of checks (first match wins): missing, not_a_string, empty, blank,
control_character (in the stripped value), too_long (stripped length in code points).

:func:`reason` and :func:`reference_process` are the specification, one record at a time.
:func:`process` is what runs on every batch: the same answer (tests/unit/test_core_speed_equivalence.py
checks it on any JSON value and tricky text), at about half the cost. It tests the common
case first, a non-empty stripped value that is printable and not too long, and names a
reason only for the records that fail it. ``str.isprintable`` is false for every control
character (and for tab, non-ASCII spaces, format characters...), so a printable value has
none and only the rest pay for the exact test, the :data:`CONTROL_CHARACTERS` regex
(``isprintable`` scans a string at about twice the regex's speed).
"""

from __future__ import annotations

import sys
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


def reason(record: Any, max_length: int | None = DEFAULT_MAX_LENGTH) -> str | None:
    """The specification: why strict v1 rejects ``record``, or None when it accepts it
    (its value is then ``record.strip()``)."""
    if record is None:
        return MISSING
    if type(record) is not str:
        return NOT_A_STRING
    if record == "":
        return EMPTY
    value = record.strip()
    if value == "":
        return BLANK
    if CONTROL_CHARACTERS.search(value) is not None:
        return CONTROL_CHARACTER
    if max_length is not None and max_length >= 0 and len(value) > max_length:  # None, or below 0: no limit
        return TOO_LONG
    return None


def reference_process(records: Sequence[Any], max_length: int | None = DEFAULT_MAX_LENGTH) -> Outcome:
    """The specification of a batch: each record's :func:`reason`, in index order."""
    accepted: list[tuple[int, str]] = []
    rejected: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        code = reason(record, max_length)
        if code is None:
            accepted.append((index, record.strip()))
        else:
            rejected.append((index, code))
    return Outcome(NAME, VERSION, accepted, [], rejected)


def process(records: Sequence[Any], max_length: int | None = DEFAULT_MAX_LENGTH) -> Outcome:
    """Process one batch; ``max_length`` None means no length limit. = :func:`reference_process`."""
    limit = max_length if max_length is not None and max_length >= 0 else sys.maxsize
    has_control = CONTROL_CHARACTERS.search
    accepted: list[tuple[int, str]] = []
    rejected: list[tuple[int, str]] = []
    accept = accepted.append
    reject = rejected.append
    for index, record in enumerate(records):
        if type(record) is str:
            value = record.strip()
            if value and value.isprintable() and len(value) <= limit:  # the common case
                accept((index, value))
            elif not record:
                reject((index, EMPTY))
            elif not value:
                reject((index, BLANK))
            elif has_control(value) is not None:
                reject((index, CONTROL_CHARACTER))
            elif len(value) > limit:
                reject((index, TOO_LONG))
            else:  # not printable, but no control character: a tab, a non-ASCII space...
                accept((index, value))
        elif record is None:
            reject((index, MISSING))
        else:
            reject((index, NOT_A_STRING))
    return Outcome(NAME, VERSION, accepted, [], rejected)
