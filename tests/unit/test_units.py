"""Units of analysis: summary spans added up per (connection, strategy), closes and retries."""

from __future__ import annotations

from typing import Any

import pytest

from canaryws.analysis.units import (
    DEFAULT_RETRY_WINDOW_S,
    NORMAL_CLOSE_CODES,
    ConnectionUnit,
    build_units,
    mark_retries,
    summaries,
)
from canaryws.core import histogram
from canaryws.core.compare import Divergence
from canaryws.core.strategies import STRICT
from canaryws.core.summary import END_CLOSED, END_COHORT_CHANGED, END_INTERVAL, ConnectionSummary

S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S


def summary(connection: str = "c1", client: str = "u1", strategy: str = "strict", *, seq: int = 0,
            end: str = END_CLOSED, close_code: int | None = 1000, share: float | None = 0.25,
            batches: int = 0) -> ConnectionSummary:
    s = ConnectionSummary(connection, client, strategy, 1, False, "rev", share, seq=seq, end=end,
                          close_code=close_code if end == END_CLOSED else None)
    for i in range(batches):
        outcome = STRICT.process(["a", "", None], 10)
        s.add(outcome, 0.001 * (i + 1))
    return s


def span(attrs: dict[str, Any], start_ns: int = T0, end_ns: int = T0 + S, role: str | None = "connection",
         name: str = "records.connection") -> dict[str, Any]:
    attributes = dict(attrs)
    attributes.pop("canaryws.span.role", None)  # the role is the one given here
    if role is not None:
        attributes["canaryws.span.role"] = role
    return {"name": name, "start_ns": start_ns, "end_ns": end_ns, "attributes": attributes}


# ------------------------------------------------------------------------ summaries


def test_summaries_picks_connection_spans_only() -> None:
    good = summary(batches=2)
    spans = [
        span(good.to_attributes(), T0, T0 + 5 * S),
        span(good.to_attributes(), role="batch", name="records.batch"),
        span(good.to_attributes(), role=None),
        span({"canaryws.span.role": "connect"}, role=None, name="records.connect"),
        {"name": "no attributes at all", "start_ns": 1, "end_ns": 2},
        {"name": "null attributes", "attributes": None},
    ]
    found = list(summaries(spans))
    assert len(found) == 1
    got, start, end = found[0]
    assert got == good
    assert (start, end) == (T0, T0 + 5 * S)


def test_summaries_skips_malformed_connection_spans() -> None:
    good = summary().to_attributes()
    missing_id = {k: v for k, v in good.items() if k != "canaryws.connection.id"}
    bad_int = {**good, "canaryws.connection.batches": "many"}
    bad_type = {**good, "canaryws.summary.seq": [1, 2]}
    spans = [span(missing_id), span(bad_int), span(bad_type), span(good, T0 + S, T0 + 2 * S)]
    found = list(summaries(spans))
    assert [(s.connection_id, start, end) for s, start, end in found] == [("c1", T0 + S, T0 + 2 * S)]


def test_summaries_missing_times_read_as_zero() -> None:
    found = list(summaries([{"attributes": {**summary().to_attributes(), "canaryws.span.role": "connection"}}]))
    assert [(start, end) for _, start, end in found] == [(0, 0)]


# ---------------------------------------------------------------------- build_units


