"""The persist step's pure port (canaryws.core.sink): the first handoff of each key in a group,
and the stored answer's codec (a replay must answer exactly what was first answered)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from canaryws.core.sink import Handoff, decode_answer, encode_answer, first_of_each
from canaryws.core.strategies.outcome import Outcome


def handoff(client_id: str, batch_id: str, value: str = "a") -> Handoff:
    return Handoff(client_id, batch_id, "conn", "rev", False, Outcome("strict", 1, [(0, value)], [], []))


def test_the_first_handoff_of_each_key_wins_and_the_later_ones_point_at_it() -> None:
    group = [handoff("c1", "b1", "first"), handoff("c2", "b1"), handoff("c1", "b1", "second"), handoff("c1", "b2")]
    firsts, positions = first_of_each(group)
    assert [h.key for h in firsts] == [("c1", "b1"), ("c2", "b1"), ("c1", "b2")]
    assert firsts[0].outcome.accepted == [(0, "first")]
    assert positions == [0, 1, 0, 2]
    assert handoff("c1", "b1").counts == (1, 0, 0)


@given(st.lists(st.tuples(st.integers(0, 10_000), st.text()), max_size=20),
       st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["missing", "blank", "empty"])), max_size=20),
       st.sampled_from(["strict", "lenient"]))
def test_a_stored_answer_decodes_to_the_outcome_it_was_encoded_from(
        accepted: list[tuple[int, str]], other: list[tuple[int, str]], strategy: str) -> None:
    outcome = Outcome(strategy, 1, accepted, other, other)
    assert decode_answer(encode_answer(outcome)) == outcome
    assert decode_answer(encode_answer(outcome).encode()) == outcome
