"""What both sink adapters do around their SQL: a group's answers, in the group's order.

A commit writes the first handoff of each key (:func:`canaryws.core.sink.first_of_each`);
the database tells which of those keys were new, and the stored answer of the others. This
module turns that into one :class:`Committed` per handoff of the group, in order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from canaryws.core.sink import Committed, Handoff, SinkUnavailable, decode_answer

RETRY_AFTER: Final = 1.0
"""Seconds a caller waits before retrying a group the sink could not commit."""


def answers_of(firsts: Sequence[Handoff], positions: Sequence[int], new: Collection[int],
               stored: Mapping[int, str]) -> list[Committed]:
    """One answer per handoff of the group. ``new`` and ``stored`` are positions in
    ``firsts`` (:func:`~canaryws.core.sink.first_of_each`): a first handoff whose key was new is
    committed with its own outcome; one whose key was committed before is a replay of the
    answer ``stored`` for it; a later handoff of a key within the group (``positions``) is a
    replay of its first's answer. Raises :class:`SinkUnavailable` when a key is neither new nor
    stored (purged between the two reads: a retry sees it afresh)."""
    if len(new) == len(firsts) == len(positions):  # the usual group: every key new, once
        return [Committed(handoff.outcome, replay=False) for handoff in firsts]
    first_answers = []
    for at, handoff in enumerate(firsts):
        if at in new:
            first_answers.append(Committed(handoff.outcome, replay=False))
        elif at in stored:
            first_answers.append(Committed(decode_answer(stored[at]), replay=True))
        else:
            client_id, batch_id = handoff.key
            raise SinkUnavailable(f"batch {batch_id!r} of client {client_id!r}: neither written nor found", RETRY_AFTER)
    answers = []
    answered = [False] * len(firsts)
    for at in positions:
        first = first_answers[at]
        answers.append(Committed(first.outcome, replay=True) if answered[at] else first)
        answered[at] = True
    return answers
