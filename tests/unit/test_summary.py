"""The latency histogram and the per-connection summary (its span attributes are a wire format)."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from canaryws.core import histogram
from canaryws.core.cohorts import Cohort
from canaryws.core.compare import Divergence, compare
from canaryws.core.strategies import LENIENT, STRICT, Outcome
from canaryws.core.summary import (
    END_CLOSED,
    END_COHORT_CHANGED,
    END_INTERVAL,
    ConnectionSummary,
)

# ----------------------------------------------------------------------- histogram


def test_bounds_grow_by_root_two_from_50_microseconds() -> None:
    bounds = histogram.BOUNDS_MS
    assert len(bounds) == 39 and histogram.SIZE == 40
    assert bounds[0] == 0.05
    assert bounds[2] == 0.1
    assert 26_000 < bounds[-1] < 27_000
    for low, high in itertools.pairwise(bounds):
        assert high / low == pytest.approx(math.sqrt(2), rel=1e-4)


def test_bucket_of_uses_upper_inclusive_bounds() -> None:
    bounds = histogram.BOUNDS_MS
    assert histogram.bucket_of(0.0) == 0
    assert histogram.bucket_of(-1.0) == 0
    assert histogram.bucket_of(bounds[0]) == 0
    assert histogram.bucket_of(bounds[0] + 1e-9) == 1
    for i, bound in enumerate(bounds):
        assert histogram.bucket_of(bound) == i
        assert histogram.bucket_of(bound * 1.0001) == i + 1


def test_the_summary_buckets_seconds_as_bucket_of_buckets_milliseconds() -> None:
    """ConnectionSummary.add takes seconds: the same buckets as bucket_of gives the value
    in milliseconds, at every bound, just above it and between two bounds."""
    values_ms = [0.0, *histogram.BOUNDS_MS, *(b * 1.0001 for b in histogram.BOUNDS_MS),
                 *((low + high) / 2 for low, high in itertools.pairwise(histogram.BOUNDS_MS)), 1e9]
    outcome = Outcome("strict", 1, accepted=[], skipped=[], rejected=[])
    for value in values_ms:
        summary = ConnectionSummary("c", "client", "strict", 1, False, "r1")
        summary.add(outcome, value / 1000.0)
        assert summary.latency.index(1) == histogram.bucket_of(value), value


def test_values_above_the_top_bound_go_to_the_overflow_bucket() -> None:
    top = histogram.BOUNDS_MS[-1]
    overflow = len(histogram.BOUNDS_MS)
    assert histogram.bucket_of(top * 1.01) == overflow == histogram.SIZE - 1
    assert histogram.bucket_of(1e12) == overflow
    counts = histogram.empty()
    counts[overflow] = 5
    assert histogram.quantile(counts, 0.5) == top
    assert histogram.quantile(counts, 1.0) == top


def test_empty_histogram_has_no_quantile() -> None:
    assert histogram.quantile(histogram.empty(), 0.5) is None
    assert histogram.quantile([], 0.99) is None
    assert histogram.empty() == [0] * histogram.SIZE


def test_quantile_interpolates_within_the_bucket() -> None:
    counts = histogram.empty()
    i = histogram.bucket_of(10.0)
    counts[i] = 4
    low, high = histogram.BOUNDS_MS[i - 1], histogram.BOUNDS_MS[i]
    assert histogram.quantile(counts, 0.5) == pytest.approx(low + (high - low) * 0.5)
    assert histogram.quantile(counts, 1.0) == pytest.approx(high)
    assert histogram.quantile(counts, 0.25) == pytest.approx(low + (high - low) * 0.25)


def test_quantile_in_the_first_bucket_starts_at_zero() -> None:
    counts = histogram.empty()
    counts[0] = 2
    assert histogram.quantile(counts, 0.5) == pytest.approx(histogram.BOUNDS_MS[0] / 2)


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.lognormvariate(math.log(5.0), 1.0),
        lambda rng: rng.expovariate(1 / 20.0),
        lambda rng: rng.uniform(0.2, 400.0),
    ],
    ids=["lognormal", "exponential", "uniform"],
)
def test_quantiles_of_random_data_are_within_25_percent(seed: int, draw: Any) -> None:
    rng = random.Random(seed)
    values = [draw(rng) for _ in range(3000)]
    counts = histogram.empty()
    for v in values:
        counts[histogram.bucket_of(v)] += 1
    for q in (0.1, 0.5, 0.9, 0.99):
        estimate = histogram.quantile(counts, q)
        assert estimate is not None
        exact = _exact(values, q)
        assert abs(estimate - exact) <= 0.25 * exact, (q, estimate, exact)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=0.06, max_value=25_000.0), min_size=1, max_size=60),
    st.floats(min_value=0.001, max_value=1.0),
)
def test_quantile_lies_in_the_bucket_of_the_exact_quantile(values: list[float], q: float) -> None:
    counts = histogram.empty()
    for v in values:
        counts[histogram.bucket_of(v)] += 1
    estimate = histogram.quantile(counts, q)
    exact = _exact(values, q)
    b = histogram.bucket_of(exact)
    assert estimate is not None
    assert histogram.BOUNDS_MS[b - 1] <= estimate <= histogram.BOUNDS_MS[b]
    # so never off by more than one bucket width (a factor √2)
    assert exact / math.sqrt(2) * 0.999 <= estimate <= exact * math.sqrt(2) * 1.001


def test_merge_adds_bucketwise() -> None:
    a = histogram.empty()
    b = histogram.empty()
    a[0], a[5], a[39] = 1, 2, 3
    b[5], b[10] = 4, 7
    merged = histogram.merge([a, b])
    assert merged[0] == 1 and merged[5] == 6 and merged[10] == 7 and merged[39] == 3
    assert sum(merged) == sum(a) + sum(b)
    assert a[5] == 2 and b[5] == 4  # inputs untouched
    assert histogram.merge([]) == histogram.empty()


def test_merge_tolerates_short_and_long_inputs() -> None:
    merged = histogram.merge([[1, 2], [0] * 39 + [1, 99, 99]])
    assert len(merged) == histogram.SIZE
    assert merged[:2] == [1, 2]
    assert merged[39] == 1
    assert sum(merged) == 4  # counts past SIZE are ignored


def test_merged_quantile_is_the_quantile_of_all_values() -> None:
    rng = random.Random(7)
    parts = [[rng.lognormvariate(1.0, 0.8) for _ in range(200)] for _ in range(5)]
    hists = []
    whole = histogram.empty()
    for part in parts:
        h = histogram.empty()
        for v in part:
            h[histogram.bucket_of(v)] += 1
            whole[histogram.bucket_of(v)] += 1
        hists.append(h)
    assert histogram.merge(hists) == whole
    assert histogram.quantile(histogram.merge(hists), 0.9) == histogram.quantile(whole, 0.9)


# ------------------------------------------------------------------------- summary


def new_summary(**overrides: Any) -> ConnectionSummary:
    fields: dict[str, Any] = {
        "connection_id": "conn-1",
        "client_id": "client-1",
        "strategy": "strict",
        "strategy_version": 1,
        "shadow": True,
        "flags_revision": "rev0123456789abc",
    }
    fields.update(overrides)
    return ConnectionSummary(**fields)


def busy_summary() -> ConnectionSummary:
    """A summary with every field set, from real strategy outcomes."""
    summary = new_summary(strict_share=0.25, seq=3, end=END_CLOSED, close_code=1011)
    batch1 = [" a ", "", "  ", "b", None, 5, "x\x00"]
    batch2 = ["ok", "waytoolongvalue", "", None]
    for records, seconds in ((batch1, 0.002), (batch2, 0.5)):
        outcome = STRICT.process(records, 8)
        summary.add(outcome, seconds)
        summary.add_shadow(compare(outcome, LENIENT.process(records, 8)))
    summary.add_error("bad_frame")
    summary.add_error("bad_frame")
    summary.add_error("too_large")
    summary.shadow_skipped = 2
    return summary


def test_add_counts_batches_records_reasons_and_latency() -> None:
    summary = new_summary()
    outcome = STRICT.process([" a ", "", "  ", "b", None, 5], 4096)
    summary.add(outcome, 0.0015)
    assert (summary.batches, summary.records, summary.accepted, summary.skipped, summary.rejected) == (1, 6, 2, 0, 4)
    assert summary.reasons == {
        ("rejected", "empty"): 1,
        ("rejected", "blank"): 1,
        ("rejected", "missing"): 1,
        ("rejected", "not_a_string"): 1,
    }
    assert summary.latency[histogram.bucket_of(1.5)] == 1 and sum(summary.latency) == 1
    assert summary.latency_sum_s == pytest.approx(0.0015)

    lenient = LENIENT.process(["", "", "x"], 4096)
    summary.add(lenient, 2.0)
    assert (summary.batches, summary.records, summary.accepted, summary.skipped) == (2, 9, 3, 2)
    assert summary.reasons[("skipped", "empty")] == 2
    assert summary.reasons[("rejected", "empty")] == 1
    assert summary.latency[histogram.bucket_of(2000.0)] == 1 and sum(summary.latency) == 2
    assert summary.latency_sum_s == pytest.approx(2.0015)


def test_add_error_counts_by_code() -> None:
    summary = new_summary()
    summary.add_error("bad_frame")
    summary.add_error("bad_frame")
    summary.add_error("too_large")
    assert summary.errors == 3
    assert summary.error_codes == {"bad_frame": 2, "too_large": 1}
    assert summary.batches == 0 and sum(summary.latency) == 0


def test_add_shadow_adds_divergence() -> None:
    summary = new_summary()
    summary.add_shadow(Divergence(4, 0, {}))
    summary.add_shadow(Divergence(3, 2, {("accepted_by_lenient_only", "too_long"): 2}))
    summary.add_shadow(Divergence(5, 3, {("accepted_by_lenient_only", "too_long"): 1,
                                         ("accepted_by_lenient_only", "control_character"): 2}))
    assert summary.shadow_batches == 3
    assert summary.shadow_records == 12
    assert summary.shadow_divergent == 5
    assert summary.divergence == {("accepted_by_lenient_only", "too_long"): 3,
                                  ("accepted_by_lenient_only", "control_character"): 2}
    assert summary.shadow_skipped == 0


def test_round_trip_of_every_field() -> None:
    summary = busy_summary()
    assert summary.reasons and summary.error_codes and summary.divergence  # the test covers them
    back = ConnectionSummary.from_attributes(summary.to_attributes())
    assert back == summary


@pytest.mark.parametrize("share", [None, 0.0, 0.25, 1.0])
@pytest.mark.parametrize("close_code", [None, 1000, 4001])
@pytest.mark.parametrize("end", [END_INTERVAL, END_COHORT_CHANGED, END_CLOSED])
def test_round_trip_of_share_end_and_close_code(share: float | None, close_code: int | None, end: str) -> None:
    summary = new_summary(strict_share=share, close_code=close_code, end=end, shadow=False, seq=7)
    attrs = summary.to_attributes()
    assert ("canaryws.flags.strict_share" in attrs) is (share is not None)
    assert ("canaryws.connection.close_code" in attrs) is (close_code is not None)
    back = ConnectionSummary.from_attributes(attrs)
    assert back == summary
    assert back.strict_share == share


def test_no_end_is_written_as_interval() -> None:
    attrs = new_summary().to_attributes()
    assert attrs["canaryws.summary.end"] == END_INTERVAL
    assert ConnectionSummary.from_attributes(attrs).end == END_INTERVAL


def test_to_attributes_names() -> None:
    attrs = busy_summary().to_attributes()
    assert attrs["canaryws.connection.id"] == "conn-1"
    assert attrs["canaryws.client.id"] == "client-1"
    assert attrs["canaryws.strategy"] == "strict"
    assert attrs["canaryws.strategy.version"] == 1
    assert attrs["canaryws.shadow"] is True
    assert attrs["canaryws.flags.strict_share"] == 0.25
    assert attrs["canaryws.summary.seq"] == 3
    assert attrs["canaryws.summary.end"] == END_CLOSED
    assert attrs["canaryws.connection.close_code"] == 1011
    assert attrs["canaryws.connection.batches"] == 2
    assert attrs["canaryws.connection.records"] == 11
    assert attrs["canaryws.connection.rejected.empty"] == 2
    assert attrs["canaryws.connection.rejected.too_long"] == 1
    assert attrs["canaryws.connection.errors"] == 3
    assert attrs["canaryws.connection.errors.bad_frame"] == 2
    assert len(attrs["canaryws.connection.latency.buckets"]) == histogram.SIZE
    assert attrs["canaryws.shadow.batches"] == 2
    assert attrs["canaryws.shadow.skipped"] == 2
    assert attrs["canaryws.shadow.divergence.accepted_by_lenient_only.control_character"] == 1
    assert attrs["canaryws.shadow.divergence.accepted_by_lenient_only.too_long"] == 1


def test_idle_summary_leaves_out_latency_and_shadow() -> None:
    attrs = new_summary().to_attributes()
    assert not any(key.startswith("canaryws.shadow.") for key in attrs)
    assert "canaryws.connection.latency.buckets" not in attrs
    assert "canaryws.connection.latency.sum_s" not in attrs
    back = ConnectionSummary.from_attributes(attrs)
    assert back.latency == histogram.empty()
    assert (back.shadow_batches, back.shadow_skipped, back.divergence) == (0, 0, {})


def test_shadow_totals_are_written_when_only_skips_happened() -> None:
    summary = new_summary()
    summary.shadow_skipped = 4
    attrs = summary.to_attributes()
    assert attrs["canaryws.shadow.skipped"] == 4
    assert attrs["canaryws.shadow.batches"] == 0
    assert ConnectionSummary.from_attributes(attrs).shadow_skipped == 4


def test_attributes_are_valid_otel_attribute_values() -> None:
    attrs = busy_summary().to_attributes()
    for key, value in attrs.items():
        assert isinstance(key, str) and key
        if isinstance(value, list):
            assert value and all(type(v) is int for v in value), key
        else:
            assert type(value) in (str, bool, int, float), key
    # The SDK keeps every one of them (it drops invalid values with a warning).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("test").start_span("records.connection", attributes=attrs).end()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert set(span.attributes) == set(attrs)
    assert list(span.attributes["canaryws.connection.latency.buckets"]) == attrs["canaryws.connection.latency.buckets"]
    provider.shutdown()


def test_from_attributes_requires_ids() -> None:
    attrs = new_summary().to_attributes()
    for key in ("canaryws.connection.id", "canaryws.client.id", "canaryws.strategy"):
        broken = dict(attrs)
        del broken[key]
        with pytest.raises(KeyError):
            ConnectionSummary.from_attributes(broken)
    with pytest.raises(ValueError):
        ConnectionSummary.from_attributes({**attrs, "canaryws.summary.seq": "seven"})


def test_from_attributes_defaults_and_pads_short_buckets() -> None:
    summary = ConnectionSummary.from_attributes(
        {
            "canaryws.connection.id": "c",
            "canaryws.client.id": "u",
            "canaryws.strategy": "lenient",
            "canaryws.connection.latency.buckets": [1, 2, 3],
        }
    )
    assert summary.end == END_INTERVAL  # no end attribute and no close code: not a closed slice
    assert (summary.strategy_version, summary.shadow, summary.flags_revision, summary.seq) == (0, False, "", 0)
    assert summary.strict_share is None and summary.close_code is None
    assert summary.latency == [1, 2, 3] + [0] * (histogram.SIZE - 3)


def test_next_slice_keeps_ids_and_increments_seq() -> None:
    summary = busy_summary()
    nxt = summary.next_slice(Cohort("lenient", 1, False, "rev2"), None)
    assert (nxt.connection_id, nxt.client_id) == ("conn-1", "client-1")
    assert nxt.seq == summary.seq + 1 == 4
    assert (nxt.strategy, nxt.strategy_version, nxt.shadow, nxt.flags_revision, nxt.strict_share) == (
        "lenient", 1, False, "rev2", None)
    assert nxt.end is None and nxt.close_code is None
    assert (nxt.batches, nxt.records, nxt.errors, nxt.shadow_batches, nxt.shadow_skipped) == (0, 0, 0, 0, 0)
    assert nxt.reasons == {} and nxt.error_codes == {} and nxt.divergence == {}
    assert nxt.latency == histogram.empty()
    assert nxt.latency is not summary.latency
    again = nxt.next_slice(Cohort("lenient", 1, False, "rev2"), 0.5)
    assert again.seq == 5 and again.strict_share == 0.5
    assert summary.seq == 3 and summary.batches == 2  # the old slice is untouched
