"""The persist step's port: what a batch hands on, and what the sink answers.

Pure: no I/O. The adapters (``canaryws.adapters.sink``: SQLite, PostgreSQL) store
:class:`Handoff` values in one transaction per group and answer each with a
:class:`Committed`; the batch loop sends a batch's ``result`` frame only once its
handoff is committed (docs/sink.md).

**Exactly once.** ``(client_id, batch_id)`` is the idempotency key: a handoff whose key
was committed before (on any connection, before any restart, within the retention) is
not written again; it is answered with the outcome stored the first time
(:attr:`Committed.replay`). Within one group the first handoff of a key wins and the
later ones are replays of it (:func:`first_of_each`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from canaryws.core.strategies.outcome import Outcome

DEFAULT_RETENTION_SECONDS: Final = 24 * 3600
"""How long an idempotency key is kept (``CANARYWS_SINK_RETENTION``)."""

SINK_NONE: Final = "none"

NUL: Final = "\x00"
NUL_STORED: Final = "\ufffd"
"""How a NUL in a value (or a batch id) is stored in the sink's tables: PostgreSQL's ``text``
cannot hold it, and SQLite's JSON functions (the view ``canaryws_records``) end a string at it.
The stored answer keeps it (escaped), so replays answer exactly what was first answered."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """What one well-formed batch hands on: who sent it, under which cohort, and its outcome
    (each accepted index and value, and the skipped and rejected ones for the answer)."""

    client_id: str
    batch_id: str
    connection_id: str
    flags_revision: str
    synthetic: bool
    outcome: Outcome

    @property
    def key(self) -> tuple[str, str]:
        return self.client_id, self.batch_id

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(accepted, skipped, rejected)``."""
        outcome = self.outcome
        return len(outcome.accepted), len(outcome.skipped), len(outcome.rejected)


@dataclass(frozen=True, slots=True)
class Committed:
    """A handoff's answer from the sink: the outcome committed for its key (its own, or,
    on a replay, the one stored the first time the key was committed)."""

    outcome: Outcome
    replay: bool


class SinkUnavailable(Exception):
    """The sink could not commit (down, slow, or refusing): nothing of the group was written.
    ``retry_after``: the seconds after which a retry is worth trying."""

    def __init__(self, detail: str, retry_after: float = 1.0) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class Sink(Protocol):
    """A store of handoffs. ``commit`` writes a group in one transaction, or nothing
    (raising :class:`SinkUnavailable`); it answers the handoffs in their order."""

    name: str  # "sqlite" or "postgresql"
    concurrency: int  # groups a committer keeps in flight on this sink at most

    async def open(self) -> None: ...

    async def commit(self, handoffs: Sequence[Handoff]) -> list[Committed]: ...

    async def purge(self, retention_seconds: float) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def first_of_each(handoffs: Sequence[Handoff]) -> tuple[list[Handoff], list[int]]:
    """The group's handoffs with the first of each key only, and for each handoff of the
    group the position of its key's first handoff in that list (its own for a first)."""
    firsts: list[Handoff] = []
    where: dict[tuple[str, str], int] = {}
    positions: list[int] = []
    for handoff in handoffs:
        key = handoff.key
        at = where.get(key)
        if at is None:
            at = where[key] = len(firsts)
            firsts.append(handoff)
        positions.append(at)
    return firsts, positions


class StoredAnswer(msgspec.Struct, frozen=True, array_like=True):
    """The outcome of a committed batch as stored for replays (compact: positional)."""

    strategy: str
    strategy_version: int
    accepted: list[tuple[int, str]]
    skipped: list[tuple[int, str]]
    rejected: list[tuple[int, str]]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StoredAnswer).decode


def encode_answer(outcome: Outcome) -> str:
    """The stored form of an outcome (JSON text; :func:`decode_answer` reads it back)."""
    return _encode(StoredAnswer(outcome.strategy, outcome.strategy_version, outcome.accepted,
                                outcome.skipped, outcome.rejected)).decode()


def decode_answer(text: str | bytes) -> Outcome:
    stored = _decode(text)
    return Outcome(stored.strategy, stored.strategy_version, stored.accepted, stored.skipped, stored.rejected)
