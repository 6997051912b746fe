"""Record-processing strategies. Each is a pure function ``process(records, max_length)``
returning an :class:`Outcome`, and carries its ``NAME`` and ``VERSION``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from canaryws.core.strategies import lenient, strict
from canaryws.core.strategies.outcome import Outcome


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    version: int
    process: Callable[[Sequence[Any], int | None], Outcome]


LENIENT = Strategy(lenient.NAME, lenient.VERSION, lenient.process)
STRICT = Strategy(strict.NAME, strict.VERSION, strict.process)
STRATEGIES: dict[str, Strategy] = {LENIENT.name: LENIENT, STRICT.name: STRICT}
VERSIONS: dict[str, int] = {s.name: s.version for s in STRATEGIES.values()}
OTHER_STRATEGY: dict[str, str] = {STRICT.name: LENIENT.name, LENIENT.name: STRICT.name}  # what a shadow runs

__all__ = ["LENIENT", "OTHER_STRATEGY", "STRATEGIES", "STRICT", "VERSIONS", "Outcome", "Strategy"]
