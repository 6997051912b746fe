"""The per-connection token bucket and the window of recent batch ids (core/limits.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canaryws.core.limits import RecentIds, TokenBucket


def test_bucket_admits_a_burst_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # one token short: wait 1/rate
    assert bucket.take(0.0) == pytest.approx(0.2)  # the debt grows with each frame


def test_waiting_repays_the_debt() -> None:
    bucket = TokenBucket(rate=10.0, burst=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    wait = bucket.take(0.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take(0.0 + wait + 0.1) == pytest.approx(0.0, abs=1e-9)  # waited, then a token accrued


def test_an_idle_bucket_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=5, now=0.0)
    waits = [bucket.take(1000.0) for _ in range(6)]
    assert waits[:5] == [0.0] * 5 and waits[5] > 0


@given(st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=1, max_size=300))
def test_a_flood_is_paced_to_the_rate(gaps: list[float]) -> None:
    """Whatever the arrival pattern, a sender that honours the waits gets at most
    burst + rate x elapsed frames through."""
    rate, burst = 50.0, 4
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        now += bucket.take(now)  # the server waits before handling the frame
    assert len(gaps) <= burst + rate * now + 1e-6


def test_a_byte_budget_takes_the_frame_size() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1500, now=0.0)
    assert bucket.take(0.0, 1000) == 0.0
    assert bucket.take(0.0, 1000) == pytest.approx(0.5)  # 500 short at 1000/s
    assert bucket.take(0.5, 1000) == pytest.approx(1.0)  # the debt repaid, then 1000 more


def test_admit_refuses_without_spending() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert [bucket.admit(0.0) for _ in range(2)] == [0.0, 0.0]
    assert [bucket.admit(0.0) for _ in range(5)] == [pytest.approx(0.5)] * 5  # refused, nothing spent
    assert bucket.admit(0.25) == pytest.approx(0.25)
    assert bucket.admit(0.5) == 0.0  # one token came back: the refusals did not delay it


@given(st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=1, max_size=300))
def test_admitted_attempts_never_exceed_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    rate, burst = 20.0, 5
    bucket = TokenBucket(rate, burst, now=0.0)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.admit(now) == 0.0
    assert admitted <= burst + rate * now + 1e-6


def test_bucket_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0, 0.0)


def test_recent_ids_forget_the_oldest_beyond_the_window() -> None:
    recent = RecentIds(3)
    assert [recent.remember(batch_id) for batch_id in ("a", "b", "c")] == [True, True, True]
    assert "a" in recent and len(recent) == 3
    assert recent.remember("d")
    assert "a" not in recent and {"b", "c", "d"} == {i for i in "abcd" if i in recent}
    assert not recent.remember("d")  # a remembered id: reported, and nothing changes
    assert len(recent) == 3 and "b" in recent
    assert recent.remember("a")  # forgotten: new again
    with pytest.raises(ValueError):
        RecentIds(0)


@given(st.lists(st.sampled_from("abcdefgh"), max_size=200), st.integers(min_value=1, max_value=6))
def test_recent_ids_report_exactly_the_ids_among_the_last_window_remembered(ids: list[str], window: int) -> None:
    """remember() is False exactly for an id among the last ``window`` ids it returned True for."""
    recent = RecentIds(window)
    remembered: list[str] = []
    for batch_id in ids:
        expected = batch_id not in remembered[-window:]
        assert recent.remember(batch_id) is expected
        if expected:
            remembered.append(batch_id)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcdefgh")), max_size=300),
       st.integers(min_value=1, max_value=6))
def test_recent_ids_forget_an_id_and_keep_its_place_taken(ops: list[tuple[bool, str]], window: int) -> None:
    """With forget() among the calls: a forgotten id is new again, and its place in the window
    stays taken (the ids before it still drop out of the window on time); at most 2 x window
    ids are held, whatever the calls."""
    recent = RecentIds(window)
    remembered: list[str | None] = []  # the model: a forgotten id leaves a hole
    for forget, batch_id in ops:
        if forget:
            recent.forget(batch_id)
            remembered = [None if held == batch_id else held for held in remembered]
            continue
        expected = batch_id not in remembered[-window:]
        assert recent.remember(batch_id) is expected
        if expected:
            remembered.append(batch_id)
        assert len(recent._new) + len(recent._old) <= 2 * window
    for batch_id in "abcdefgh":
        assert (batch_id in recent) is (batch_id in remembered[-window:])