def test_slices_of_one_connection_add_up() -> None:
    first = summary(seq=0, end=END_INTERVAL, batches=2)
    first.add_error("bad_frame")
    first.add_shadow(Divergence(3, 1, {("accepted_by_lenient_only", "too_long"): 1}))
    second = summary(seq=1, end=END_INTERVAL, batches=1, share=0.5)
    second.shadow_skipped = 2
    closed = summary(seq=2, end=END_CLOSED, close_code=1000, batches=3)
    closed.add_error("bad_frame")
    closed.add_error("too_large")
    closed.add_shadow(Divergence(3, 2, {("accepted_by_lenient_only", "too_long"): 2}))
    # out of order on purpose: the units do not depend on the order of the spans
    units = build_units([(closed, T0 + 20 * S, T0 + 25 * S), (first, T0, T0 + 10 * S),
                         (second, T0 + 10 * S, T0 + 20 * S)])
    assert len(units) == 1
    unit = units[0]
    assert (unit.connection_id, unit.client_id, unit.strategy) == ("c1", "u1", "strict")
    assert (unit.start_ns, unit.end_ns) == (T0, T0 + 25 * S)
    assert unit.closed and unit.close_code == 1000 and not unit.abnormal_close
    assert unit.batches == 6
    assert unit.records == 18
    assert (unit.accepted, unit.skipped, unit.rejected) == (6, 0, 12)
    assert unit.reasons == {("rejected", "empty"): 6, ("rejected", "missing"): 6}
    assert unit.errors == 3
    assert unit.error_codes == {"bad_frame": 2, "too_large": 1}
    assert sum(unit.latency) == 6
    assert unit.latency == histogram.merge([first.latency, second.latency, closed.latency])
    assert unit.latency_sum_s == pytest.approx(first.latency_sum_s + second.latency_sum_s + closed.latency_sum_s)
    assert (unit.shadow_batches, unit.shadow_skipped, unit.shadow_records, unit.shadow_divergent) == (2, 2, 6, 3)
    assert unit.divergence == {("accepted_by_lenient_only", "too_long"): 3}
    assert unit.strict_share == 0.25  # the share when it connected (seq 0)
    assert not unit.retry


def test_a_connection_still_open_is_not_closed() -> None:
    (unit,) = build_units([(summary(end=END_INTERVAL, batches=1), T0, T0 + S)])
    assert not unit.closed and unit.close_code is None and not unit.abnormal_close


def test_a_cohort_change_splits_the_connection_into_two_units() -> None:
    before = summary(strategy="strict", seq=0, end=END_COHORT_CHANGED, batches=2, share=0.25)
    after = summary(strategy="lenient", seq=1, end=END_INTERVAL, batches=1, share=0.0)
    closed = summary(strategy="lenient", seq=2, end=END_CLOSED, close_code=1011, batches=1, share=0.0)
    units = build_units([(before, T0, T0 + 10 * S), (after, T0 + 10 * S, T0 + 20 * S),
                         (closed, T0 + 20 * S, T0 + 30 * S)])
    assert [(u.connection_id, u.strategy) for u in units] == [("c1", "strict"), ("c1", "lenient")]
    strict_unit, lenient_unit = units
    assert (strict_unit.batches, strict_unit.start_ns, strict_unit.end_ns) == (2, T0, T0 + 10 * S)
    assert not strict_unit.closed and not strict_unit.abnormal_close
    assert strict_unit.strict_share == 0.25
    assert (lenient_unit.batches, lenient_unit.start_ns, lenient_unit.end_ns) == (2, T0 + 10 * S, T0 + 30 * S)
    assert lenient_unit.closed and lenient_unit.close_code == 1011 and lenient_unit.abnormal_close
    assert lenient_unit.strict_share == 0.0


def test_units_are_sorted_by_start() -> None:
    slices = [(summary(connection=f"c{i}", client=f"u{i}"), T0 + (10 - i) * S, T0 + 20 * S) for i in range(5)]
    units = build_units(slices)
    assert [u.connection_id for u in units] == ["c4", "c3", "c2", "c1", "c0"]


def test_strict_share_falls_back_to_a_later_slice() -> None:
    first = summary(seq=0, end=END_INTERVAL, share=None)
    later = summary(seq=1, end=END_CLOSED, share=0.3)
    (unit,) = build_units([(first, T0, T0 + S), (later, T0 + S, T0 + 2 * S)])
    assert unit.strict_share == 0.3


@pytest.mark.parametrize(
    ("code", "abnormal"),
    [(1000, False), (1001, False), (1012, False), (1006, True), (1011, True), (4001, True), (1008, True)],
)
def test_abnormal_close(code: int, abnormal: bool) -> None:
    assert frozenset({1000, 1001, 1012}) == NORMAL_CLOSE_CODES
    (unit,) = build_units([(summary(close_code=code), T0, T0 + S)])
    assert unit.closed
    assert unit.abnormal_close is abnormal


# ----------------------------------------------------------------------- retries


