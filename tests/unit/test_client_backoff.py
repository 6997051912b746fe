"""The client SDK's pure parts: the reconnection delays and the check of a result against its batch."""

from __future__ import annotations

import random
import statistics

import pytest

from canaryws.client import Accepted, CohortInfo, Reconnect, Rejected, Result, Skipped, check_result


def test_delays_grow_exponentially_with_full_jitter_up_to_the_cap() -> None:
    policy = Reconnect(initial_delay=0.1, multiplier=2.0, max_delay=3.0, rng=random.Random(7))
    for retry, bound in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]):
        draws = [policy.delay(retry) for _ in range(2000)]
        assert min(draws) >= 0.0 and max(draws) <= bound
        assert statistics.mean(draws) == pytest.approx(bound / 2, rel=0.08)  # uniform on [0, bound]
        assert max(draws) > 0.9 * bound and min(draws) < 0.1 * bound  # spread over all of it


def test_retry_after_is_a_floor_with_jitter_on_top() -> None:
    policy = Reconnect(initial_delay=0.5, rng=random.Random(1))
    draws = [policy.delay(0, retry_after=2.0) for _ in range(500)]
    assert min(draws) >= 2.0 and max(draws) <= 2.5 and len(set(draws)) > 400


def test_a_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        Reconnect(max_attempts=0)
    with pytest.raises(ValueError):
        Reconnect(multiplier=0.5)
    assert Reconnect().delay(10_000) <= Reconnect().max_delay  # no overflow however long the outage


STRICT = CohortInfo("strict", 1, False, "r1")


def result(accepted: list[int], skipped: list[int], rejected: list[int], strategy: str = "strict") -> Result:
    return Result("b", strategy, 1, [Accepted(i, "v") for i in accepted],  # type: ignore[arg-type]
                  [Skipped(i, "blank") for i in skipped], [Rejected(i, "empty") for i in rejected])


@pytest.mark.parametrize(("answer", "problem"), [
    (result([0, 2], [], [1]), None),
    (result([], [], []), "exactly once"),  # a batch of 3 answered with nothing
    (result([0, 1], [], [1, 2]), "exactly once"),  # index 1 twice
    (result([0, 1, 2, 3], [], []), "exactly once"),  # an index beyond the batch
    (result([2, 0], [], [1]), "accepted indices are not ascending"),
    (result([0], [], [2, 1]), "rejected indices are not ascending"),
    (result([0, 1, 2], [], [], strategy="lenient"), "under the announced cohort"),
])
def test_a_result_must_answer_its_batch(answer: Result, problem: str | None) -> None:
    found = check_result(answer, 3, STRICT)
    assert (found is None) if problem is None else (found is not None and problem in found), found


def test_what_is_retried_is_the_contracts_table() -> None:
    from canaryws.client.backoff import RETRYABLE_CLOSE_CODES, RETRYABLE_STATUSES

    assert {1001, 1006, 1011, 1012, 1013} == RETRYABLE_CLOSE_CODES
    assert {408, 429, 502, 503, 504} == RETRYABLE_STATUSES
    assert not RETRYABLE_STATUSES & {400, 401, 403, 431} and not RETRYABLE_CLOSE_CODES & {1000, 1003, 1008, 1009}
