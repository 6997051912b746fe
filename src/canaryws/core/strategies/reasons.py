"""Per-record reason codes shared by both strategies (contract v1).

The checks are ordered: the first one that applies names the reason.
"""

from __future__ import annotations

import re

MISSING = "missing"  # null
NOT_A_STRING = "not_a_string"  # number, bool, array, object
EMPTY = "empty"  # ""
BLANK = "blank"  # only whitespace (what str.strip() removes)
CONTROL_CHARACTER = "control_character"  # C0/C1 controls (and DEL) other than tab
TOO_LONG = "too_long"  # longer than the configured maximum after stripping

ALL_REASONS = (MISSING, NOT_A_STRING, EMPTY, BLANK, CONTROL_CHARACTER, TOO_LONG)

# Unicode general category Cc minus TAB: U+0000-U+0008, U+000A-U+001F, U+007F-U+009F.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