def client_pair(old_close: int, gap_s: float, *, window_s: float = DEFAULT_RETRY_WINDOW_S,
                old_end_s: float = 10.0) -> list[ConnectionUnit]:
    """One client: a connection closed with ``old_close`` at T0+old_end_s, another opened ``gap_s`` later."""
    old_end = T0 + int(old_end_s * S)
    new_start = old_end + int(gap_s * S)
    slices = [
        (summary(connection="old", close_code=old_close), T0, old_end),
        (summary(connection="new", end=END_INTERVAL), new_start, new_start + 5 * S),
    ]
    return build_units(slices, retry_window_s=window_s)


def _retry(units: list[ConnectionUnit], connection: str) -> bool:
    (unit,) = [u for u in units if u.connection_id == connection]
    return unit.retry


@pytest.mark.parametrize("code", [1006, 1011, 4000])
def test_reconnect_soon_after_an_abnormal_close_is_a_retry(code: int) -> None:
    units = client_pair(code, 2.0)
    assert _retry(units, "new")
    assert not _retry(units, "old")


@pytest.mark.parametrize("code", sorted(NORMAL_CLOSE_CODES))
def test_reconnect_after_a_normal_close_is_not_a_retry(code: int) -> None:
    assert not _retry(client_pair(code, 2.0), "new")


def test_reconnect_outside_the_window_is_not_a_retry() -> None:
    assert _retry(client_pair(1011, 29.0), "new")
    assert _retry(client_pair(1011, 30.0), "new")  # the window is inclusive
    assert not _retry(client_pair(1011, 31.0), "new")
    assert not _retry(client_pair(1011, 6.0, window_s=5.0), "new")
    assert _retry(client_pair(1011, 4.0, window_s=5.0), "new")


def test_reconnect_up_to_one_second_before_the_old_span_ends_still_counts() -> None:
    assert _retry(client_pair(1011, -0.5), "new")
    assert _retry(client_pair(1011, -1.0), "new")
    assert not _retry(client_pair(1011, -1.5), "new")
    assert not _retry(client_pair(1011, -5.0), "new")


def test_other_clients_do_not_make_retries() -> None:
    slices = [
        (summary(connection="a", client="alice", close_code=1011), T0, T0 + 10 * S),
        (summary(connection="b", client="bob", end=END_INTERVAL), T0 + 11 * S, T0 + 12 * S),
    ]
    assert not any(u.retry for u in build_units(slices))


def test_a_normal_close_in_between_ends_the_retry_chain() -> None:
    slices = [
        (summary(connection="c1", close_code=1011), T0, T0 + 10 * S),
        (summary(connection="c2", close_code=1000), T0 + 11 * S, T0 + 12 * S),
        (summary(connection="c3", close_code=1006), T0 + 13 * S, T0 + 14 * S),
        (summary(connection="c4", close_code=1000), T0 + 15 * S, T0 + 16 * S),
    ]
    units = build_units(slices)
    assert [(u.connection_id, u.retry) for u in units] == [
        ("c1", False), ("c2", True), ("c3", False), ("c4", True)]


def test_mark_retries_resets_and_handles_lone_clients() -> None:
    old = ConnectionUnit("old", "u1", "strict", T0, T0 + 10 * S, closed=True, close_code=1006)
    new = ConnectionUnit("new", "u1", "strict", T0 + 11 * S, T0 + 12 * S, retry=False)
    lone = ConnectionUnit("lone", "u2", "strict", T0, T0 + S, retry=False)
    units = [new, lone, old]  # any order
    mark_retries(units, 30.0)
    assert new.retry and not old.retry and not lone.retry
    old.close_code = 1000
    mark_retries(units, 30.0)
    assert not new.retry  # recomputed, not sticky


def test_the_continuation_of_a_connection_after_a_cohort_change_is_not_a_retry() -> None:
    slices = [
        (summary(connection="old", strategy="strict", close_code=1011), T0, T0 + 10 * S),
        # the client reconnects 1 s later (a real retry) ...
        (summary(connection="new", strategy="strict", seq=0, end=END_COHORT_CHANGED), T0 + 11 * S, T0 + 15 * S),
        # ... and its cohort changes 4 s into the new connection: that is not a new connection
        (summary(connection="new", strategy="lenient", seq=1, end=END_CLOSED, close_code=1000),
         T0 + 15 * S, T0 + 20 * S),
    ]
    units = build_units(slices)
    retries = [(u.connection_id, u.strategy) for u in units if u.retry]
    assert retries == [("new", "strict")]
